"""Data: sources (files, save_to_disk directories, generators), row checks, tokenization, collation."""

from alignkit.data.build import build_datasets
from alignkit.data.collate import Collator
from alignkit.data.generators import DATASETS, GENERATOR_KINDS, sentiment_score, write_jsonl
from alignkit.data.sources import DataError, load_records
from alignkit.data.spec import DataSpec, RecordKind, SourceSpec
from alignkit.data.tokenization import tokenize_records

__all__ = [
    "DATASETS",
    "GENERATOR_KINDS",
    "Collator",
    "DataError",
    "DataSpec",
    "RecordKind",
    "SourceSpec",
    "build_datasets",
    "load_records",
    "sentiment_score",
    "tokenize_records",
    "write_jsonl",
]
