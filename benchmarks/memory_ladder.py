"""Peak memory and throughput of SFT, DPO and GRPO on a real-vocabulary model, rung by rung, beside TRL.

    python benchmarks/memory_ladder.py                          # qwen2-90m-vocab (vocabulary 151,936), CPU
    python benchmarks/memory_ladder.py --algorithms dpo --steps 6 --preset qwen25-05b-like --hardware gpu-1

Rungs, each adding to the one before: `plain` (the [tokens x vocabulary] logits, `trainer.chunked_logprobs:
false`), `chunked` (the LM head in chunks, completion positions only: alignkit/ops/lm_head.py), `+padding-free`
(each micro-batch one packed row: `trainer.padding_free`), `+shared prompts` (a pair's or group's prompt run once:
`trainer.shared_prompts`, alignkit/ops/layout.py), `+checkpointing` (`hardware.activation_checkpointing`); for DPO
and GRPO `LoRA` (the chunked rung with `policy.lora`, rank 16 on every linear layer) and `LoRA +checkpointing`;
then TRL's SFTTrainer, DPOTrainer and GRPOTrainer on the same weights, tokens (prompts), order, batch, reward and
optimizer (the `bench` extra), padded and, for SFT, with its own `padding_free`, for DPO and GRPO also with the
same LoRA adapters (PEFT). Every run is its own process, so its peak memory (RSS on CPU, CUDA memory on a GPU) is
its own; all start from the same saved weights and see the same data, so their first losses must agree, and the
table shows them. Throughput is from the end of step 1 to the end of the last step.

`useful GFLOP/s` counts the work every row must do alike (`useful_flops`: 2 FLOPs per parameter and token in a
forward, 6 in a trained forward and backward; the body on every real token of the unshared sequences, the head
only on the tokens a loss reads); `of matmul` divides it by this machine's float32 matmul throughput, measured in
the same run, so the distance to the hardware's limit shows. GRPO's time is mostly generation, which this count
leaves out, so its rows show none.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import EXACT_MEMORY, loader_order, run_worker, save_preset_model, train_alignkit

# Each rung's settings, cumulative: a rung keeps every saving of the rungs above it.
RUNGS: dict[str, dict[str, Any]] = {
    "plain": {"trainer": {"chunked_logprobs": False, "padding_free": False}},
    "chunked": {"trainer": {"padding_free": False}},
    "+padding-free": {"trainer": {"padding_free": True}},
    "+shared prompts": {"trainer": {"padding_free": True, "shared_prompts": True}},
    "+checkpointing": {
        "trainer": {"padding_free": True, "shared_prompts": True},
        "hardware": {"activation_checkpointing": True},
    },
}
# LoRA through PEFT (rank 16 on every linear layer of the body) over the `chunked` rung's settings: adapters train,
# the reference is the policy with them off; beside TRL with the same PEFT adapters.
LORA = {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
LORA_RUNGS = {
    "LoRA": {"trainer": {"padding_free": False}, "policy": {"lora": LORA}},
    "LoRA +checkpointing": {
        "trainer": {"padding_free": False},
        "policy": {"lora": LORA},
        "hardware": {"activation_checkpointing": True},
    },
}
TRL_RUNGS = {"sft": ["TRL", "TRL padding_free"], "dpo": ["TRL", "TRL LoRA"], "grpo": ["TRL", "TRL LoRA"]}
EXTRA_RUNGS = {"sft": [], "dpo": [*LORA_RUNGS], "grpo": [*LORA_RUNGS]}
GRPO_KL, TARGET_CHARS = 0.04, 64  # alignkit's GRPO default kl_coef (TRL's beta); the length_target reward's target
LR = 1e-4
UNITS = {"sft": "sequences", "dpo": "pairs", "grpo": "prompts"}


def long_prompt_pairs(args: argparse.Namespace, path: Path) -> str:
    """The DPO rows with `--prompt-words` words of context before each prompt (different for every row), as real
    preference data has (a conversation, a document, instructions): a JSON-lines file alignkit and TRL both read."""
    import random

    from alignkit.data.generators import WORDS, sentiment_pairs

    rng = random.Random(0)
    with path.open("w") as f:
        for row in sentiment_pairs(n=args.batch * args.steps, min_words=10, max_words=20):
            context = " ".join(rng.choices(WORDS, k=args.prompt_words))
            f.write(json.dumps({**row, "prompt": f"Context: {context}\n{row['prompt']}"}) + "\n")
    return str(path)


def config(args: argparse.Namespace, algorithm: str, rung: str, root: str) -> dict[str, Any]:
    pairs = {"generator": "sentiment_pairs", "args": {"n": args.batch * args.steps, "min_words": 10, "max_words": 20}}
    data = {
        "sft": {"generator": "reviews", "args": {"n": args.batch * args.steps, "seed": 0}},
        "dpo": {"path": args.pairs_file} if args.pairs_file else pairs,
        "grpo": {"generator": "review_prompts", "args": {"n": args.batch * args.steps, "seed": 0}},
    }[algorithm]
    algo: dict[str, Any] = {"name": algorithm}
    if algorithm == "grpo":
        algo |= {"samples_per_prompt": 4, "max_new_tokens": 32, "kl_coef": GRPO_KL, "update_epochs": 1}
    extra = {**RUNGS, **LORA_RUNGS}[rung]
    return {
        "name": f"ladder_{algorithm}",
        "algorithm": algo,
        "policy": {"path": args.model_dir, **extra.get("policy", {})},
        # a rule TRL's GRPOTrainer computes the same way (benchmarks/trl_grpo.py)
        **(
            {"reward": {"source": {"kind": "rule", "name": "length_target", "args": {"target": TARGET_CHARS}}}}
            if algorithm == "grpo"
            else {}
        ),
        "data": {"train": data, "max_length": args.seq},
        "trainer": {
            "max_steps": args.steps,
            "prompts_per_step": args.batch,
            "micro_batch_size": args.batch,
            "log_every_n_steps": 1,
            "optimizer": {"name": "adamw", "lr": LR, "weight_decay": 0.0},
            "scheduler": {"name": "constant"},
            **extra.get("trainer", {}),
        },
        "hardware": {"preset": args.hardware, **extra.get("hardware", {})},
        "logging": {"root": root, "progress_bar": False},
        "checkpoint": {"export_hf": False},
    }


def worker(args: argparse.Namespace) -> dict[str, Any]:
    if args.rung.startswith("TRL"):
        return worker_trl(args)
    events, wall = train_alignkit(lambda root: config(args, args.algorithm, args.rung, root))
    losses = events.Scalars("train/loss")
    seconds = losses[-1].wall_time - losses[0].wall_time
    return {
        "first_loss": losses[0].value,
        "per_s": args.batch * (len(losses) - 1) / seconds,
        "peak_mb": max(e.value for e in events.Scalars("perf/peak_mem_mb")),
        "wall_s": wall,
    }


def tokenized_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows alignkit trains on, tokenized by alignkit, in the order its loader visits them."""
    from alignkit.config.load import config_from_dict
    from alignkit.data import build_datasets
    from alignkit.models import load_tokenizer

    cfg = config_from_dict(config(args, args.algorithm, "chunked", "unused"))
    kind = {"sft": "completion", "dpo": "preference", "grpo": "prompt"}[args.algorithm]
    train, _ = build_datasets(cfg.data, kind, load_tokenizer(cfg.policy), seed=cfg.trainer.seed)
    return [train[i] for i in loader_order(len(train), cfg.trainer.seed)]


