"""Peak memory and throughput of SFT, DPO and GRPO on a real-vocabulary model, rung by rung.

    python benchmarks/memory_ladder.py                          # qwen2-90m-vocab (vocabulary 151,936), CPU
    python benchmarks/memory_ladder.py --algorithms dpo --steps 6 --preset qwen25-05b-like --hardware gpu-1

Rungs, each adding to the one before: `plain` (the [tokens x vocabulary] logits, `trainer.chunked_logprobs:
false`), `chunked` (the LM head in chunks, completion positions only: alignkit/ops/lm_head.py), `+checkpointing`
(`hardware.activation_checkpointing`). Every run is its own process, so its peak memory (RSS on CPU, CUDA
memory on a GPU) is its own; all start from the same saved weights and see the same data, so their first losses
must agree, and the table shows them. Throughput is from the end of step 1 to the end of the last step.
Padding-free batches, shared prompts and TRL's trainers side by side are the ladder's next rungs (issue 13).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import run_worker, save_preset_model, train_alignkit

RUNGS = {
    "plain": {"trainer": {"chunked_logprobs": False}},
    "chunked": {},
    "+checkpointing": {"hardware": {"activation_checkpointing": True}},
}
UNITS = {"sft": "sequences", "dpo": "pairs", "grpo": "prompts"}


def config(args: argparse.Namespace, algorithm: str, rung: str, root: str) -> dict[str, Any]:
    data = {
        "sft": {"generator": "reviews", "args": {"n": args.batch * args.steps, "seed": 0}},
        "dpo": {
            "generator": "sentiment_pairs",
            "args": {"n": args.batch * args.steps, "min_words": 10, "max_words": 20},
        },
        "grpo": {"generator": "review_prompts", "args": {"n": args.batch * args.steps, "seed": 0}},
    }[algorithm]
    algo: dict[str, Any] = {"name": algorithm}
    if algorithm == "grpo":
        algo |= {"samples_per_prompt": 4, "max_new_tokens": 32}
    extra = RUNGS[rung]
    return {
        "name": f"ladder_{algorithm}",
        "algorithm": algo,
        "policy": {"path": args.model_dir},
        **({"reward": {"source": {"kind": "rule", "name": "review_sentiment"}}} if algorithm == "grpo" else {}),
        "data": {"train": data, "max_length": args.seq},
        "trainer": {
            "max_steps": args.steps,
            "prompts_per_step": args.batch,
            "micro_batch_size": args.batch,
            "log_every_n_steps": 1,
            "optimizer": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.0},
            "scheduler": {"name": "constant"},
            **extra.get("trainer", {}),
        },
        "hardware": {"preset": args.hardware, **extra.get("hardware", {})},
        "logging": {"root": root, "progress_bar": False},
        "checkpoint": {"export_hf": False},
    }


def worker(args: argparse.Namespace) -> dict[str, Any]:
    events, wall = train_alignkit(lambda root: config(args, args.algorithm, args.rung, root))
    losses = events.Scalars("train/loss")
    seconds = losses[-1].wall_time - losses[0].wall_time
    return {
        "first_loss": losses[0].value,
        "per_s": args.batch * (len(losses) - 1) / seconds,
        "peak_mb": max(e.value for e in events.Scalars("perf/peak_mem_mb")),
        "wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="qwen2-90m-vocab", help="model preset (registry/models)")
    p.add_argument("--hardware", default="cpu", help="hardware preset (registry/hardware)")
    p.add_argument("--algorithms", default="sft,dpo,grpo", help="comma-separated: sft, dpo, grpo")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=8, help="sequences, pairs or prompts per step (= micro batch)")
    p.add_argument("--seq", type=int, default=160, help="max_length of prompt + completion")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--algorithm", help=argparse.SUPPRESS)
    p.add_argument("--rung", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.model_dir, _, model = save_preset_model(args.preset, Path(tmp) / "model")
        params, vocab = sum(t.numel() for t in model.parameters()) / 1e6, model.config.vocab_size
        del model
        print(
            f"model {args.preset} ({params:.1f}M parameters, vocabulary {vocab:,}), {args.steps} steps x "
            f"{args.batch}, max_length {args.seq}, hardware {args.hardware}"
        )
        for algorithm in args.algorithms.split(","):
            for rung in RUNGS:
                cmd = [sys.executable, __file__, "--worker", "--algorithm", algorithm, "--rung", rung]
                cmd += ["--model-dir", args.model_dir, "--steps", str(args.steps), "--batch", str(args.batch)]
                cmd += ["--seq", str(args.seq), "--hardware", args.hardware]
                out = run_worker(cmd, f"{algorithm} {rung}")
                print(
                    f"  {algorithm:5s} {rung:15s} {out['per_s']:6.2f} {UNITS[algorithm]}/s"
                    f"  peak {out['peak_mb']:7.0f} MB  first loss {out['first_loss']:.6f}"
                    f"  (wall {out['wall_s']:.0f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
