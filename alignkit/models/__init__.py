"""Models: the ModelSpec, registered architectures, builders for policy/reference/reward/value models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignkit.lazy import lazy_attributes
from alignkit.models.architectures import ARCHITECTURES, Architecture
from alignkit.models.spec import ModelSpec

# The spec and the registry import neither torch nor transformers, so validating a config stays fast
# (`alignkit validate`); the builders below cost seconds to import and load on first use.
_LAZY = {
    "build_causal_lm": "build",
    "build_scalar_model": "build",
    "count_parameters": "build",
    "load_tokenizer": "build",
    "model_config": "build",
    "save_hf": "build",
    "bpe_tokenizer": "tokenizer",
    "byte_tokenizer": "tokenizer",
    "last_token_index": "values",
    "sequence_scores": "values",
    "token_values": "values",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


if TYPE_CHECKING:
    from alignkit.models.build import (
        build_causal_lm,
        build_scalar_model,
        count_parameters,
        load_tokenizer,
        model_config,
        save_hf,
    )
    from alignkit.models.tokenizer import bpe_tokenizer, byte_tokenizer
    from alignkit.models.values import last_token_index, sequence_scores, token_values

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "ModelSpec",
    "bpe_tokenizer",
    "build_causal_lm",
    "build_scalar_model",
    "byte_tokenizer",
    "count_parameters",
    "last_token_index",
    "load_tokenizer",
    "model_config",
    "save_hf",
    "sequence_scores",
    "token_values",
]
