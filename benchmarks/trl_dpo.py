"""TRL's DPOTrainer on the same model, tokens and batch as alignkit's DPO, for benchmarks/offline_throughput.py.

Needs the `bench` extra (`pip install -e .[bench]`); written against trl 1.16.0 with transformers 5.23. Every
TRL behaviour this relies on is cited as trl/trainer/<file>.py:<line> of that release.

What TRL computes here, so that alignkit's numbers can be matched:

- Each pair becomes two sequences, prompt + chosen and prompt + rejected, exactly the given ids: the collator
  concatenates `prompt_ids + chosen_ids` and adds no BOS/EOS (dpo_trainer.py:147-150,
  `DataCollatorForPreference.torch_call`). The batch is `[all chosen rows; all rejected rows]`, right-padded with the
  tokenizer's pad id to the longest of the 2B sequences (dpo_trainer.py:169, 185-202); no position ids are passed,
  so positions are 0..len-1 for every sequence.
- A sequence's log-prob is the sum over its completion tokens (EOS included, prompt and pad excluded) of
  log p(token | everything before it), in fp32; no length normalisation for `sigmoid`
  (dpo_trainer.py:1296-1304 and utils.py `add_fused_lm_head`: labels are the input ids with non-completion
  positions set to -100, hidden state t scores label t+1).
- loss = mean over the B pairs of -logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) (dpo_trainer.py:1388,
  1528); the logged "loss" of a step is that mean (divided by the accumulation steps, 1 here).
"""

from __future__ import annotations

import resource
import tempfile
from typing import Any

from common import OfflineMixin, StepClock, alignkit_like_args, peft_config, quiet
from datasets import Dataset
from transformers import PreTrainedModel
from trl import DPOConfig, DPOTrainer

from alignkit.models import load_tokenizer
from alignkit.models.spec import ModelSpec

# alignkit's row keys -> the columns DPOTrainer's collator reads (dpo_trainer.py:1160-1166, 147-150)
_COLUMNS = {"prompt_input_ids": "prompt_ids", "chosen_input_ids": "chosen_ids", "rejected_input_ids": "rejected_ids"}


