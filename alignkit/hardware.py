"""`hardware:` -> Lightning Trainer arguments (single, DDP, FSDP2 through ModelParallelStrategy)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from alignkit.config.errors import ConfigError, Problem
from alignkit.config.schema import HardwareSpec


def _device_count(hw: HardwareSpec) -> int:
    if hw.devices != "auto":
        return hw.devices
    if hw.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


def trainer_kwargs(hw: HardwareSpec) -> dict[str, Any]:
    """accelerator, devices, num_nodes, strategy and precision for `lightning.Trainer`."""
    from lightning.pytorch.strategies import DDPStrategy

    from alignkit.checkpoints import AtomicModelParallelStrategy

    accelerator = "gpu" if hw.accelerator == "cuda" else hw.accelerator
    devices = _device_count(hw)
    strategy: Any = "auto"
    if hw.strategy == "ddp":
        strategy = DDPStrategy(find_unused_parameters=False)
    elif hw.strategy == "fsdp":
        if hw.fsdp.cpu_offload and not torch.cuda.is_available():
            msg = "moves sharded parameters from GPU to CPU memory, and no GPU is available here; set it to false"
            raise ConfigError([Problem("hardware.fsdp.cpu_offload", msg)])
        # Pure data parallel sharding: one mesh dimension over all processes, no tensor parallelism.
        strategy = AtomicModelParallelStrategy(
            data_parallel_size=devices * hw.num_nodes, tensor_parallel_size=1, save_distributed_checkpoint=True
        )
    return {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": hw.num_nodes,
        "strategy": strategy,
        "precision": hw.precision,
    }


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks (Hugging Face names their classes in `_no_split_modules`)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_fsdp2(model: nn.Module, mesh: Any, hw: HardwareSpec) -> None:
    """fully_shard each transformer block, then the whole model, over the data-parallel mesh dimension."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    options: dict[str, Any] = {"mesh": mesh["data_parallel"], "reshard_after_forward": hw.fsdp.reshard_after_forward}
    if hw.precision == "bf16-mixed":
        # parameters gathered in bf16 for compute; gradients reduced in fp32 (the FSDP2 recipe)
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if hw.fsdp.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    if hw.activation_checkpointing:
        activation_checkpointing(model)  # before sharding: each block's checkpoint wraps its FSDP unit
    for block in _blocks(model):
        fully_shard(block, **options)
    for module in model.modules():
        # Scalar-head models (reward model, critic) are called as base_model then score, to read the value
        # at every token: each is then its own unit, so that calling it gathers its weights (the root's
        # hooks would not run).
        if hasattr(module, "score") and isinstance(module.score, nn.Module) and module.base_model is not module:
            fully_shard(module.base_model, **options)
            fully_shard(module.score, **options)
    fully_shard(model, **options)


def activation_checkpointing(model: nn.Module) -> bool:
    """Recompute each transformer block's activations in backward (non-reentrant, as FSDP2 and torch.compile
    need); False for a model without the switch. transformers 5 names it `activation_checkpointing_enable`,
    4.x `gradient_checkpointing_enable`: whichever exists is used."""
    if callable(enable := getattr(model, "activation_checkpointing_enable", None)):
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif callable(enable := getattr(model, "gradient_checkpointing_enable", None)):
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        return False
    return True
