"""Callbacks every run gets: throughput and memory (`perf/*`), learning rate, a checkpoint on a crash."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor


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
