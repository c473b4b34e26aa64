"""Data: sources (files, save_to_disk directories, generators), row checks, tokenization, collation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignkit.data.generators import DATASETS, GENERATOR_KINDS, sentiment_score, write_jsonl
from alignkit.data.reasoning import answer_line, evaluate_steps
from alignkit.data.sentiment import Labeller, continue_review, sample_review, true_reward
from alignkit.data.spec import DataSpec, RecordKind, SourceSpec
from alignkit.lazy import lazy_attributes

# The specs and generators import neither torch, datasets nor transformers, so validating a config stays
# fast (`alignkit validate`); loading, tokenizing and batching import them on first use.
_LAZY = {
    "build_datasets": "build",
    "Collator": "collate",
    "DataError": "sources",
    "load_records": "sources",
    "tokenize_records": "tokenization",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


if TYPE_CHECKING:
    from alignkit.data.build import build_datasets
    from alignkit.data.collate import Collator
    from alignkit.data.sources import DataError, load_records
    from alignkit.data.tokenization import tokenize_records

__all__ = [
    "DATASETS",
    "GENERATOR_KINDS",
    "Collator",
    "DataError",
    "DataSpec",
    "Labeller",
    "RecordKind",
    "SourceSpec",
    "answer_line",
    "build_datasets",
    "continue_review",
    "evaluate_steps",
    "load_records",
    "sample_review",
    "sentiment_score",
    "tokenize_records",
    "true_reward",
    "write_jsonl",
]
