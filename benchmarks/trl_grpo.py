"""TRL's GRPOTrainer on the same model, prompts, reward and batch as alignkit's GRPO, for online_memory_speed.py.

Needs the `bench` extra (`pip install -e .[bench]`); written against trl 1.16.0 with transformers 5.23. Every
TRL behaviour this relies on is cited as trl/trainer/<file>.py:<line> of that release.

How one TRL optimizer step lines up with one alignkit GRPO iteration (P prompts x G samples, micro-batch P):

- Generation: P*G completions in one `generate` call. `per_device_train_batch_size` counts completions, and the
  generation batch is `per_device_train_batch_size * steps_per_generation` (grpo_config.py:1112), so P completions
  per forward and `steps_per_generation = G` generate P*G at once; the sampler hands out P prompts each repeated
  G times (grpo_trainer.py:1309-1316, 1275).
- Update: `gradient_accumulation_steps = G` micro-batches of P completions, one optimizer step. Since the
  accumulation equals `steps_per_generation * num_iterations`, no old log-probs are computed
  (grpo_trainer.py:2642-2657), as in alignkit's GRPO with one update per iteration; the reference log-probs are
  computed in chunks of `per_device_train_batch_size` = P sequences (grpo_trainer.py:2505), alignkit's micro-batch.
- Loss: `loss_type="grpo"` is each completion's token mean, then the mean over completions, divided by the
  accumulation steps (grpo_trainer.py:3154-3157): alignkit's `seq_mean_token_mean`. The KL is k3 with weight
  `beta` (grpo_trainer.py:3098-3101, 3149-3150); `beta > 0` makes TRL load a reference from the same path
  (grpo_trainer.py:983-1003).
- Prompts: plain strings are tokenized with the tokenizer's special tokens, i.e. BOS first, no chat template
  (grpo_trainer.py:1686, 1757-1758), as alignkit encodes a plain prompt; left-padded (grpo_trainer.py:1815-1826).
- Sampling: `do_sample` with temperature, top_p and top_k from the config (grpo_trainer.py:1154-1173); top_k=0 turns
  top-k filtering off (grpo_config.py:543-548), as alignkit does. A completion ends at its first EOS, which counts in
  its length (grpo_trainer.py:1880-1888, 2279, 2296), as in alignkit's `response/length`.
- Completions are decoded with special tokens skipped (grpo_trainer.py:2247) and scored by the reward function
  called as `fn(prompts=..., completions=..., completion_ids=..., **extra)` (grpo_trainer.py:1626-1628).
"""

from __future__ import annotations

import resource
import statistics
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
from common import OfflineMixin, StepClock, alignkit_like_args, peft_config, quiet
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from alignkit.models import load_tokenizer
from alignkit.models.spec import ModelSpec
from alignkit.rewards.rules import length_target


class _OfflineGRPOTrainer(OfflineMixin, GRPOTrainer):
    pass


def make_trainer(
    model_dir: str,
    prompts: Sequence[str],
    *,
    steps: int,
    prompts_per_step: int,
    group: int,
    max_new_tokens: int,
    beta: float,
    lr: float,
    target: int,
    output_dir: str,
    seed: int = 0,
    use_cpu: bool = True,
    bf16: bool = False,
    lora: dict[str, Any] | None = None,
) -> tuple[_OfflineGRPOTrainer, StepClock]:
    """The configured trainer and its step clock; `run_trl_grpo` trains it. Prompts are used in the given order."""
    if len(prompts) < prompts_per_step * steps:
        raise ValueError(f"prompts: need {prompts_per_step} x {steps} prompts (got {len(prompts)})")

    def length_target_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return length_target(prompts, completions, target=target)

    args = GRPOConfig(
        output_dir=output_dir,
        **alignkit_like_args(lr=lr, steps=steps, seed=seed, use_cpu=use_cpu, bf16=bf16),
        per_device_train_batch_size=prompts_per_step,
        gradient_accumulation_steps=group,
        steps_per_generation=group,
        num_generations=group,
        num_iterations=1,
        max_completion_length=max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        use_vllm=False,
        beta=beta,
        loss_type="grpo",
        scale_rewards="group",
        # Prompts in the given order (RepeatSampler without shuffle, trl/trainer/utils.py:930-935): the caller
        # passes alignkit's epoch-0 order, so step k sees the prompts alignkit's iteration k sees.
        shuffle_dataset=False,
    )
    if args.generation_batch_size != prompts_per_step * group:
        raise RuntimeError(f"TRL would generate {args.generation_batch_size} completions per step, not P x G")
    tokenizer = load_tokenizer(ModelSpec(path=model_dir))  # alignkit's byte tokenizer, as alignkit loads it
    clock = StepClock()
    trainer = _OfflineGRPOTrainer(
        model=model_dir,
        reward_funcs=[length_target_reward],
        # LoRA through PEFT, TRL's way: its reference is then the policy with the adapter disabled
        peft_config=peft_config(lora),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": list(prompts[: prompts_per_step * steps])}),
        processing_class=tokenizer,
        callbacks=[clock],
    )
    if trainer.model.is_gradient_checkpointing:
        raise RuntimeError("TRL turned gradient checkpointing on; the comparison assumes it off on both sides")
    quiet(trainer)
    return trainer, clock


def run_trl_grpo(model_dir: str, prompts: Sequence[str], *, steps: int, **kwargs: Any) -> dict[str, Any]:
    """Train `steps` GRPO steps with TRL; return the steady-state speed, peak memory and completion lengths.

    - s_per_step: wall time from the end of step 1 to the end of step `steps`, over steps - 1 (step 1 is
      warm-up); model loading is outside that window, TRL's per-step metrics and logging inside.
    - peak_mem_mb: peak CUDA memory allocated on GPU, else the process's peak resident memory since it
      started (getrusage), not since this call: run each framework in its own process.
    - first_loss: the loss TRL logged at step 1.
    - mean_length: mean completion length in tokens (EOS included) over the timed steps, from TRL's
      `completions/mean_length`; lengths: that value for every step.
    """
    if steps < 2:
        raise ValueError(f"steps: need at least 2, step 1 is excluded as warm-up (got {steps})")
    with tempfile.TemporaryDirectory() as out:
        trainer, clock = make_trainer(model_dir, prompts, steps=steps, output_dir=out, **kwargs)
        trainer.train()
    lengths = [e["completions/mean_length"] for e in trainer.state.log_history if "completions/mean_length" in e]
    if len(clock.ends) != steps or len(lengths) != steps:
        raise RuntimeError(f"TRL ran {len(clock.ends)} steps and logged {len(lengths)} lengths, expected {steps}")
    if torch.cuda.is_available() and not trainer.args.use_cpu:
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "first_loss": float(losses[0]) if losses else float("nan"),
        "s_per_step": (clock.ends[-1] - clock.ends[0]) / (steps - 1),
        "peak_mem_mb": peak_mb,
        "mean_length": statistics.fmean(lengths[1:]),
        "lengths": lengths,
    }


__all__ = ["make_trainer", "run_trl_grpo"]
