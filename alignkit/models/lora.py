"""LoRA through PEFT: adapters on a built model, the policy with its adapters off as its reference, and exports.

A section with `lora:` holds the transformers model itself, its chosen linear layers replaced in place by PEFT's
LoRA layers; the PeftModel around it is kept beside it (`peft_model`) for what only PEFT does: switching the
adapters off, saving the adapter, merging it. Everything else (log-probs, layouts, generation, values, FSDP)
sees an ordinary transformers model.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignkit.models.modes import eval_mode
from alignkit.models.spec import LoraSpec

log = logging.getLogger(__name__)

_PEFT = "_alignkit_peft"  # the PeftModel around a model, in its __dict__ (not a submodule: no cycle)


def apply_lora(model: nn.Module, spec: LoraSpec, *, scalar: bool, seed: int = 0) -> nn.Module:
    """`model` with LoRA adapters (its other weights frozen), returned as the transformers model it was.

    Adapters train in float32 over a bf16/fp16 model (PEFT's default, as TRL's): their Adam updates are small
    next to the weights and would round away in 16 bits. `scalar` (a reward model or critic): the new `score`
    head trains in full beside them (PEFT's sequence-classification task does that). `seed` draws the
    adapters' A matrices (B starts at zero, so the adapted model starts equal to the model).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        modules_to_save=list(spec.modules_to_save) or None,
        task_type=TaskType.SEQ_CLS if scalar else TaskType.CAUSAL_LM,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft = get_peft_model(model, config)
    inner = peft.get_base_model()
    inner.__dict__[_PEFT] = peft
    trained = sum(p.numel() for p in inner.parameters() if p.requires_grad)
    total = sum(p.numel() for p in inner.parameters())
    log.debug(
        "LoRA rank %d on %s: %s of %s parameters train (%.2f%%)",
        spec.rank,
        spec.target_modules if isinstance(spec.target_modules, str) else ", ".join(spec.target_modules),
        f"{trained:,}",
        f"{total:,}",
        100 * trained / max(total, 1),
    )
    return inner


def peft_model(model: nn.Module) -> Any:
    """The PeftModel around a model made by apply_lora, or None for a model without adapters."""
    return model.__dict__.get(_PEFT)


@contextmanager
def adapters_off(model: nn.Module) -> Any:
    """While inside: `model` computes as its frozen base (adapters skipped, `modules_to_save` originals used),
    in eval mode (no dropout), as a separate frozen copy would; its modes are restored after."""
    with eval_mode(model), peft_model(model).disable_adapter():
        yield


class AdaptersOff(nn.Module):
    """The reference when it is the policy's start and the policy trains adapters: the policy itself with its
    adapters off, so no second copy of the weights is held (as TRL, verl and torchtune do).

    It owns no parameters (the policy's are not registered here: nothing is frozen, sharded, checkpointed or
    put in eval mode twice); attributes it lacks (config, get_output_embeddings, ...) are the policy's.
    """

    alignkit_adapters_off = True  # read by the run's header line (alignkit.console)

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        if peft_model(policy) is None:
            raise ValueError("AdaptersOff needs a model with LoRA adapters (alignkit.models.lora.apply_lora)")
        self.__dict__["policy"] = policy

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            policy = self.__dict__.get("policy")
            if policy is None:
                raise
            return getattr(policy, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        policy = self.__dict__["policy"]
        with adapters_off(policy):
            return policy(*args, **kwargs)


def unsharded_copy(model: nn.Module) -> nn.Module:
    """A new model of `model`'s architecture, dtype and adapters, on the CPU with fresh weights: where the full
    weights of a sharded (FSDP) model are loaded to be exported."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = peft_model(model).peft_config["default"]
    auto = AutoModelForSequenceClassification if config.task_type == "SEQ_CLS" else AutoModelForCausalLM
    peft = get_peft_model(auto.from_config(model.config, dtype=model.config.dtype), config)
    copy = peft.get_base_model()
    copy.__dict__[_PEFT] = peft
    return copy


def export_lora(
    model: nn.Module, tokenizer: Any, merged: Path, adapter: Path, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """The adapter at `adapter` (PEFT's format: adapter_config.json + adapter_model.safetensors, loadable with
    PeftModel.from_pretrained onto the base) and the merged model at `merged` (loadable by transformers alone).

    `state_dict`: the full weights of a sharded model (FSDP), loaded into `model`, an unsharded copy with the
    same adapters. The model is merged in place: call this last.
    """
    from alignkit.models.build import save_hf

    if state_dict is not None:
        model.load_state_dict(state_dict)
    peft = peft_model(model)
    peft.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    save_hf(peft.merge_and_unload(), tokenizer, merged)
