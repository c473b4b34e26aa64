"""A model in eval mode for a while, each module's own train/eval flag restored after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """`model` in eval mode inside; after, every module gets back its own flag (model.train(mode) would flatten a
    mixed state, e.g. a frozen model inside a trained one)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
