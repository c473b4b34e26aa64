"""Resume: N steps straight == N/2 steps, a crash, resume, N/2 steps (same loss, same weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from alignkit.algorithms import ALGORITHMS
from alignkit.config.load import validate_dict
from alignkit.run import run

# (algorithm section, data source, policy options) of each setup resumed here; DPO with its reference log-probs
# precomputed, which a resumed run computes again from the restored reference; DPO with LoRA adapters, whose
# checkpoints hold the adapters and their optimizer state only (the frozen base is rebuilt from its spec).
PAIRS = {"generator": "sentiment_pairs", "args": {"n": 40}}
SETUPS = {
    "sft": ({"name": "sft"}, {"generator": "reverse_words", "args": {"n": 40}}, {}),
    "dpo": ({"name": "dpo", "precompute_ref_logps": True}, PAIRS, {}),
    "dpo-lora": ({"name": "dpo"}, PAIRS, {"lora": {"rank": 4, "alpha": 8, "dropout": 0.1}}),
}


def _cfg(root: Path, resume: str = "none", algorithm: str = "sft") -> object:
    section, source, policy = SETUPS[algorithm]
    return validate_dict(
        {
            "name": "resume",
            "algorithm": section,
            "policy": {"architecture": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2, **policy},
            "data": {"train": source, "max_length": 48},
            # 40 rows / (4 x accumulation 2) = 5 optimizer steps per epoch: the crash and the resume
            # fall mid-epoch and mid-schedule, where data order and optimizer state both matter
            "trainer": {
                "max_steps": 8,
                "prompts_per_step": 8,
                "micro_batch_size": 4,
                "optimizer": {"lr": 1e-2},
                "scheduler": {"name": "cosine", "warmup_steps": 2},
            },
            "hardware": {"accelerator": "cpu", "strategy": "single"},
            "logging": {"root": str(root), "progress_bar": False},
            "checkpoint": {"every_n_steps": 3, "resume": resume},
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(SETUPS))
def test_crash_and_resume_matches_a_straight_run(
    algorithm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = run(_cfg(tmp_path / "a", algorithm=algorithm))
    module_cls = ALGORITHMS.get(SETUPS[algorithm][0]["name"]).load()
    original = module_cls.training_step

    def crash_after_step_4(self: Any, batch: dict, idx: int) -> torch.Tensor:
        if self.global_step == 4:
            raise RuntimeError("simulated crash")
        return original(self, batch, idx)

    monkeypatch.setattr(module_cls, "training_step", crash_after_step_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(_cfg(tmp_path / "b", algorithm=algorithm))
    crashed = tmp_path / "b" / "resume" / "version_0"
    assert json.loads((crashed / "run.json").read_text())["status"] == "failed"
    # the failed run's checkpoints stay readable: last (step 3) and the one written on the exception
    for name in ("last.ckpt", "on_exception.ckpt"):
        assert "state_dict" in torch.load(crashed / "checkpoints" / name, weights_only=True)
    monkeypatch.setattr(module_cls, "training_step", original)

    resumed = run(_cfg(tmp_path / "b", resume="auto", algorithm=algorithm))
    assert resumed.run_dir == crashed  # continued in place, not a new version
    assert resumed.global_step == straight.global_step == 8
    assert resumed.metrics["train/loss"] == pytest.approx(straight.metrics["train/loss"], rel=1e-6)
    a = load_file(straight.exports["policy"] / "model.safetensors")
    b = load_file(resumed.exports["policy"] / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
