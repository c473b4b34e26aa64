"""The data section of a config -> tokenized train and eval datasets."""

from __future__ import annotations

from collections.abc import Callable

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from alignkit.data.mixture import mix, mixture_counts
from alignkit.data.sources import DataError, load_records
from alignkit.data.spec import DataSpec, RecordKind, SourceSpec
from alignkit.data.tokenization import tokenize_records


def build_datasets(
    spec: DataSpec, kind: RecordKind, tokenizer: PreTrainedTokenizerBase, seed: int
) -> tuple[Dataset, Dataset | None]:
    """Load, check and tokenize train and eval (`spec.eval`, else a seeded `eval_fraction` split of train).

    A list of sources is a mixture (see DataSpec.train): each source is checked and tokenized on its own, so
    that errors give row numbers of its file, then `seed` picks and orders the mixed rows.
    """

    def prepare(source: SourceSpec, key: str) -> Dataset:
        records = load_records(source, kind, spec.format, key=key)
        return tokenize_records(
            records, kind, tokenizer, spec.max_length, spec.max_prompt_length, spec.format, source=source.name, key=key
        )

    def gather(sources: SourceSpec | list[SourceSpec], key: str, size: int | None) -> tuple[Dataset, list[str]]:
        """The rows of one source or a mixture, and the mixture's sources that repeat rows in it."""
        if isinstance(sources, SourceSpec):
            return prepare(sources, key), []
        keys = [f"{key}[{i}]" for i in range(len(sources))]
        parts = [_naming(k, prepare, s) for k, s in zip(keys, sources, strict=True)]
        counts = mixture_counts([len(p) for p in parts], [s.weight for s in sources], size)
        names = [f"{k} ({s.name})" for k, s in zip(keys, sources, strict=True)]
        repeated = [n for n, c, p in zip(names, counts, parts, strict=True) if c > len(p)]
        return mix(parts, counts, seed, names), repeated

    # Tokenize before splitting so that errors give row numbers of the file, not of a shuffled split.
    train, repeated = gather(spec.train, "data.train", spec.train_size)
    if spec.eval is not None:
        return train, gather(spec.eval, "data.eval", None)[0]
    if spec.eval_fraction == 0:
        return train, None
    name = spec.train.name if isinstance(spec.train, SourceSpec) else "data.train (a mixture)"
    if repeated:
        raise DataError(
            f"{name}: data.train_size {spec.train_size} repeats rows of {', '.join(repeated)}, so an eval_fraction "
            "split would hold rows that train also holds; give data.eval, or lower or remove data.train_size"
        )
    n_eval = round(len(train) * spec.eval_fraction)
    if n_eval < 1 or n_eval >= len(train):
        raise DataError(
            f"{name}: eval_fraction {spec.eval_fraction} of {len(train)} rows leaves a split "
            "empty; use more rows, another eval_fraction, or give data.eval"
        )
    split = train.train_test_split(test_size=n_eval, seed=seed)
    return split["train"], split["test"]


def _naming(key: str, prepare: Callable[[SourceSpec, str], Dataset], source: SourceSpec) -> Dataset:
    """prepare(source, key), with every line of its DataError starting with `key`: in a mixture, the file name
    alone does not say which entry of the list failed (two entries may read one file)."""
    try:
        return prepare(source, key)
    except DataError as e:
        lines = [line if line.startswith(key) else f"{key}: {line}" for line in str(e).splitlines()]
        raise DataError("\n".join(lines)) from e
