"""Resumable data loaders: the position inside an epoch is saved in checkpoints, so a resume sees the same batches."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ShardedSampler(Sampler[int]):
    """Seeded shuffle per epoch, split across ranks like DistributedSampler, able to start mid-epoch."""

    def __init__(self, size: int, *, rank: int, world: int, seed: int, shuffle: bool) -> None:
        self.size, self.rank, self.world, self.seed, self.shuffle = size, rank, world, seed, shuffle
        self.per_rank = math.ceil(size / world)
        self.epoch = 0
        self.start = 0  # indices of this rank's share already consumed (set on resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        order += order[: self.per_rank * self.world - self.size]  # pad so every rank gets as many
        mine = order[self.rank :: self.world]
        start, self.start = self.start, 0
        return iter(mine[start:])

    def __len__(self) -> int:
        return self.per_rank


class ResumableLoader(DataLoader):
    """A DataLoader with Lightning's `state_dict`/`load_state_dict`: (epoch, batches consumed this epoch)."""

    def __init__(self, dataset: Dataset, sampler: ShardedSampler, batch_size: int, **kwargs: Any) -> None:
        # A DataLoader draws a seed for its workers each epoch from its generator, by default torch's global
        # one, which online methods sample responses with: its own keeps the sampling stream the same
        # whether an epoch starts in a straight run or at a resume.
        kwargs.setdefault("generator", torch.Generator().manual_seed(sampler.seed))
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self._consumed = 0
        self._skip = 0

    def __iter__(self) -> Iterator[Any]:
        sampler: ShardedSampler = self.sampler  # type: ignore[assignment]
        self._consumed, self._skip = self._skip, 0
        sampler.start = self._consumed * self.batch_size  # type: ignore[operator]
        for batch in super().__iter__():
            self._consumed += 1
            yield batch

    def __len__(self) -> int:
        # Lightning counts batches per epoch from len(); after a resume the first epoch is shorter, but
        # Lightning's own progress counter already includes the skipped batches, so report a full epoch.
        return math.ceil(len(self.sampler) / self.batch_size)  # type: ignore[arg-type, operator]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self._consumed}  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])  # type: ignore[attr-defined]
        self._skip = state["batches"]
