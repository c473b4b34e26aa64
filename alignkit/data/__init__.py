"""Data: sources (files, save_to_disk directories, generators), row checks, tokenization, collation."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from alignkit.data.generators import DATASETS, GENERATOR_KINDS, sentiment_score, write_jsonl
from alignkit.data.sentiment import Labeller, continue_review, sample_review, true_reward
from alignkit.data.spec import DataSpec, RecordKind, SourceSpec

# The specs and generators import neither torch, datasets nor transformers, so validating a config stays
# fast (`alignkit validate`); loading, tokenizing and batching import them on first use.
_LAZY = {
    "build_datasets": "build",
    "Collator": "collate",
    "DataError": "sources",
    "load_records": "sources",
    "tokenize_records": "tokenization",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"alignkit.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'alignkit.data' has no attribute '{name}'")


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
    "build_datasets",
    "continue_review",
    "load_records",
    "sample_review",
    "sentiment_score",
    "tokenize_records",
    "true_reward",
    "write_jsonl",
]
