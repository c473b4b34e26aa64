"""Online RL end to end: critic initialisation, the iteration x axis, micro-batching, rejection sampling's choice."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alignkit.algorithms import ALGORITHMS
from alignkit.models import ModelSpec, build_scalar_model, byte_tokenizer, save_hf
from alignkit.run import build_models, run

TINY = {"architecture": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2}


def cfg_for(algorithm: str, root: Path, /, **overrides: Any) -> Any:
    return tiny_config(algorithm, root, eval_fraction=0.125, **overrides)


def reward_model_dir(tmp_path: Path) -> Path:
    tok = byte_tokenizer()
    return save_hf(build_scalar_model(ModelSpec(**TINY, init_seed=3), tok), tok, tmp_path / "rm")


def test_ppo_critic_starts_from_the_reward_model(tmp_path: Path) -> None:
    rm = reward_model_dir(tmp_path)
    cfg = cfg_for("ppo", tmp_path, reward={"source": {"kind": "model", "model": {"path": str(rm)}}})
    models, _ = build_models(cfg, ALGORITHMS.get("ppo").load())
    reward_model = models["reward"].source.model
    for key, value in reward_model.state_dict().items():
        torch.testing.assert_close(models["critic"].state_dict()[key], value, msg=key)
    assert not any(p.requires_grad for p in models["reward"].parameters())  # frozen
    result = run(cfg)  # and trains with a reward model as the reward
    assert result.global_step == 3 and "train/value/explained_var" in result.metrics


def test_ppo_critic_from_the_policy_shares_its_backbone(tmp_path: Path) -> None:
    cfg = cfg_for("ppo", tmp_path, algorithm={"critic_init": "policy"})
    models, _ = build_models(cfg, ALGORITHMS.get("ppo").load())
    policy, critic = models["policy"].base_model.state_dict(), models["critic"].base_model.state_dict()
    assert policy.keys() == critic.keys()
    for key in policy:
        torch.testing.assert_close(critic[key], policy[key], msg=key)


def test_the_x_axis_counts_iterations_whatever_the_optimizer_steps(tmp_path: Path) -> None:
    """PPO with 2 epochs x 2 minibatches takes 4 optimizer steps per iteration; TensorBoard shows iterations."""
    cfg = cfg_for("ppo", tmp_path, algorithm={"update_epochs": 2, "num_minibatches": 2})
    result = run(cfg)
    acc = EventAccumulator(str(result.run_dir)).Reload()
    assert [e.step for e in acc.Scalars("train/reward/mean")] == [0, 1, 2]
    assert result.global_step == 3  # iterations, as trainer.max_steps counts them
    ckpt = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 12  # Lightning's optimizer steps


def test_ppo_alternates_with_rejection_sampling_rounds(tmp_path: Path) -> None:
    """every_n_steps 2: iterations 1 and 3 (of 0..3) are best-of-3 rounds with the SFT loss, the rest PPO."""
    rounds = {"every_n_steps": 2, "samples_per_prompt": 3}
    cfg = cfg_for("ppo", tmp_path, algorithm={"rejection_sampling": rounds}, trainer={"max_steps": 4})
    result = run(cfg)
    acc = EventAccumulator(str(result.run_dir)).Reload()
    assert [e.step for e in acc.Scalars("train/rs/round")] == [1, 3]
    assert [e.step for e in acc.Scalars("train/reward/best_mean")] == [1, 3]
    assert [e.step for e in acc.Scalars("train/value/loss")] == [0, 2]  # PPO iterations
    assert [e.step for e in acc.Scalars("train/reward/mean")] == [0, 1, 2, 3]


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_micro_batching_does_not_change_the_gradient(algorithm: str, tmp_path: Path) -> None:
    """The loss of each micro-batch is its share of the step's: 4 micro-batches of 2 == 1 of 8, gradient-wise."""
    cfg = cfg_for(
        algorithm, tmp_path, algorithm={"loss_aggregation": "seq_mean_token_mean"} if algorithm == "grpo" else {}
    )
    module_cls = ALGORITHMS.get(algorithm).load()
    models, tok = build_models(cfg, module_cls)
    module = module_cls(cfg, models, tok)
    torch.manual_seed(0)
    prompts = tok(["reverse: cat =", "reverse: dog sun ="], return_tensors="pt", padding=True, padding_side="left")
    batch = {"prompt_input_ids": prompts["input_ids"], "prompt_attention_mask": prompts["attention_mask"]}

    class FakeTrainer:
        world_size = 1

    module._trainer = FakeTrainer()  # sample() asks for the world size only
    module.algo = module.algo.model_copy(update={"samples_per_prompt": 4})
    exp = module.experience(batch)
    module.advantages(exp)
    rows = torch.arange(8)
    mask = exp["rollout"].response_mask
    counts = {"tokens": mask.sum().float(), "sequences": torch.tensor(8.0), "epoch": 0}

    def grads(split: int) -> list[torch.Tensor]:
        module.zero_grad()
        for part in rows.split(split):
            module.loss(exp, part, counts)[0].backward()
        return [p.grad.clone() for p in module.policy.parameters() if p.grad is not None]

    whole_batch = grads(8)
    assert whole_batch and any(g.abs().sum() > 0 for g in whole_batch)
    for whole, parts in zip(whole_batch, grads(2), strict=True):
        torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-6)


