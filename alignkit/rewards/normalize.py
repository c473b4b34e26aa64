"""Reward normalisation: moments over the batch of every process, whitening, and a running (Welford) estimate."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

Moments = tuple[float, float, float]  # (count, mean, M2 = sum of squared deviations from the mean)


def batch_moments(x: Tensor) -> Moments:
    """(count, mean, M2) of x, over the rows of all processes when torch.distributed is running.

    Every process must call this in step (Lightning's training and validation steps do). Two passes (sum,
    then squared deviations) rather than one of sums of squares, which cancels badly for large rewards.
    """
    x = x.detach().float().reshape(-1)
    synced = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    sums = torch.stack([torch.tensor(float(x.numel()), device=x.device), x.sum()])
    if synced:
        dist.all_reduce(sums)
    count, total = sums.tolist()
    if count == 0:
        return 0.0, 0.0, 0.0
    mean = total / count
    m2 = ((x - mean) ** 2).sum()
    if synced:
        dist.all_reduce(m2)
    return count, mean, m2.item()


def merge_moments(a: Moments, b: Moments) -> Moments:
    """The moments of two sets together (Chan et al. 1979): Welford's update for a whole batch at once."""
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    n = n_a + n_b
    if n == 0:
        return 0.0, 0.0, 0.0
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n


def variance(m: Moments) -> float:
    """Sample variance M2 / (n - 1), with Bessel's correction as ops.rl.whiten; 0 below two values."""
    n, _, m2 = m
    return m2 / (n - 1) if n >= 2 else 0.0


def whiten(x: Tensor, m: Moments, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) with the given moments; only centred below two values (no std yet)."""
    n, mean, _ = m
    centered = x - mean
    return centered / math.sqrt(variance(m) + eps) if n >= 2 else centered


class RunningMoments(nn.Module):
    """Count, mean and M2 of every reward seen so far; kept in the module's state_dict for resume.

    Plain Python floats (float64) in `_extra_state` rather than buffers: exact over long runs, and no float64
    tensor for devices that lack it (MPS).
    """

    def __init__(self) -> None:
        super().__init__()
        self.moments: Moments = (0.0, 0.0, 0.0)

    def update(self, batch: Moments) -> None:
        self.moments = merge_moments(self.moments, batch)

    @property
    def mean(self) -> float:
        return self.moments[1]

    @property
    def std(self) -> float:
        return math.sqrt(variance(self.moments))

    def get_extra_state(self) -> dict[str, float]:
        count, mean, m2 = self.moments
        return {"count": count, "mean": mean, "m2": m2}

    def set_extra_state(self, state: Any) -> None:
        self.moments = (float(state["count"]), float(state["mean"]), float(state["m2"]))
