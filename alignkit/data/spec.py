"""The data section of an experiment config: where records come from and how they are tokenized."""

from __future__ import annotations

import inspect
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from alignkit.config.base import Spec
from alignkit.data.generators import DATASETS, GENERATOR_KINDS
from alignkit.registry import did_you_mean

RecordKind = Literal["completion", "preference", "unpaired", "prompt"]
Format = Literal["auto", "standard", "conversational"]

# The names the rest of alignkit reads; `columns` maps a source's own names onto these.
STANDARD_COLUMNS = ("prompt", "completion", "messages", "chosen", "rejected", "label", "margin")


# datasets' packaged builders that read only the files they are given: `hub: json` without data_files would
# return whatever an earlier call left in the cache. Named here because the schema must not import datasets.
LOCAL_BUILDERS = ("arrow", "csv", "json", "pandas", "parquet", "text")
SUFFIXES = {"json": "jsonl", "pandas": "pkl", "text": "txt"}  # a builder's usual file suffix, where not its name


class SourceSpec(Spec):
    """One source of records: a local file or directory, a registered generator, or a datasets.load_dataset path."""

    path: str | None = Field(
        None,
        description="Local .jsonl/.json/.parquet/.csv file, or a datasets save_to_disk directory.",
    )
    generator: str | None = Field(None, description="Name of a registered dataset generator (alignkit list).")
    hub: str | None = Field(
        None,
        description="What datasets.load_dataset reads: a dataset on the Hugging Face hub (e.g. "
        "openai/gsm8k), a local directory of data files, or a local builder (json, csv, "
        "parquet, text) with data_files.",
    )
    config: str | None = Field(None, description="The hub dataset's configuration (load_dataset's `name`).")
    revision: str | None = Field(None, description="A hub dataset's branch, tag or commit; its main branch if not set.")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None,
        description="Files for a hub source, passed to load_dataset: a path or glob, a list of them, or "
        "{split: files}; required with a local builder (hub: json, csv, ...).",
    )
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the generator.")
    split: str | None = Field(
        None,
        description="Split to read: of a DatasetDict directory ('train' when present and not given), or of a hub "
        "source ('train' when not given; slices such as 'train[:10%]' work too).",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Standard name -> column name in the source, e.g. {prompt: question, chosen: good}.",
    )
    limit: int | None = Field(None, ge=1, description="Keep only the first N rows.")
    weight: float = Field(
        1.0,
        gt=0,
        description="In a mixture (data.train or data.eval as a list of sources): this source's relative share of "
        "the mixed rows, weight / sum of weights. Not for a single source.",
    )

    @model_validator(mode="after")
    def _check(self) -> SourceSpec:
        given = [key for key in ("path", "generator", "hub") if getattr(self, key) is not None]
        if len(given) != 1:
            got = " and ".join(given) if given else "neither"
            raise ValueError(
                f"set exactly one of path, generator or hub (got {got}): path for a local file or save_to_disk "
                "directory, generator for generated records, hub for datasets.load_dataset"
            )
        for name in self.columns:
            if name not in STANDARD_COLUMNS:
                raise ValueError(
                    f"columns: unknown standard name (got '{name}'); allowed: {', '.join(STANDARD_COLUMNS)}"
                    f"{did_you_mean(name, STANDARD_COLUMNS)}"
                )
        if self.hub is None:
            for key in ("config", "revision", "data_files"):
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"{key}: applies only to a hub source (got {key} with {given[0]}); remove it, or load "
                        f"through hub: instead of {given[0]}:"
                    )
        if self.generator is None:
            if self.args:
                raise ValueError(f"args apply only to a generator (got args with {given[0]} '{self.name}')")
            if self.hub is not None:
                self._check_hub()
            return self
        if self.split is not None:
            raise ValueError(f"split applies only to a path or hub (got split '{self.split}' with a generator)")
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

    def _check_hub(self) -> None:
        if not self.hub.strip():
            raise ValueError("hub: empty; give a hub dataset name (e.g. openai/gsm8k), a directory or a local builder")
        if self.hub in LOCAL_BUILDERS and not self.data_files:
            raise ValueError(
                f"data_files: required with the local builder hub: {self.hub} (got none); e.g. "
                f"data_files: data/train.{SUFFIXES.get(self.hub, self.hub)}, or a list or {{split: files}} of them"
            )

    @property
    def name(self) -> str:
        """How errors name this source: the file path, generator:<name>, or hub:<name>[:config][split]."""
        if self.path is not None:
            return self.path
        if self.generator is not None:
            return f"generator:{self.generator}"
        config = f":{self.config}" if self.config is not None else ""
        files = f"({self.data_files})" if isinstance(self.data_files, str) else ""
        return f"hub:{self.hub}{config}{files}[{self.split or 'train'}]"


