"""The group methods' options in real runs: DAPO's dynamic sampling (never a zero-variance group in the update,
more prompts drawn and their place checkpointed), overlong shaping, and GSPO's sequence ratio over several
optimizer steps per iteration."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_config

from alignkit.algorithms.online import OnlineModule
from alignkit.ops import informative_groups
from alignkit.run import run


def cfg_for(algorithm: str, root: Path, /, **overrides: Any) -> Any:
    return tiny_config(algorithm, root, eval_fraction=0.125, **overrides)


def tie_first_rounds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the first generation round of every iteration tie the rewards of its first two groups (of 4): the
    scores become 0 and 1 alternating, so every other group varies. Returns the sizes of the groups trained on
    (via the advantages hook) for the test to check."""
    original, calls = OnlineModule.rewards, {"n": 0}

    def rewards(self: Any, rollout: Any, batch: dict, num_samples: int) -> tuple[torch.Tensor, dict]:
        scores, metrics = original(self, rollout, batch, num_samples)
        if num_samples == 1:  # evaluation
            return scores, metrics
        calls["n"] += 1
        scores = torch.arange(len(scores), dtype=torch.float32) % 2
        if self.trainer.fit_loop.epoch_loop._batches_that_stepped == calls.get("iteration", -1):
            return scores, metrics  # a later round of the same iteration: every group informative
        calls["iteration"] = self.trainer.fit_loop.epoch_loop._batches_that_stepped
        scores[: 2 * num_samples] = 0.5
        return scores, metrics

    monkeypatch.setattr(OnlineModule, "rewards", rewards)
    return calls


def test_dynamic_sampling_trains_on_informative_groups_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """4 prompts x 2 samples per iteration; the first round ties 2 groups, so a second round of 4 more prompts
    (from the reserve shuffle) fills the batch: 2 rounds, 2 groups dropped, 4 kept, every one of them informative.
    The reserve's place is in the checkpoint."""
    from alignkit.algorithms.dapo import DAPO

    tie_first_rounds(monkeypatch)
    trained: list[torch.Tensor] = []
    original = DAPO.advantages

    def advantages(self: Any, exp: dict) -> None:
        trained.append(exp["scores"].clone())
        original(self, exp)

    monkeypatch.setattr(DAPO, "advantages", advantages)
    cfg = cfg_for("dapo", tmp_path, trainer={"max_steps": 2}, checkpoint={"every_n_steps": 1, "export_hf": False})
    result = run(cfg)
    assert result.global_step == 2 and len(trained) == 2
    for scores in trained:
        assert len(scores) == 4 * 2 and informative_groups(scores, 2).all()
    m = result.metrics
    assert (m["train/sampling/rounds"], m["train/sampling/dropped_groups"], m["train/sampling/kept_groups"]) == (
        2.0,
        2.0,
        4.0,
    )
    assert m["train/reward/overlong_penalty"] <= 0.0  # DAPO shapes by default
    checkpoint = torch.load(next(result.run_dir.rglob("*.ckpt")), weights_only=False)
    assert checkpoint["prompt_reserve"]["batches"] >= 1


def test_dynamic_sampling_with_nothing_to_learn_stops_the_run_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A constant reward: no group is ever informative, so after max_rounds the run stops (no optimizer step taken,
    none on zero-variance groups), finishes cleanly, and says why and what to change."""
    original = OnlineModule.rewards

    def constant(self: Any, rollout: Any, batch: dict, num_samples: int) -> tuple[torch.Tensor, dict]:
        scores, metrics = original(self, rollout, batch, num_samples)
        return torch.zeros_like(scores), metrics

    monkeypatch.setattr(OnlineModule, "rewards", constant)
    cfg = cfg_for("grpo", tmp_path, algorithm={"samples_per_prompt": 2, "dynamic_sampling": {"max_rounds": 2}})
    result = run(cfg)
    assert result.global_step == 0
    assert json.loads((result.run_dir / "run.json").read_text())["status"] == "finished"
    assert re.search(r"in 2 rounds of 4 prompts: stopping the run at step 0.*dynamic_sampling.max_rounds", caplog.text)


def test_dynamic_sampling_past_its_cap_trains_on_what_it_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """max_rounds 1 with 2 of 4 groups tied: the iteration trains on the 2 informative ones."""
    tie_first_rounds(monkeypatch)
    cfg = cfg_for("rloo", tmp_path, algorithm={"samples_per_prompt": 2, "dynamic_sampling": {"max_rounds": 1}})
    m = run(cfg).metrics
    assert (m["train/sampling/rounds"], m["train/sampling/kept_groups"]) == (1.0, 2.0)


def test_gspo_sequence_ratio_trains_over_several_updates(tmp_path: Path) -> None:
    """GRPO with GSPO's sequence-level ratio and its tight clip, 2 optimizer steps per iteration (the ratio and the
    clip act from the second): finite losses, and responses get clipped."""
    algorithm = {
        "samples_per_prompt": 2,
        "importance_ratio": "sequence",
        "clip_eps": 3e-4,
        "clip_eps_high": 4e-4,
        "num_minibatches": 2,
    }
    result = run(cfg_for("grpo", tmp_path, algorithm=algorithm, trainer={"optimizer": {"lr": 1e-3}}))
    assert result.global_step == 3 and math.isfinite(result.metrics["train/loss"])
    assert result.metrics["train/policy/clipfrac"] > 0.0  # a step at lr 1e-3 moves responses past 1 +- 4e-4
