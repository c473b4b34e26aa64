"""What the benchmark scripts share: workers in their own processes, models from presets, TRL settings and clock."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

# glibc's malloc keeps freed blocks below its mmap threshold (128 KB, raised adaptively up to 32 MB) for reuse, so
# a CPU process's peak RSS also counts memory it had freed; with every block over 64 KB its own mapping, returned
# to the system when freed, peak RSS follows the tensors alive at the peak (and allocation costs more time).
EXACT_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def run_worker(cmd: Sequence[str], name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one worker process (so that its peak memory is its own) and return the JSON of its last line; `env`
    adds to the environment (EXACT_MEMORY)."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{name} worker failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def alternating(workers: Sequence[str], repeats: int) -> Iterator[str]:
    """Every worker `repeats` times, the order reversed on odd repeats, so that none always runs first on a cold
    or busy machine."""
    for repeat in range(repeats):
        yield from (workers if repeat % 2 == 0 else workers[::-1])


def save_preset_model(preset: str, directory: Path) -> tuple[str, Any, Any]:
    """(directory, tokenizer, model): a causal LM built from a model preset and saved in Hugging Face format, so
    that every worker starts from the same weights."""
    from alignkit.config.presets import load_preset
    from alignkit.models import ModelSpec, build_causal_lm, load_tokenizer, save_hf

    spec = ModelSpec(**{k: v for k, v in load_preset("models", preset).items() if k != "description"})
    tokenizer = load_tokenizer(spec)
    model = build_causal_lm(spec, tokenizer)
    return str(save_hf(model, tokenizer, directory)), tokenizer, model


def train_alignkit(config: Callable[[str], dict[str, Any]]) -> tuple[Any, float]:
    """Run `config(logging_root)` with alignkit in a temporary root; (its TensorBoard events, wall seconds)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from alignkit.config.load import config_from_dict
    from alignkit.run import run

    with tempfile.TemporaryDirectory() as root:
        cfg = config_from_dict(config(root))
        start = time.perf_counter()
        result = run(cfg)
        wall = time.perf_counter() - start
        return EventAccumulator(str(next(Path(result.run_dir).glob("events.*")))).Reload(), wall


def loader_order(size: int, seed: int) -> list[int]:
    """The rows in the order alignkit's loader visits them in epoch 0 on one process."""
    from alignkit.data.loader import ShardedSampler

    return list(ShardedSampler(size, rank=0, world=1, seed=seed, shuffle=True))


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


def peft_config(lora: dict[str, Any] | None) -> Any:
    """PEFT's LoraConfig for a TRL trainer from alignkit's `lora` keys (rank, alpha, dropout, target_modules), or
    None: the same adapters on both sides of a comparison."""
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora["rank"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora.get("target_modules", "all-linear"),
        task_type="CAUSAL_LM",
    )
