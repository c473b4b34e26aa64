"""CUDA checks of the hardware mapping: bf16 on one GPU, and FSDP2 on the GPUs present. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignkit.config.load import config_from_dict
from alignkit.run import run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _cfg(root: Path, hardware: dict) -> object:
    return config_from_dict(
        {
            "name": "gpu_sft",
            "algorithm": {"name": "sft"},
            "policy": {"preset": "tiny-llama"},
            "data": {"preset": "reverse-words", "train": {"generator": "reverse_words", "args": {"n": 128}}},
            "trainer": {"max_steps": 4, "prompts_per_step": 8, "micro_batch_size": 8},
            "hardware": hardware,
            "logging": {"root": str(root), "progress_bar": False},
        }
    )


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_single_gpu(tmp_path: Path, precision: str) -> None:
    result = run(_cfg(tmp_path, {"accelerator": "gpu", "devices": 1, "strategy": "single", "precision": precision}))
    assert result.global_step == 4
    assert torch.isfinite(torch.tensor(result.metrics["eval/loss"]))
    assert result.metrics["perf/peak_mem_mb"] > 0


def test_fsdp_on_one_gpu(tmp_path: Path) -> None:
    """FSDP2 with a one-process mesh: sharding, mixed precision policy and the gathered export on CUDA."""
    hw = {"accelerator": "gpu", "devices": 1, "strategy": "fsdp", "precision": "bf16-mixed"}
    result = run(_cfg(tmp_path, hw))
    assert (result.exports["policy"] / "model.safetensors").exists()