class _PretokenizedDPOTrainer(OfflineMixin, DPOTrainer):
    """DPOTrainer fed token ids as they are, and counting what each optimizer step consumed."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # trl 1.16 has no "already tokenized" switch: `_prepare_dataset` always extracts a prompt, appends the EOS
        # text and re-tokenizes the strings (dpo_trainer.py:1036-1142), so it is skipped and the ids go straight
        # to the collator.
        return dataset

    def training_step(self, model, inputs, num_items_in_batch=None):
        # Counted from the collated batch rather than from `rows`, so an epoch wrap or a short last batch is
        # counted as it ran. Kept as tensors: no host sync inside the timed steps.
        self.bench_pairs.append(inputs["input_ids"].shape[0] // 2)
        self.bench_tokens.append(inputs["attention_mask"].sum())
        return super().training_step(model, inputs, num_items_in_batch)


def make_trainer(
    model_dir: str,
    rows: list[dict],
    *,
    steps: int,
    batch_size: int,
    beta: float,
    lr: float,
    output_dir: str,
    precompute_ref: bool = False,
    seed: int = 0,
    ref_model: PreTrainedModel | None = None,
    lora: dict[str, Any] | None = None,
) -> tuple[_PretokenizedDPOTrainer, StepClock]:
    """The configured trainer and its step clock; `run_trl_dpo` trains it. `ref_model` exists for tests."""
    if not rows:
        raise ValueError("rows: need at least one pair")
    missing = set(_COLUMNS) - set(rows[0])
    if missing:
        raise ValueError(f"rows: each row needs {sorted(_COLUMNS)}; missing {sorted(missing)}")
    dataset = Dataset.from_dict({new: [list(r[old]) for r in rows] for old, new in _COLUMNS.items()})

    args = DPOConfig(
        output_dir=output_dir,
        **alignkit_like_args(lr=lr, steps=steps, seed=seed),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        beta=beta,
        loss_type=["sigmoid"],
        # max_length=1024 by default would cut sequences in the collator (dpo_trainer.py:153-165); the rows are
        # the exact tokens to train on.
        max_length=None,
        pad_to_multiple_of=None,
        precompute_ref_log_probs=precompute_ref,
        # Rows in the given order, so step 1 sees rows[:batch_size] as alignkit does (transformers
        # Trainer._get_train_sampler -> SequentialSampler).
        train_sampling_strategy="sequential",
    )
    # The tokenizer alignkit loads for this directory, so the pad id (and nothing else: no text is tokenized)
    # is the one alignkit pads with.
    tokenizer = load_tokenizer(ModelSpec(path=model_dir))
    clock = StepClock()
    trainer = _PretokenizedDPOTrainer(
        # A path, not a model: with ref_model=None TRL then loads the reference as a second copy from the same
        # directory, same dtype and attention kernel (dpo_trainer.py:907-927); with precompute_ref it loads none and
        # scores the dataset with the policy before training (dpo_trainer.py:909-914, 1013-1018, 1168-1241).
        model=model_dir,
        ref_model=ref_model,
        # LoRA through PEFT, TRL's way: its reference is then the policy with the adapter disabled
        peft_config=peft_config(lora),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    trainer.bench_pairs, trainer.bench_tokens = [], []
    quiet(trainer)
    return trainer, clock


def run_trl_dpo(
    model_dir: str,
    rows: list[dict],
    *,
    steps: int,
    batch_size: int,
    beta: float,
    lr: float,
    precompute_ref: bool = False,
    seed: int = 0,
    lora: dict[str, Any] | None = None,
) -> dict:
    """Train `steps` DPO steps with TRL on `rows` in order; return the first loss and the steady-state speed.

    `model_dir`: a `save_pretrained` directory holding a causal LM and its tokenizer. Each row holds
    `prompt_input_ids` (beginning with BOS), `chosen_input_ids` and `rejected_input_ids` (completion tokens only,
    ending with EOS). Returns:

    - first_loss: the logged loss of step 1, computed before any update (log(2) when the reference is the policy);
      losses: the logged loss of every step.
    - samples_per_s, tokens_per_s: pairs, and non-pad tokens of the chosen and rejected sequences (prompt counted
      in both), per second of wall time from the end of step 1 to the end of step `steps`; step 1 is left out as
      warm-up. Batch collation and TRL's per-step metrics and logging fall inside that window, the reference
      precompute (`precompute_ref`) and model loading do not.
    - peak_rss_mb: the process's peak resident memory (getrusage), since the process started, not since this
      call: run each framework in its own process to compare them.
    """
    if steps < 2:
        raise ValueError(f"steps: need at least 2, step 1 is excluded as warm-up (got {steps})")
    with tempfile.TemporaryDirectory() as out:
        trainer, clock = make_trainer(
            model_dir,
            rows,
            steps=steps,
            batch_size=batch_size,
            beta=beta,
            lr=lr,
            output_dir=out,
            precompute_ref=precompute_ref,
            seed=seed,
            lora=lora,
        )
        trainer.train()
    first_loss = _logged_loss(trainer.state.log_history, step=1)
    seconds = clock.ends[-1] - clock.ends[0]
    pairs = sum(trainer.bench_pairs[1:])
    tokens = int(sum(int(t) for t in trainer.bench_tokens[1:]))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "first_loss": first_loss,
        "losses": [_logged_loss(trainer.state.log_history, step=k) for k in range(1, steps + 1)],
        "samples_per_s": pairs / seconds,
        "tokens_per_s": tokens / seconds,
        "peak_rss_mb": peak_kb / 1024,
    }


def _logged_loss(log_history: list[dict[str, Any]], step: int) -> float:
    # Trainer._maybe_log_save_evaluate logs "loss" as the summed step losses / steps since the last log; with
    # logging_steps=1 and no accumulation that is step `step`'s batch-mean DPO loss, unrounded.
    for entry in log_history:
        if entry.get("step") == step and "loss" in entry:
            return float(entry["loss"])
    raise RuntimeError(f"TRL logged no loss for step {step}: {log_history}")


__all__ = ["make_trainer", "run_trl_dpo"]
