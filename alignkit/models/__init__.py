"""Models: the ModelSpec, registered architectures, builders for policy/reference/reward/value models."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

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
    "byte_tokenizer": "tokenizer",
    "last_token_index": "values",
    "sequence_scores": "values",
    "token_values": "values",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"alignkit.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'alignkit.models' has no attribute '{name}'")


if TYPE_CHECKING:
    from alignkit.models.build import (
        build_causal_lm,
        build_scalar_model,
        count_parameters,
        load_tokenizer,
        model_config,
        save_hf,
    )
    from alignkit.models.tokenizer import byte_tokenizer
    from alignkit.models.values import last_token_index, sequence_scores, token_values

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "ModelSpec",
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