def _source_list(value: Any, optional: bool) -> Any:
    """A source, or a mixture's list of sources, each item's errors at its index (data.train[1].weight).

    A plain `SourceSpec | list[SourceSpec]` union would report every mistake twice, once per member, under
    pydantic's member labels; checking the shape first reports it once at its YAML path.
    """
    if value is None and optional:
        return None
    if not isinstance(value, list):
        return SourceSpec.model_validate(value)
    if not value:
        raise ValueError("an empty list of sources; give one source, or a list of sources to mix")
    sources, errors = [], []
    for i, item in enumerate(value):
        try:
            sources.append(SourceSpec.model_validate(item))
        except ValidationError as e:
            errors += [_at_item(i, error) for error in e.errors()]
    if errors:
        raise ValidationError.from_exception_data("SourceSpec", errors)
    return sources


def _at_item(i: int, error: Any) -> Any:
    """A source's error under its list index; a `key: message` from its validator goes to that key, as the
    config's error report does for a single source."""
    loc, message = (i, *error["loc"]), str(error.get("ctx", {}).get("error", ""))
    key, sep, rest = message.partition(": ")
    if error["type"] == "value_error" and sep and key in SourceSpec.model_fields and "\n" not in message:
        return {**error, "loc": (*loc, key), "ctx": {"error": ValueError(rest)}}
    return {**error, "loc": loc}


class DataSpec(Spec):
    """Training (and optional evaluation) records plus the tokenization limits."""

    train: SourceSpec | list[SourceSpec] = Field(
        description="Where the training records come from: one source, or a list of sources mixed by their "
        "weights. A mixture takes round(size * weight / sum of weights) rows of each source (largest remainders "
        "make the counts add up to size), a seeded random subset of its rows, and shuffles them together with "
        "trainer.seed. Its size is train_size, or else the largest at which no source repeats a row; a source "
        "whose share is larger than its rows repeats each row equally often (the remainder at random). Every "
        "source must give the record kind the algorithm trains on; the rows each contributed are logged."
    )
    eval: SourceSpec | list[SourceSpec] | None = Field(
        None,
        description="Evaluation records, one source or a mixture (no repeated rows); else eval_fraction of train.",
    )
    train_size: int | None = Field(
        None,
        ge=1,
        description="Rows in a mixed data.train; the most at which no source repeats a row when not set. Only "
        "for a mixture: limit a single source with data.train.limit.",
    )
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

    @field_validator("train", mode="before")
    @classmethod
    def _train(cls, value: Any) -> SourceSpec | list[SourceSpec]:
        return _source_list(value, optional=False)

    @field_validator("eval", mode="before")
    @classmethod
    def _eval(cls, value: Any) -> SourceSpec | list[SourceSpec] | None:
        return _source_list(value, optional=True)

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        problems = [*_mixture_problems(self.train, "train"), *_mixture_problems(self.eval, "eval")]
        if self.train_size is not None and not isinstance(self.train, list):
            problems.append(
                f"train_size: applies only to a mixture (data.train as a list of sources; got {self.train_size} "
                "with one source); to keep fewer rows of one source, set data.train.limit"
            )
        if self.eval is not None and self.eval_fraction > 0:
            problems.append(
                f"eval_fraction applies only when eval is not given (got eval and eval_fraction "
                f"{self.eval_fraction}); set one of them"
            )
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            problems.append(
                f"max_prompt_length must be below max_length to leave room for a completion "
                f"(got {self.max_prompt_length} >= {self.max_length})"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _mixture_problems(sources: SourceSpec | list[SourceSpec] | None, key: str) -> list[str]:
    """`key...: problem` lines: a weight outside a mixture, or generators that make no record kind in common."""
    if isinstance(sources, SourceSpec):
        # the default is let through: a resolved config (every default written out) must load again
        if sources.weight != SourceSpec.model_fields["weight"].default:
            return [
                f"{key}.weight: applies only to a source in a mixture (data.{key} as a list of sources; got weight "
                f"{sources.weight} with one source); remove it"
            ]
        return []
    generators = [(i, s.generator) for i, s in enumerate(sources or []) if s.generator is not None]
    if len(generators) < 2:
        return []
    first, kinds = generators[0][0], set(GENERATOR_KINDS[generators[0][1]])
    for i, name in generators[1:]:
        if not kinds & set(GENERATOR_KINDS[name]):
            return [
                f"{key}[{i}]: generator '{name}' makes {' or '.join(GENERATOR_KINDS[name])} records, and "
                f"data.{key}[{first}] ('{generators[0][1]}') makes {' or '.join(GENERATOR_KINDS[generators[0][1]])} "
                "records; every source of a mixture must make the kind the algorithm trains on"
            ]
        kinds &= set(GENERATOR_KINDS[name])
    return []
