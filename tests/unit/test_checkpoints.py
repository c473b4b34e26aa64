"""Checkpoint files: atomic writes, the checks that find a truncated, corrupt or incomplete one, resume order."""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import pytest
import torch

from alignkit import checkpoints
from alignkit.checkpoints import (
    SHARDED_META,
    AtomicCheckpointIO,
    checkpoint_problem,
    pick_checkpoint,
    remove_stale_temporaries,
    resume_candidates,
    write_atomically,
)


def saved(path: Path, value: float = 1.0) -> Path:
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.full((256, 64), value)}, "global_step": 3}, path)
    return path


def test_a_checkpoint_round_trips_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = saved(tmp_path / "last.ckpt")
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert loaded["global_step"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.ones(256, 64))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert checkpoint_problem(path) is None


def test_a_write_that_dies_midway_leaves_the_old_checkpoint_whole(tmp_path: Path, monkeypatch) -> None:
    """The new bytes go to a temporary file; only a complete one is renamed over the old checkpoint."""
    path = saved(tmp_path / "last.ckpt", 1.0)

    def killed(src: str, dst: str) -> None:  # the process dies after writing, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        saved(path, 2.0)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(256, 64))
    stale = list(tmp_path.glob(".last.ckpt.tmp-*"))
    assert len(stale) == 1
    remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_loading_refuses_pickled_code(tmp_path: Path) -> None:
    """Checkpoints load with weights_only=True: a file that would run code when unpickled is rejected."""
    path = tmp_path / "evil.ckpt"
    buffer = io.BytesIO()
    torch.save({"state_dict": {}, "payload": Path("/etc/passwd")}, buffer)  # an arbitrary class instance
    write_atomically(path, buffer.getvalue())
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(path)


def test_problems_of_a_file(tmp_path: Path) -> None:
    path = saved(tmp_path / "a.ckpt")
    data = path.read_bytes()
    assert checkpoint_problem(tmp_path / "nope.ckpt") == "missing"
    path.write_bytes(data[: len(data) // 2])
    assert checkpoint_problem(path).startswith("truncated or not a checkpoint")
    path.write_bytes(b"")
    assert checkpoint_problem(path).startswith("truncated or not a checkpoint")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # inside the tensor's bytes: torch.load alone would not notice
    path.write_bytes(bytes(flipped))
    assert checkpoint_problem(path).startswith("corrupt: ")


def sharded(folder: Path) -> Path:
    """A sharded checkpoint as Lightning's ModelParallelStrategy writes it: DCP shards, .metadata, meta.pt."""
    from torch.distributed.checkpoint import save

    save({"state_dict": {"w": torch.randn(64, 64), "b": torch.randn(64)}}, checkpoint_id=str(folder))
    torch.save({"global_step": 2}, folder / SHARDED_META)
    return folder


def test_problems_of_a_sharded_folder(tmp_path: Path) -> None:
    folder = sharded(tmp_path / "step000002.ckpt")
    assert checkpoint_problem(folder) is None
    shard = next(folder.glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert checkpoint_problem(folder).startswith(f"truncated: shard {shard.name}")
    shard.unlink()
    assert checkpoint_problem(folder) == f"incomplete: shard {shard.name} is missing"
    (folder / ".metadata").unlink()
    assert checkpoint_problem(folder).startswith("incomplete: its shard index (.metadata) cannot be read")
    (folder / SHARDED_META).unlink()
    assert checkpoint_problem(folder) == f"incomplete: no {SHARDED_META}"


def test_resume_order_and_fallback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("step000002.ckpt", "step000004.ckpt", "step000006.ckpt", "last.ckpt", "on_exception.ckpt"):
        saved(tmp_path / name)
    names = [p.name for p in resume_candidates(tmp_path)]
    assert names == ["last.ckpt", "step000006.ckpt", "step000004.ckpt", "step000002.ckpt"]  # never on_exception
    assert [p.name for p in resume_candidates(tmp_path, tmp_path / "step000004.ckpt")] == [
        "step000004.ckpt",
        "step000002.ckpt",
    ]
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04 not really")
    (tmp_path / "step000006.ckpt").write_bytes((tmp_path / "step000006.ckpt").read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="alignkit"):
        assert pick_checkpoint(tmp_path) == tmp_path / "step000004.ckpt"
    said = [r.getMessage() for r in caplog.records]
    assert any("last.ckpt is truncated or not a checkpoint" in m for m in said)
    assert any("step000006.ckpt is truncated or not a checkpoint" in m for m in said)
    for p in tmp_path.glob("step*.ckpt"):
        p.unlink()
    assert pick_checkpoint(tmp_path) is None
