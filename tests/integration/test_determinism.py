"""`trainer.deterministic: true`: one machine, one seed, the same weights, sampling included."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import tiny_config

from alignkit.run import run


def test_a_deterministic_run_twice_gives_identical_weights(tmp_path: Path) -> None:
    """GRPO samples its own data, so both the sampler's and training's random streams must repeat. (Another CPU
    or GPU model may round differently: that is what compare.seeds is for, not this flag.)"""
    weights = []
    try:
        for _ in range(2):
            cfg = tiny_config("grpo", tmp_path, eval_fraction=0.0, trainer={"deterministic": True})
            policy = run(cfg).run_dir / "checkpoints" / "last.ckpt"
            assert torch.are_deterministic_algorithms_enabled()  # Lightning turned torch's switch on
            state = torch.load(policy, map_location="cpu", weights_only=True)["state_dict"]
            weights.append({k: v for k, v in state.items() if k.startswith("policy.")})
    finally:
        torch.use_deterministic_algorithms(False)  # process-wide: not for the tests that follow
    assert [r.name for r in sorted((tmp_path / "t").glob("version_*"))] == ["version_0", "version_1"]
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) > 5
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
