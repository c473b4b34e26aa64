"""TRL's SFTTrainer on the same model, tokens and batch as alignkit's SFT, for benchmarks/memory_ladder.py.

Needs the `bench` extra (`pip install -e .[bench]`); written against trl 1.16.0 with transformers 5.24. What TRL
computes here (cited as trl/trainer/<file>.py:<line> of that release):

- Pre-tokenized rows: a dataset with an `input_ids` column is recognised as processed (sft_trainer.py:1248) and,
  with `completion_only_loss=True`, its `completion_mask` becomes the labels' mask (sft_trainer.py:566-567): the
  loss counts completion tokens only, as alignkit's does.
- The loss is the mean over the batch's completion tokens of -log p(token | before) (transformers' causal-LM loss
  with `num_items_in_batch`), alignkit's `token_mean` aggregation.
- Rows are right-padded by its collator and, with `padding_free=True`, flattened into one row with position ids
  instead (sft_trainer.py:179-204), the same layout alignkit's `trainer.padding_free` uses.
"""

from __future__ import annotations

import resource
import tempfile
from typing import Any

from common import OfflineMixin, StepClock, alignkit_like_args, quiet
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from alignkit.models import load_tokenizer
from alignkit.models.spec import ModelSpec


class _CountingSFTTrainer(OfflineMixin, SFTTrainer):
    def training_step(self, model, inputs, num_items_in_batch=None):
        self.bench_tokens.append((inputs["labels"] != -100).sum() if "labels" in inputs else 0)
        return super().training_step(model, inputs, num_items_in_batch)


def run_trl_sft(
    model_dir: str, rows: list[dict], *, steps: int, batch_size: int, lr: float, padding_free: bool = False
) -> dict[str, Any]:
    """Train `steps` SFT steps on `rows` ({input_ids, completion_mask}) in order; first loss, sequences/s from
    the end of step 1 to the end of the last step, and the process's peak resident memory (MB)."""
    if steps < 2:
        raise ValueError(f"steps: need at least 2, step 1 is excluded as warm-up (got {steps})")
    dataset = Dataset.from_dict({k: [r[k] for r in rows] for k in ("input_ids", "completion_mask")})
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            **alignkit_like_args(lr=lr, steps=steps, seed=0),
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=1,
            completion_only_loss=True,
            max_length=None,
            padding_free=padding_free,
            train_sampling_strategy="sequential",
        )
        clock = StepClock()
        trainer = _CountingSFTTrainer(
            model=model_dir,
            args=args,
            train_dataset=dataset,
            processing_class=load_tokenizer(ModelSpec(path=model_dir)),
            callbacks=[clock],
        )
        trainer.bench_tokens = []
        quiet(trainer)
        trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    seconds = clock.ends[-1] - clock.ends[0]
    return {
        "first_loss": float(losses[0]),
        "per_s": batch_size * (steps - 1) / seconds,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
    }
