"""Checkpoints that survive a crash: written under a temporary name and renamed, checked before a resume.

A process killed at any moment (SIGKILL, the OOM killer, a preempted node) leaves either the previous
checkpoint or the new one under a checkpoint's name, never half of one: a single-file checkpoint is written
to `.<name>.tmp-<pid>` beside it, flushed to disk and renamed over the old one (`os.replace`, atomic on
POSIX); a sharded (FSDP) checkpoint folder is written as `.<name>.tmp` and renamed in place of the old folder.

A resume checks a checkpoint before trusting it: a single file must be a complete zip archive whose every
member matches its CRC-32 (torch.save writes one; torch.load itself does not check the CRCs, so a flipped
byte in a tensor would load silently); a sharded folder must hold its metadata and every shard file the
metadata points into, at least as long as it says. A checkpoint that fails is skipped for the previous one,
with a warning (`pick_checkpoint`).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy

from alignkit.rundir import LAST, step_checkpoints, step_of

log = logging.getLogger(__name__)

SHARDED_META = "meta.pt"  # Lightning's metadata file inside a sharded checkpoint folder (non-tensor state)


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """`data` to `path`: a temporary file beside it, flushed and fsynced, then renamed over `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (the directory entry itself), where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save/torch.load checkpoint IO, with atomic writes and weights-only loads by default."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(path, buffer.getbuffer())

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        # alignkit's checkpoints hold tensors, numbers, strings and containers only: no pickled code runs
        safe = True if weights_only is None else weights_only
        return torch.load(path, map_location=map_location or "cpu", weights_only=safe)


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """FSDP2 through Lightning's ModelParallelStrategy, its sharded checkpoint folders written atomically.

    Every rank writes its shards into `.<name>.tmp`; once all have, rank 0 moves the old folder aside,
    renames the new one into place and deletes the old. A kill between those two renames leaves no folder
    under the name; a resume then takes the previous checkpoint (`pick_checkpoint`).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        path = Path(self.broadcast(str(filepath)))
        if not self._save_distributed_checkpoint:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
        if self.global_rank == 0:
            _remove(tmp)  # left by a process killed while writing
        self.barrier("alignkit_checkpoint_tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("alignkit_checkpoint_written")
        if self.global_rank == 0:
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            _remove(old)
        self.barrier("alignkit_checkpoint_renamed")


def trained_state_loaded(module: torch.nn.Module, result: Any, strict: bool = True) -> Any:
    """The incompatible keys of a non-strict `module.load_state_dict` of a checkpoint that holds trained state only
    (AlignModule.state_dict), less the frozen parameters, which keep the values they were built with; any other
    key missing, or one unexpected, is an error when `strict`."""
    frozen = {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    missing = [k for k in result.missing_keys if k not in frozen]
    if strict and (missing or result.unexpected_keys):
        raise RuntimeError(
            f"checkpoint does not match the model: missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]} (of {len(missing)} and {len(result.unexpected_keys)})"
        )
    return type(result)(missing, result.unexpected_keys)


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint cannot be trusted ('missing', 'truncated or not a checkpoint', 'corrupt: ...'), or None."""
    if not path.exists():
        return "missing"
    if path.is_dir():
        return _sharded_problem(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"truncated or not a checkpoint ({err})"
    if bad is not None:
        return f"corrupt: {bad} does not match its checksum"
    return None


def _sharded_problem(path: Path) -> str | None:
    meta = path / SHARDED_META
    if not meta.is_file():
        return f"incomplete: no {SHARDED_META}"
    problem = checkpoint_problem(meta)
    if problem is not None:
        return f"{SHARDED_META}: {problem}"
    try:
        from torch.distributed.checkpoint import FileSystemReader

        storage = FileSystemReader(str(path)).read_metadata().storage_data
    except Exception as err:  # a missing or unreadable .metadata: torch raises several types
        return f"incomplete: its shard index (.metadata) cannot be read ({type(err).__name__}: {err})"
    ends: dict[str, int] = {}
    for info in storage.values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        shard = path / name
        if not shard.is_file():
            return f"incomplete: shard {name} is missing"
        if shard.stat().st_size < end:
            return f"truncated: shard {name} has {shard.stat().st_size} bytes, its index says at least {end}"
    return None


def resume_candidates(checkpoints: Path, first: Path | None = None) -> list[Path]:
    """Checkpoints of one run, newest first: `first` (default last.ckpt), then step checkpoints from the
    newest down (below `first`'s step when it is a step checkpoint). on_exception.ckpt is never one: it is
    written mid-step, so resuming from it would not continue the run exactly."""
    first = first or checkpoints / LAST
    below = step_of(first)
    earlier = [p for step, p in reversed(step_checkpoints(checkpoints)) if below is None or step < below]
    return [first, *earlier]


def pick_checkpoint(checkpoints: Path, first: Path | None = None) -> Path | None:
    """The newest checkpoint of a run that passes the checks (see resume_candidates), warning about each one
    skipped; None when no checkpoint of the run can be trusted."""
    for candidate in resume_candidates(checkpoints, first):
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        if problem != "missing" or candidate.name == LAST:
            log.warning("checkpoint %s is %s; trying the one before it", candidate, problem)
    return None


def remove_stale_temporaries(checkpoints: Path) -> None:
    """Temporary files and folders left by a process killed while writing a checkpoint."""
    for tmp in [*checkpoints.glob(".*.tmp*"), *checkpoints.glob(".*.old")]:
        _remove(tmp)


def _remove(path: Path) -> None:
    """A file or a folder (a sharded checkpoint), if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
