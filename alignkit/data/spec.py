"""The data section of an experiment config: where records come from and how they are tokenized."""

from __future__ import annotations

import inspect
from typing import Any, Literal

from pydantic import Field, model_validator

from alignkit.config.base import Spec
from alignkit.data.generators import DATASETS
from alignkit.registry import did_you_mean

RecordKind = Literal["completion", "preference", "unpaired", "prompt"]
Format = Literal["auto", "standard", "conversational"]

# The names the rest of alignkit reads; `columns` maps a source's own names onto these.
STANDARD_COLUMNS = ("prompt", "completion", "messages", "chosen", "rejected", "label", "margin")


class SourceSpec(Spec):
    """One source of records: a local file or directory, or a registered generator."""

    path: str | None = Field(
        None,
        description="Local .jsonl/.json/.parquet/.csv file, or a datasets save_to_disk directory.",
    )
    generator: str | None = Field(None, description="Name of a registered dataset generator (alignkit list).")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the generator.")
    split: str | None = Field(None, description="Split of a DatasetDict directory; 'train' when present and not given.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Standard name -> column name in the source, e.g. {prompt: question, chosen: good}.",
    )
    limit: int | None = Field(None, ge=1, description="Keep only the first N rows.")

    @model_validator(mode="after")
    def _check(self) -> SourceSpec:
        if (self.path is None) == (self.generator is None):
            given = "both" if self.path is not None else "neither"
            raise ValueError(f"set exactly one of path or generator (got {given})")
        for name in self.columns:
            if name not in STANDARD_COLUMNS:
                raise ValueError(
                    f"columns: unknown standard name (got '{name}'); allowed: {', '.join(STANDARD_COLUMNS)}"
                    f"{did_you_mean(name, STANDARD_COLUMNS)}"
                )
        if self.path is not None:
            if self.args:
                raise ValueError(f"args apply only to a generator (got args with path '{self.path}')")
            return self
        if self.split is not None:
            raise ValueError(f"split applies only to a path (got split '{self.split}' with a generator)")
        if self.generator not in DATASETS:
            raise ValueError(f"generator: {DATASETS.unknown_message(self.generator)}")
        allowed = list(inspect.signature(DATASETS.get(self.generator)).parameters)
        for arg in self.args:
            if arg not in allowed:
                raise ValueError(
                    f"args: unknown argument for generator '{self.generator}' (got '{arg}'); "
                    f"allowed: {', '.join(allowed)}{did_you_mean(arg, allowed)}"
                )
        return self

    @property
    def name(self) -> str:
        """How errors name this source: the file path, or generator:<name>."""
        return self.path if self.path is not None else f"generator:{self.generator}"


class DataSpec(Spec):
    """Training (and optional evaluation) records plus the tokenization limits."""

    train: SourceSpec = Field(description="Where the training records come from.")
    eval: SourceSpec | None = Field(None, description="Evaluation records; else eval_fraction of train.")
    eval_fraction: float = Field(
        0.0, ge=0.0, le=0.5, description="Share of train held out for evaluation when eval is not given."
    )
    format: Format = Field(
        "auto",
        description="standard (strings) or conversational (lists of {role, content}); auto detects it.",
    )
    max_length: int = Field(512, ge=2, description="Most tokens in prompt + completion.")
    max_prompt_length: int | None = Field(
        None, ge=1, description="Prompts longer than this are truncated from the left."
    )

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        if self.eval is not None and self.eval_fraction > 0:
            raise ValueError(
                f"eval_fraction applies only when eval is not given (got eval and eval_fraction "
                f"{self.eval_fraction}); set one of them"
            )
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length must be below max_length to leave room for a completion "
                f"(got {self.max_prompt_length} >= {self.max_length})"
            )
        return self
