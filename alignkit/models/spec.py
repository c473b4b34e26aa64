"""ModelSpec: which model to load or build, checked from the config alone before anything loads."""

from __future__ import annotations

import importlib.util
import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from alignkit.config.base import Spec
from alignkit.models.architectures import ARCHITECTURES, SIZE_FIELDS


def _divisors(n: int, most: int = 12) -> str:
    """Divisors of n in order, at most `most`: the small ones and their cofactors (a bounded search, so that a
    huge value is answered at once rather than after a loop over every number below it)."""
    small = [d for d in range(1, min(math.isqrt(n), 100_000) + 1) if n % d == 0]
    found = sorted({*small, *(n // d for d in small)})
    return ", ".join(map(str, found[:most])) + (", ..." if len(found) > most else "")


class LoraSpec(Spec):
    """Low-rank adapters through PEFT (Hu et al. 2021, "LoRA", arXiv 2106.09685): the model's weights stay frozen
    and only the adapters (and `modules_to_save`) train."""

    rank: int = Field(16, gt=0, description="Rank r of each adapter (A: r x in, B: out x r).")
    alpha: float = Field(32.0, gt=0, description="Scale: the adapter's output is multiplied by alpha / rank.")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the adapter's input (training only; PEFT's default 0 keeps no copy)."
    )
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear",
        description="Which linear layers get adapters: 'all-linear' (every linear layer of the body, not the LM "
        "head, as QLoRA recommends) or module names, e.g. [q_proj, v_proj].",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full beside the adapters (e.g. [embed_tokens] for new tokens). A reward "
        "model's or critic's `score` head always trains.",
    )

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, names: str | list[str]) -> str | list[str]:
        if isinstance(names, list) and not names:
            raise ValueError("name at least one module, or 'all-linear' (got [])")
        return names


class ModelSpec(Spec):
    """A Hugging Face checkpoint (`path`) or a registered architecture built with random weights."""

    preset: str | None = Field(
        None,
        description="Name of a YAML preset in registry/models/; the config loader merges its keys under "
        "yours before validation, so this is kept only as a record.",
    )
    path: str | None = Field(
        None, description="Local Hugging Face checkpoint directory (or a hub id where the network allows)."
    )
    architecture: str | None = Field(
        None,
        description="Registered architecture (llama, qwen2, gpt2, ...) built from its config with random "
        "weights; set this or `path`.",
    )
    tokenizer: Literal["byte", "bpe"] | str = Field(
        "byte",
        description="'byte': the built-in byte-level tokenizer (259 tokens, BOS <s>, EOS </s>); 'bpe': a "
        "32,000-token byte-level BPE trained locally from the Python standard library's sources, with ChatML "
        "special tokens and chat template (pad <|endoftext|>, EOS <|im_end|>, no BOS; built once in seconds and "
        "cached under $ALIGNKIT_CACHE, default ~/.cache/alignkit; ids can differ between Python versions); "
        "otherwise a local tokenizer directory. Left unset alongside `path`, it becomes `path` (the tokenizer "
        "saved with the model).",
    )
    hidden_size: int | None = Field(
        None, gt=0, description="Width of the residual stream (None: architecture default)."
    )
    num_layers: int | None = Field(None, gt=0, description="Number of transformer blocks (None: architecture default).")
    num_heads: int | None = Field(
        None, gt=0, description="Attention heads; must divide hidden_size (None: architecture default)."
    )
    num_kv_heads: int | None = Field(
        None,
        gt=0,
        description="Key/value heads for grouped-query attention; must divide num_heads (None: architecture "
        "default; not for gpt2).",
    )
    intermediate_size: int | None = Field(None, gt=0, description="Width of the MLP (None: architecture default).")
    max_position_embeddings: int | None = Field(
        None, gt=0, description="Longest sequence the positions cover (None: architecture default)."
    )
    vocab_size: int | None = Field(
        None,
        gt=0,
        le=2**20,
        description="Rows of the embedding and the LM head when at least the tokenizer's size (None: the "
        "tokenizer's size). Real checkpoints pad their vocabulary this way (Qwen 2.5: 151,936); a byte-tokenizer "
        "model with a real vocabulary's size costs what a real one does in the head.",
    )
    tie_embeddings: bool | None = Field(
        None, description="Share the input embedding with the LM head (None: the architecture's default)."
    )
    init_seed: int = Field(
        0,
        ge=0,
        description="Seed for random initial weights (an `architecture` model, or a fresh score head on a "
        "causal-LM checkpoint); the same seed gives the same weights.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Parameter dtype.")
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flex_attention"] = Field(
        "sdpa",
        description="Attention kernel: 'sdpa' (torch's fused attention), 'eager' (plain matmuls), "
        "'flash_attention_2' (the flash-attn package, CUDA) or 'flex_attention' (torch's FlexAttention; it trains "
        "on GPUs only, having no backward on CPU).",
    )

    lora: LoraSpec | None = Field(
        None,
        description="Train low-rank adapters (PEFT) instead of every weight; for a trained policy, reward model or "
        "critic. A reference left out is then the policy with its adapters switched off: no second copy is held.",
    )

    @model_validator(mode="before")
    @classmethod
    def _tokenizer_defaults_to_path(cls, data: Any) -> Any:
        # Written into the spec (not decided at load time) so that the resolved config says what ran.
        if isinstance(data, dict) and data.get("path") and "tokenizer" not in data:
            return {**data, "tokenizer": data["path"]}
        return data

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, name: str | None) -> str | None:
        if name is not None and name not in ARCHITECTURES:
            raise ValueError(ARCHITECTURES.unknown_message(name))
        return name

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        overrides = {k: getattr(self, k) for k in SIZE_FIELDS}
        problems = []
        if (self.path is None) == (self.architecture is None):
            got = "both" if self.path else "neither"
            problems.append(
                f"path, architecture: set exactly one (got {got}); `path` loads a Hugging Face checkpoint, "
                f"`architecture` ({', '.join(ARCHITECTURES.names())}) builds one with random weights"
            )
        if self.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            problems.append(
                "attn_implementation: 'flash_attention_2' needs the flash-attn package, which is not installed "
                "(pip install flash-attn, on a CUDA machine); use 'sdpa'"
            )
        if self.path is not None:
            problems += [
                f"{k}: sizes apply only to a model built from `architecture` (got {v}); a checkpoint at "
                f"`path` keeps its own config, so remove it"
                for k, v in {**overrides, "vocab_size": self.vocab_size, "tie_embeddings": self.tie_embeddings}.items()
                if v is not None
            ]
        if self.architecture is not None:
            arch = ARCHITECTURES.get(self.architecture)
            if self.num_kv_heads is not None and "num_kv_heads" not in arch.names:
                problems.append(
                    f"num_kv_heads: architecture '{self.architecture}' has no grouped-query attention "
                    f"(got {self.num_kv_heads}); remove it"
                )
            size = arch.sizes(overrides)
            hidden, heads, kv = size["hidden_size"], size["num_heads"], size.get("num_kv_heads")
            if hidden % heads:
                problems.append(
                    f"num_heads: must divide hidden_size (got num_heads={heads}, hidden_size={hidden}); "
                    f"allowed: {_divisors(hidden)}"
                )
            if kv is not None and heads % kv:
                problems.append(
                    f"num_kv_heads: must divide num_heads (got num_kv_heads={kv}, num_heads={heads}); "
                    f"allowed: {_divisors(heads)}"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self
