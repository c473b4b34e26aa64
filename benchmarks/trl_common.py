"""What the TRL workers of the benchmarks share: alignkit's training settings as TRL arguments, a step clock."""

from __future__ import annotations

import time
from typing import Any

from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback


def alignkit_like_args(*, lr: float, steps: int, seed: int, use_cpu: bool = True, bf16: bool = False) -> dict[str, Any]:
    """TRL config keywords that make its trainers train as alignkit's defaults do, logging every step, saving nothing.

    TRL's configs default bf16=True (base_config.py:68, 108) and gradient checkpointing on (base_config.py:62);
    alignkit's CPU preset is 32-true without activation checkpointing. transformers 5.23 reads
    `gradient_checkpointing` only as a deprecated alias of `activation_checkpointing`. The optimizer is
    alignkit's OptimizerSpec default: torch.optim.AdamW (the non-fused "adamw_torch"), betas (0.9, 0.999),
    eps 1e-8, no weight decay, constant rate, gradient norm clipped at 1.0 (trainer.gradient_clip_val).
    """
    return {
        "use_cpu": use_cpu,
        "bf16": bf16,
        "fp16": False,
        "activation_checkpointing": False,
        "model_init_kwargs": {"dtype": "float32"},
        "max_steps": steps,
        "optim": "adamw_torch",
        "learning_rate": lr,
        "weight_decay": 0.0,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_epsilon": 1e-8,
        "max_grad_norm": 1.0,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "dataloader_num_workers": 0,
        "seed": seed,
        # every step is logged: losses and lengths are read from the log history
        "logging_strategy": "steps",
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,
    }


class OfflineMixin:
    """Put first in a TRL trainer's bases: no network from a benchmark."""

    def _send_telemetry(self) -> None:
        # base_trainer.py:80-82 pings the Hub from every trainer built.
        pass


def quiet(trainer: Trainer) -> None:
    """Drop the callbacks that print every step's log dict and a progress bar to stdout."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


class StepClock(TrainerCallback):
    """Wall time at the end of each optimizer step (after optimizer.step and the scheduler)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())