def test_rejection_sampling_keeps_each_prompts_best_response(tmp_path: Path) -> None:
    """Scores of 2 prompts x 3 samples: [0.1, 0.9, 0.5 | -2, -1, -3] -> rows 1 and 4; threshold 0 drops row 4."""
    cfg = cfg_for("rejection_sampling", tmp_path, algorithm={"samples_per_prompt": 3, "threshold": 0.0})
    module_cls = ALGORITHMS.get("rejection_sampling").load()
    models, tok = build_models(cfg, module_cls)
    module = module_cls(cfg, models, tok)
    exp = {"scores": torch.tensor([0.1, 0.9, 0.5, -2.0, -1.0, -3.0]), "metrics": {}}
    module.advantages(exp)
    assert exp["train_rows"].tolist() == [1, 4]
    assert exp["weights"].tolist() == [0, 1, 0, 0, 0, 0]  # row 4 is its prompt's best but below the threshold
    assert exp["metrics"]["reward/best_mean"].item() == pytest.approx((0.9 - 1.0) / 2)
    assert exp["metrics"]["rs/kept"].item() == 0.5


def test_an_online_run_resumes_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PPO with an adaptive KL coefficient crashes at iteration 2 and resumes: it ends at iteration 4, with the
    coefficient it had reached, not the initial one."""
    import json

    from alignkit.algorithms.ppo import PPO

    options = {"algorithm": {"adaptive_kl": {"target": 0.1, "horizon": 10}}, "trainer": {"max_steps": 4}}
    cfg = cfg_for("ppo", tmp_path, **options, checkpoint={"every_n_steps": 1, "export_hf": False})
    original, seen = PPO.training_step, []

    def crash_at_2(self: Any, batch: dict, idx: int) -> None:
        seen.append(self.kl_ctl.value)
        if self.trainer.fit_loop.epoch_loop._batches_that_stepped == 2:
            raise RuntimeError("simulated crash")
        return original(self, batch, idx)

    monkeypatch.setattr(PPO, "training_step", crash_at_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)
    coef_at_crash = seen[-1]
    assert coef_at_crash != 0.05  # it moved
    monkeypatch.setattr(PPO, "training_step", lambda self, b, i: seen.append(self.kl_ctl.value) or original(self, b, i))
    resumed = run(
        cfg_for("ppo", tmp_path, **options, checkpoint={"every_n_steps": 1, "resume": "auto", "export_hf": False})
    )
    assert resumed.global_step == 4
    assert json.loads((resumed.run_dir / "run.json").read_text())["status"] == "finished"
    assert seen[-2] == pytest.approx(coef_at_crash)  # the first resumed iteration starts from the saved coefficient


@pytest.mark.parametrize("reuse", [True, False])
def test_the_samplers_logprobs_stand_in_for_a_second_policy_forward(reuse: bool, tmp_path: Path) -> None:
    """PPO needs the old log-probs: with rollout.reuse_logprobs they are the built-in engine's, and equal a
    scoring pass over the same samples within 1e-5; without, they come from that pass."""
    cfg = cfg_for("ppo", tmp_path, rollout={"reuse_logprobs": reuse})
    module_cls = ALGORITHMS.get("ppo").load()
    models, tok = build_models(cfg, module_cls)
    module = module_cls(cfg, models, tok)
    prompts = tok(["reverse: cat =", "reverse: dog sun ="], return_tensors="pt", padding=True, padding_side="left")
    batch = {"prompt_input_ids": prompts["input_ids"], "prompt_attention_mask": prompts["attention_mask"]}

    class FakeTrainer:
        world_size = 1

    module._trainer = FakeTrainer()
    torch.manual_seed(0)
    exp = module.experience(batch)
    rollout = exp["rollout"]
    assert (exp["old_logps"] is rollout.logprobs) == reuse
    torch.testing.assert_close(exp["old_logps"], module.logps_of(module.policy, rollout), atol=1e-5, rtol=0)


def test_reuse_logprobs_auto_needs_float32_and_no_dropout(tmp_path: Path) -> None:
    from alignkit.algorithms.online import exact_scoring
    from alignkit.rollout.engine import reuses_logprobs as resolve

    def reuses_logprobs(cfg: Any) -> bool:  # as OnlineModule resolves rollout.reuse_logprobs
        return resolve(cfg.rollout.reuse_logprobs, exact=exact_scoring(cfg))

    assert reuses_logprobs(cfg_for("grpo", tmp_path))
    assert not reuses_logprobs(cfg_for("grpo", tmp_path, hardware={"precision": "bf16-mixed"}))
    assert not reuses_logprobs(cfg_for("grpo", tmp_path, trainer={"disable_dropout": False}))
    assert not reuses_logprobs(cfg_for("grpo", tmp_path, policy={"dtype": "bfloat16"}))
    assert reuses_logprobs(
        cfg_for("grpo", tmp_path, hardware={"precision": "bf16-mixed"}, rollout={"reuse_logprobs": True})
    )


@pytest.mark.parametrize("algorithm", ["grpo", "remax"])
def test_online_algorithms_train_with_the_hf_engine_too(algorithm: str, tmp_path: Path) -> None:
    """The registered algorithms train with the default built-in engine in test_algorithms.py; `hf` is the
    other engine behind the same seam (ReMax: its greedy baseline goes through it as well)."""
    result = run(cfg_for(algorithm, tmp_path, rollout={"engine": "hf"}))
    assert result.global_step == 3 and math.isfinite(result.metrics["train/loss"])


def test_train_loss_is_the_objective_grpo_starts_at_zero(tmp_path: Path) -> None:
    """train/loss is what the optimizer step minimised. GRPO's first one is 0 up to rounding: ratio 1, each
    group's advantages sum to 0 (seq_mean_token_mean weighs responses alike), and the KL to a reference equal to
    the policy is 0; micro-batches of 1 change nothing (their shares add up)."""
    losses = []
    for micro in (4, 1):
        cfg = cfg_for("grpo", tmp_path / str(micro), trainer={"max_steps": 1, "micro_batch_size": micro})
        result = run(cfg)
        losses.append(EventAccumulator(str(result.run_dir)).Reload().Scalars("train/loss")[0].value)
    assert losses == pytest.approx([0.0, 0.0], abs=1e-6)
