"""Data: sources (files, save_to_disk directories, generators), row checks, tokenization, collation."""

from alignkit.data.build import build_datasets
from alignkit.data.collate import Collator
from alignkit.data.generators import DATASETS, GENERATOR_KINDS, sentiment_score, write_jsonl
from alignkit.data.sentiment import Labeller, continue_review, sample_review, true_reward
from alignkit.data.sources import DataError, load_records
from alignkit.data.spec import DataSpec, RecordKind, SourceSpec
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
