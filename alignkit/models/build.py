"""Build, load and save tokenizers, causal LMs and scalar-head (reward / value) models from a ModelSpec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.models.auto.tokenization_auto import get_tokenizer_config

from alignkit.models.architectures import ARCHITECTURES, SIZE_FIELDS
from alignkit.models.spec import ModelSpec
from alignkit.models.tokenizer import bpe_tokenizer, byte_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The spec's tokenizer, with a pad token guaranteed (the EOS token when the tokenizer has none)."""
    if spec.tokenizer == "byte":
        tokenizer = byte_tokenizer()
    elif spec.tokenizer == "bpe":
        tokenizer = bpe_tokenizer()
    elif get_tokenizer_config(spec.tokenizer).get("tokenizer_class") == "TokenizersBackend":
        # A plain tokenizer.json (the byte tokenizer saves as one). AutoTokenizer would pick the class from
        # config.json's model_type for some types (qwen2 -> Qwen2Tokenizer, which adds an NFC normalizer and
        # an <|endoftext|> token past the model's vocabulary), so it is loaded as saved instead.
        tokenizer = PreTrainedTokenizerFast.from_pretrained(spec.tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer '{spec.tokenizer}' has neither a pad nor an EOS token; add a pad")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_config(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, **extra: Any) -> PretrainedConfig:
    """The transformers config of an `architecture` spec: its sizes, the tokenizer's vocabulary and ids."""
    if spec.architecture is None:
        raise ValueError("model_config needs `architecture`; a checkpoint at `path` has its own config")
    arch = ARCHITECTURES.get(spec.architecture)
    if spec.tie_embeddings is not None:
        extra = {"tie_word_embeddings": spec.tie_embeddings, **extra}
    return AutoConfig.for_model(
        arch.model_type,
        vocab_size=max(len(tokenizer), spec.vocab_size or 0),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **arch.config_kwargs({k: getattr(spec, k) for k in SIZE_FIELDS}),
        **extra,
    )


def adapter_base(path: str) -> str | None:
    """The base model a LoRA adapter directory (PEFT's adapter_config.json) was trained on, or None when `path`
    is no adapter. Raises when the base cannot be loaded (it was built from `architecture`, so never saved)."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"path: {path} is a LoRA adapter whose base model was built from `architecture` (random weights, never "
            "saved), so it cannot be loaded onto it; read the merged model instead (the stage's hf/<section>/, "
            "from_stage without `output: <section>_adapter`)"
        )
    return str(base)


def _build(auto_class: Any, spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, **extra: Any) -> PreTrainedModel:
    load = {"dtype": DTYPES[spec.dtype], "attn_implementation": spec.attn_implementation}
    # Seeded inside a forked RNG: identical weights for one seed, and the caller's RNG stream untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        if spec.path is not None and (base := adapter_base(spec.path)) is not None:
            from peft import PeftModel

            # an adapter directory: its base with the adapter merged in (new adapters, if any, go on top)
            model = auto_class.from_pretrained(base, **load, **extra)
            model = PeftModel.from_pretrained(model, spec.path).merge_and_unload()
            model.config._name_or_path = spec.path  # the base a new adapter records: loading it merges this one
        elif spec.path is not None:
            model = auto_class.from_pretrained(spec.path, **load, **extra)
        else:
            model = auto_class.from_config(model_config(spec, tokenizer, **extra), **load)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(
            f"tokenizer '{spec.tokenizer}' has {len(tokenizer)} tokens but the model embeds only {rows}; "
            "use the tokenizer the checkpoint was trained with"
        )
    if model.config.pad_token_id is None:  # sequence-classification heads need it on batches
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def build_causal_lm(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A causal LM (policy or reference): loaded from `spec.path`, or built with seeded random weights."""
    return _build(AutoModelForCausalLM, spec, tokenizer)


def build_scalar_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A backbone plus a linear `score` head to one number (reward model or critic).

    It is `AutoModelForSequenceClassification` with `num_labels=1`, what the Hugging Face ecosystem loads
    as a reward model. From a causal-LM checkpoint the backbone is loaded and the head is new, seeded by
    `init_seed`.
    """
    return _build(AutoModelForSequenceClassification, spec, tokenizer, num_labels=1)


def build_classifier(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A sequence-classifier checkpoint as trained: its own head, num_labels, id2label and problem_type.

    Unlike `build_scalar_model` nothing is forced to one output. Only a checkpoint at `spec.path` will do:
    a class means something only once a head was trained on it.
    """
    if spec.path is None:
        raise ValueError("build_classifier needs `path`, a classifier checkpoint; `architecture` has no trained labels")
    return _build(AutoModelForSequenceClassification, spec, tokenizer)


def save_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    directory: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write model (safetensors) and tokenizer so that `AutoModel*/AutoTokenizer.from_pretrained` load them.

    `state_dict` overrides the model's own, e.g. a full state dict gathered from sharded (FSDP) weights.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, state_dict=state_dict)  # transformers 5 writes only safetensors
    tokenizer.save_pretrained(directory)
    return directory


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters, each shared (tied) tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
