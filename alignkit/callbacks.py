"""Callbacks every run gets: throughput and memory (`perf/*`), learning rate, a checkpoint on a crash."""

from __future__ import annotations

import logging
import random
import resource
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

log = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated device memory on CUDA; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _batch_counts(batch: Any) -> tuple[int, int]:
    """(sequences, real tokens) of a batch: rows of the first tensor, and the sum of its attention masks."""
    if not isinstance(batch, dict):
        return 0, 0
    masks = [v for k, v in batch.items() if k.endswith("attention_mask") and isinstance(v, Tensor)]
    first = next((v for v in batch.values() if isinstance(v, Tensor)), None)
    rows = int(first.shape[0]) if first is not None else 0
    return rows, int(sum(int(m.sum()) for m in masks))


class PerfMonitor(L.Callback):
    """Logs perf/samples_per_s, perf/tokens_per_s (global, all ranks), perf/peak_mem_mb and train/lr."""

    def __init__(self) -> None:
        self._t0: float | None = None
        self._samples = 0
        self._tokens = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        # online algorithms count the sequences they generated, not the prompts of the batch
        rows, tokens = getattr(pl_module, "last_counts", None) or _batch_counts(batch)
        self._samples += rows * trainer.world_size
        self._tokens += tokens * trainer.world_size
        if self._t0 is None or (idx + 1) % trainer.accumulate_grad_batches:
            return
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        metrics = {
            "perf/samples_per_s": self._samples / elapsed,
            "perf/tokens_per_s": self._tokens / elapsed,
            "perf/peak_mem_mb": peak_memory_mb(pl_module.device),
        }
        if trainer.optimizers:
            metrics["train/lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=max(rows, 1))
        self._t0, self._samples, self._tokens = time.perf_counter(), 0, 0


def process_peak_memory() -> dict[str, float]:
    """This process's peak resident memory, and its peak allocated CUDA memory when it used a GPU (MiB)."""
    peaks = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


class SaveOnException(L.Callback):
    """Writes checkpoints/on_exception.ckpt when training raises, so a crash loses at most one step.

    Lightning's OnExceptionCheckpoint also makes every later `fit()` default to ckpt_path="last"; this
    one does not, so resuming stays the explicit `checkpoint.resume` choice.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # under torchrun/SLURM every rank resolves its own run directory; all must write where rank 0 does
        self.path = Path(trainer.strategy.broadcast(str(self.path)))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        trainer.save_checkpoint(self.path)


class RandomState(L.Callback):
    """Every rank's random state in every checkpoint, so a resumed run samples what the straight run would.

    Online methods sample responses with torch's global generator (on the GPU, the device's); a resume that
    restored weights, optimizer and data position but not these would draw other responses from there on.
    After each training step the state of every rank (torch CPU, the rank's CUDA device, Python's `random`)
    is taken and, on more than one process, gathered, so whichever rank writes the checkpoint holds them all
    (tensors, so `torch.load(weights_only=True)` reads them). A resume puts each rank's state back just
    before its first step, after Lightning's own start-up. Evaluation runs on a copy of the state and gives
    it back, so evaluating (or how often) never changes what training samples.
    """

    def __init__(self) -> None:
        self._taken: dict[str, Tensor] | None = None  # every rank's state after the last step, rank-major
        self._restore: dict[str, Tensor] | None = None  # from a checkpoint, applied before the next step
        self._around_eval: dict[str, Tensor] | None = None

    @staticmethod
    def _current(device: torch.device) -> dict[str, Tensor]:
        version, internal, gauss = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "python": torch.tensor([version, *internal, -1 if gauss is None else 0], dtype=torch.int64),
            "python_gauss": torch.tensor([0.0 if gauss is None else gauss], dtype=torch.float64),
        }
        if device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(device)
        return state

    @staticmethod
    def _set(state: dict[str, Tensor], device: torch.device) -> None:
        torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
        values = [int(v) for v in state["python"].tolist()]
        gauss = None if values[-1] == -1 else float(state["python_gauss"][0])
        random.setstate((values[0], tuple(values[1:-1]), gauss))
        if device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"].to(torch.uint8).cpu(), device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        state = self._current(pl_module.device)
        if trainer.world_size > 1:  # every rank is in this step: gather so that any rank's checkpoint holds all
            # (bytes travel as int64: not every backend gathers uint8)
            wide = {k: v.to(torch.int64) if v.dtype == torch.uint8 else v for k, v in state.items()}
            self._taken = {k: pl_module.all_gather(v.to(pl_module.device)).cpu() for k, v in wide.items()}
        else:
            self._taken = {k: v[None] for k, v in state.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"ranks": self._taken} if self._taken is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore = state_dict.get("ranks")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._restore is None:
            return
        ranks = len(self._restore["torch"])
        if ranks != trainer.world_size:
            log.warning(
                f"the checkpoint holds the random state of {ranks} processes and this run has {trainer.world_size}; "
                "sampling continues from fresh random states (a resume on the same number of processes is exact)"
            )
        else:
            self._set({k: v[trainer.global_rank] for k, v in self._restore.items()}, pl_module.device)
        self._restore = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._around_eval = self._current(pl_module.device)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._around_eval is not None:
            self._set(self._around_eval, pl_module.device)
            self._around_eval = None
