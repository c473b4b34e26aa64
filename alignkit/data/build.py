"""The data section of a config -> tokenized train and eval datasets."""

from __future__ import annotations

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from alignkit.data.sources import DataError, load_records
from alignkit.data.spec import DataSpec, RecordKind, SourceSpec
from alignkit.data.tokenization import tokenize_records


def build_datasets(
    spec: DataSpec, kind: RecordKind, tokenizer: PreTrainedTokenizerBase, seed: int
) -> tuple[Dataset, Dataset | None]:
    """Load, check and tokenize train and eval (`spec.eval`, else a seeded `eval_fraction` split of train)."""

    def prepare(source: SourceSpec, key: str) -> Dataset:
        records = load_records(source, kind, spec.format, key=key)
        return tokenize_records(
            records, kind, tokenizer, spec.max_length, spec.max_prompt_length, spec.format, source=source.name, key=key
        )

    # Tokenize before splitting so that errors give row numbers of the file, not of a shuffled split.
    train = prepare(spec.train, "data.train")
    if spec.eval is not None:
        return train, prepare(spec.eval, "data.eval")
    if spec.eval_fraction == 0:
        return train, None
    n_eval = round(len(train) * spec.eval_fraction)
    if n_eval < 1 or n_eval >= len(train):
        raise DataError(
            f"{spec.train.name}: eval_fraction {spec.eval_fraction} of {len(train)} rows leaves a split "
            "empty; use more rows, another eval_fraction, or give data.eval"
        )
    split = train.train_test_split(test_size=n_eval, seed=seed)
    return split["train"], split["test"]