def worker_trl(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    rows = tokenized_rows(args)
    if args.algorithm == "grpo":
        from trl_grpo import run_trl_grpo

        trl = run_trl_grpo(
            args.model_dir,
            [row["prompt"] for row in rows],
            steps=args.steps,
            prompts_per_step=args.batch,
            group=4,
            max_new_tokens=32,
            beta=GRPO_KL,
            lr=LR,
            target=TARGET_CHARS,
            lora=LORA if "LoRA" in args.rung else None,
        )
        out = {"first_loss": trl["first_loss"], "per_s": args.batch / trl["s_per_step"], "peak_mb": trl["peak_mem_mb"]}
    elif args.algorithm == "sft":
        from trl_sft import run_trl_sft

        out = run_trl_sft(
            args.model_dir, rows, steps=args.steps, batch_size=args.batch, lr=LR, padding_free="padding" in args.rung
        )
    else:
        from trl_dpo import run_trl_dpo

        pairs = []
        for row in rows:
            cut = row["chosen_completion_mask"].index(1)
            assert row["rejected_input_ids"][:cut] == row["chosen_input_ids"][:cut], "pairs must share the prompt"
            pairs.append(
                {
                    "prompt_input_ids": row["chosen_input_ids"][:cut],
                    "chosen_input_ids": row["chosen_input_ids"][cut:],
                    "rejected_input_ids": row["rejected_input_ids"][cut:],
                }
            )
        lora = LORA if "LoRA" in args.rung else None
        trl = run_trl_dpo(args.model_dir, pairs, steps=args.steps, batch_size=args.batch, beta=0.1, lr=LR, lora=lora)
        out = {"first_loss": trl["first_loss"], "per_s": trl["samples_per_s"], "peak_mb": trl["peak_rss_mb"]}
    return {**out, "wall_s": time.perf_counter() - start}


def useful_flops(args: argparse.Namespace, algorithm: str, body: int, head: int) -> float:
    """FLOPs of one unit (sequence, pair) that every row has to do: 2 per multiplying parameter and token in a
    forward, 4 more in a trained one's backward; the body's parameters on every real token of the unshared
    sequences, the head's only where a loss reads it (the completion tokens). The plain logits path and TRL
    also run the head on every prompt token: work this count leaves out."""
    args.algorithm = algorithm
    rows = tokenized_rows(args)
    prefixes = ("chosen_", "rejected_") if algorithm == "dpo" else ("",)
    tokens = sum(len(r[f"{p}input_ids"]) for r in rows for p in prefixes) / len(rows)
    scored = sum(sum(r[f"{p}completion_mask"]) for r in rows for p in prefixes) / len(rows)
    forward = 2 * (body * tokens + head * scored)
    return 3 * forward + (forward if algorithm == "dpo" else 0)  # DPO's reference: one more forward


def matmul_flops(seconds: float = 2.0) -> float:
    """This machine's float32 matmul throughput (FLOP/s): 2048 x 2048 products, for about `seconds`."""
    import torch

    cuda = torch.cuda.is_available()
    a = torch.randn(2048, 2048, device="cuda" if cuda else "cpu")
    a @ a
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        n += 1
        if cuda:
            torch.cuda.synchronize()
    return n * 2 * 2048**3 / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="qwen2-90m-vocab", help="model preset (registry/models)")
    p.add_argument("--hardware", default="cpu", help="hardware preset (registry/hardware)")
    p.add_argument("--algorithms", default="sft,dpo,grpo", help="comma-separated: sft, dpo, grpo")
    p.add_argument(
        "--rungs", default=None, help="comma-separated subset of the rungs to run (default: all), e.g. 'chunked,TRL'"
    )
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=8, help="sequences, pairs or prompts per step (= micro batch)")
    p.add_argument("--seq", type=int, default=160, help="max_length of prompt + completion")
    p.add_argument(
        "--prompt-words",
        type=int,
        default=0,
        help="DPO: this many words of context before each prompt (long shared prompts; raise --seq to fit them)",
    )
    p.add_argument(
        "--exact-memory",
        action="store_true",
        help="CPU: peak RSS of live tensors, not of memory glibc keeps after freeing it (slower: read speeds from "
        "runs without this)",
    )
    p.add_argument("--pairs-file", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--algorithm", help=argparse.SUPPRESS)
    p.add_argument("--rung", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    import datasets

    datasets.disable_progress_bars()  # the FLOP count tokenizes the rows here
    peak = matmul_flops()
    with tempfile.TemporaryDirectory() as tmp:
        args.model_dir, _, model = save_preset_model(args.preset, Path(tmp) / "model")
        if args.prompt_words:
            args.pairs_file = long_prompt_pairs(args, Path(tmp) / "pairs.jsonl")
        params, vocab = sum(t.numel() for t in model.parameters()), model.config.vocab_size
        tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
        head = model.get_output_embeddings().weight.numel()
        body = params - head - (0 if tied else model.get_input_embeddings().weight.numel())  # no embedding lookup
        del model
        print(
            f"model {args.preset} ({params / 1e6:.1f}M parameters, vocabulary {vocab:,}), {args.steps} steps x "
            f"{args.batch}, max_length {args.seq}, hardware {args.hardware}; float32 matmul {peak / 1e9:.0f} GFLOP/s"
            + (f"; DPO prompts with {args.prompt_words} words of context" if args.prompt_words else "")
            + ("; exact memory (MALLOC_MMAP_THRESHOLD_=65536)" if args.exact_memory else "")
        )
        for algorithm in args.algorithms.split(","):
            flops = useful_flops(args, algorithm, body, head) if algorithm != "grpo" else None
            rungs = [*RUNGS, *EXTRA_RUNGS[algorithm], *TRL_RUNGS[algorithm]]
            for rung in [r for r in rungs if args.rungs is None or r in args.rungs.split(",")]:
                cmd = [sys.executable, __file__, "--worker", "--algorithm", algorithm, "--rung", rung]
                cmd += ["--model-dir", args.model_dir, "--steps", str(args.steps), "--batch", str(args.batch)]
                cmd += ["--seq", str(args.seq), "--hardware", args.hardware]
                cmd += ["--pairs-file", args.pairs_file] if args.pairs_file else []
                out = run_worker(cmd, f"{algorithm} {rung}", env=EXACT_MEMORY if args.exact_memory else None)
                share = ""
                if flops and "LoRA" not in rung:  # (a LoRA backward skips the frozen weights' gradients)
                    rate = out["per_s"] * flops
                    share = f"  useful {rate / 1e9:6.1f} GFLOP/s = {rate / peak:5.1%} of matmul"
                print(
                    f"  {algorithm:5s} {rung:17s} {out['per_s']:6.2f} {UNITS[algorithm]}/s"
                    f"  peak {out['peak_mb']:7.0f} MB  first loss {out['first_loss']:.6f}{share}"
                    f"  (wall {out['wall_s']:.0f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
