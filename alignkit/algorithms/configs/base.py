"""The base of every algorithm's config, and its card: what config-only code knows of an algorithm."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from pydantic import Field

from alignkit.config.base import Spec


class AlgorithmConfig(Spec):
    """Base of each algorithm's config; `name` selects the algorithm (and is its registered name)."""

    name: str

    def updates_per_step(self) -> int:
        """Optimizer steps per training step: 1 here; online algorithms take several per iteration."""
        return 1


class ReferenceConfig(AlgorithmConfig):
    """Options of algorithms that compare the policy with a frozen reference model."""

    precompute_ref_logps: bool = Field(
        False,
        description="Compute the reference log-probs of every train and eval sequence once, before training, "
        "and reuse them every epoch: no reference forward per step (the reference is frozen, so the "
        "numbers are the same).",
    )


@dataclass(frozen=True)
class AlgorithmCard:
    """An algorithm as the config layer sees it: its options, the sections and data it needs, where it lives.

    Validation (a missing or unused section, the data kind), `alignkit list`, pipelines and the progress lines
    of a run (alignkit/console.py) read the card;
    `load()` imports the algorithm's module, which holds its loss and its LightningModule (or study runner).
    """

    name: str  # registered name, equal to Config's `name` literal
    Config: type[AlgorithmConfig]
    module: str  # "alignkit.algorithms.dpo:DPO": the class that trains, imported on first use
    description: str  # one line, shown by `alignkit list`
    models: tuple[str, ...] = ("policy",)  # model sections it uses ("reward": the reward section)
    required_models: tuple[str, ...] = ("policy",)  # ... of which these must be in the YAML
    trained: tuple[str, ...] = ("policy",)  # ... and these get gradients and are exported
    records: str | None = "completion"  # the record kind of its batches (alignkit.data), None = no data
    also_loads: tuple[str, ...] = ()  # other kinds it converts into `records` (KTO splits pairs)
    # train metrics (tags without `train/`) on each progress line of `alignkit run`, and eval ones where logged
    progress: tuple[str, ...] = ("loss",)
    # why trainer.max_tokens_per_micro_batch cannot be used (None: it can)
    no_token_budget: str | None = None

    def load(self) -> Any:
        """The algorithm's class (an AlignModule subclass, or a study with `launch`)."""
        path, _, attr = self.module.partition(":")
        return getattr(import_module(path), attr)
