"""Per-seed random streams, so that a batch of seeds gives each seed the numbers it would get alone."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch


def stream_seed(seed: int, stream: str) -> int:
    """A stable integer for (seed, stream): the data, the evaluation states and the inits never share draws."""
    return zlib.crc32(f"{seed}/{stream}".encode()) + (seed << 32)


def generator(seed: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, stream))


def per_seed(seeds: Sequence[int], stream: str, draw: Callable[[torch.Generator], torch.Tensor]) -> torch.Tensor:
    """Stack `draw(generator(seed, stream))` over seeds: the one Python loop over seeds, for sampling only."""
    return torch.stack([draw(generator(s, stream)) for s in seeds])


@contextmanager
def global_seed(seed: int):
    """Run under `torch.manual_seed(seed)` without disturbing the caller's global RNG (for nn.Linear inits)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
