"""Rollouts for online RL: the engines that sample responses (registered here by name), and scoring them.

`rollout.engine` in a YAML names one of ENGINES. This module imports no torch, so configs validate without it;
an engine's module (its card's `module`) is imported when a run builds it. The contract an engine fulfils is in
`alignkit/rollout/engine.py`; `Rollout`, `SamplingParams` and `score` are in `alignkit/rollout/rollout.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from alignkit.registry import Registry


@dataclass(frozen=True)
class EngineCard:
    """A rollout engine as configs see it: its name, where its class lives, one line for `alignkit list`."""

    name: str
    module: str  # "alignkit.rollout.sampler:BuiltinEngine", imported on first use
    description: str

    def load(self) -> Any:
        path, _, attr = self.module.partition(":")
        return getattr(import_module(path), attr)


ENGINES: Registry[EngineCard] = Registry("rollout engine")
for _card in (
    EngineCard(
        "builtin",
        "alignkit.rollout.sampler:BuiltinEngine",
        "alignkit's sampler: one prefill per prompt for its G samples, a preallocated KV cache, finished rows leave "
        "the batch, float32 sampling, the sampled tokens' log-probs returned; CUDA graphs for decoding on GPU",
    ),
    EngineCard(
        "hf",
        "alignkit.rollout.generate:HFEngine",
        "Hugging Face `generate`: any causal LM transformers can generate with, also those whose layers keep "
        "state other than keys and values (linear attention, state-space layers)",
    ),
):
    ENGINES.add(_card.name, _card, _card.description)

__all__ = ["ENGINES", "EngineCard"]
