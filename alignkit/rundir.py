"""Run directories: `<root>/<name>/version_N`, their status file run.json, and errors that stop a run starting.

Config-only code reads these (pipelines decide which stages are finished, `validate` shows the plan), so
nothing here imports torch or Lightning.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

# A run's checkpoints/ folder: last.ckpt, and step<N>.ckpt every checkpoint.every_n_steps (run.py names them)
LAST = "last.ckpt"
STEP = re.compile(r"step(\d+)\.ckpt")


class RunError(RuntimeError):
    """A run that cannot start as configured (e.g. its directory exists); says what to change."""


def is_rank_zero() -> bool:
    """Whether this process is the first of a distributed launch (torchrun, SLURM), or not launched at all."""
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def versions(root: Path) -> list[Path]:
    """The `version_N` run directories under `root`, oldest first."""
    runs = [p for p in root.glob("version_*") if p.is_dir() and re.fullmatch(r"version_\d+", p.name)]
    return sorted(runs, key=lambda p: int(p.name.split("_")[1]))


def next_version(root: Path) -> Path:
    """`root/version_N` for the first N above every existing version (version_0 when there is none)."""
    taken = versions(root)
    return root / f"version_{int(taken[-1].name.split('_')[1]) + 1 if taken else 0}"


def write_status(run_dir: Path, status: str, **extra: Any) -> None:
    """run.json: running | finished | failed, with the step reached; `checkpoint.resume: auto` reads it."""
    record = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
    (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")


def read_run_record(run_dir: Path) -> dict[str, Any]:
    """run.json as written by write_status; {} when it is missing or unreadable."""
    try:
        return dict(json.loads((run_dir / "run.json").read_text()))
    except (OSError, ValueError):
        return {}


def read_status(run_dir: Path) -> str:
    return str(read_run_record(run_dir).get("status", "unknown"))


def step_of(path: Path) -> int | None:
    """The optimizer step in a step checkpoint's name (step000050.ckpt -> 50), None for last.ckpt and others."""
    match = STEP.fullmatch(path.name)
    return int(match[1]) if match else None


def step_checkpoints(checkpoints: Path) -> list[tuple[int, Path]]:
    """(step, path) of a run's step checkpoints, oldest first (a sharded FSDP checkpoint is a folder)."""
    found = [(step, p) for p in checkpoints.glob("step*.ckpt") if (step := step_of(p)) is not None]
    return sorted(found)
