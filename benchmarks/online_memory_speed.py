"""Seconds per iteration and peak memory of PPO, GRPO, ReMax and REINFORCE on one model, and alignkit vs TRL's GRPO.

    python benchmarks/online_memory_speed.py     # small-llama (~18M), CPU, 8 iterations x 8 prompts x 4 samples,
                                                 # 32 new tokens, 2 repeats, TRL's GRPOTrainer if installed
    python benchmarks/online_memory_speed.py --preset tiny-llama --steps 3 --repeats 1 --no-trl
    python benchmarks/online_memory_speed.py --hardware gpu-1 --steps 20

One worker process per configuration, so that peak memory is its own. Every algorithm starts from the same
saved weights and runs the same iteration: P prompts (`--prompts`) of the same reverse_words data, G sampled
responses each (`--group`, for all four), at most `--max-new-tokens` tokens at temperature 1, scored by the
same rule reward (length_target, 8 characters), then one AdamW step (lr 1e-5): `update_epochs: 1,
num_minibatches: 1`, so each algorithm does the same work per iteration except what makes it what it is.
PPO also scores the samples with its critic (a copy of the policy's backbone plus a value head) and the
policy before the update, and trains the critic; ReMax also generates and scores one greedy response per
prompt, its baseline. The P*G samples come from one generate call; scoring and training forwards take P sequences at a
time (micro_batch_size = P).

Seconds per iteration run from the end of iteration 1 (warm-up) to the end of the last one, from the
wall times of the `train/reward/mean` TensorBoard events; completions per second = P*G / that (sampled
completions only, also for ReMax). Peak memory is the largest `perf/peak_mem_mb`: the peak resident set
size of the process on CPU (imports, data and both frozen and trained models included), peak allocated
CUDA memory on GPU. The mean response length (tokens, EOS included) over the timed iterations is printed
because generation time follows it. Each worker runs `--repeats` times, in alternating order; the fastest
run is kept (noise on a shared machine only ever slows a run down).

GRPO also runs as two variants: `GRPO hf` samples with transformers' `generate` (rollout.engine: hf) instead of
the built-in engine, and `GRPO shared` adds trainer.shared_prompts (each group's prompt computed once when the
reference and the policy score the samples).

When `trl` is installed (pip install -e .[bench]), TRL's GRPOTrainer runs the same model, prompts (in the
order alignkit visits them), reward, group size, lengths, batch layout and optimizer (benchmarks/trl_grpo.py),
and each GRPO worker / TRL is printed for completions per second (goal: >= 1.5 with the built-in engine),
peak memory and the first iteration's loss (the same computation: 0 up to rounding).

CPU numbers are not GPU numbers: on CPU, peak RSS includes every library the process imported (hundreds of
MB before any model), and speed depends on how busy the machine's cores are. The ReMax paper's "about half
of PPO's GPU memory" is for 7B models on GPUs, where weights, gradients and AdamW states dominate; here look
at the critic's share.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import alternating, loader_order, run_worker, save_preset_model, train_alignkit

ALGORITHMS = ("ppo", "grpo", "remax", "reinforce")
# GRPO variants beside the default (the built-in rollout engine): `generate` instead, and shared prompts on top
VARIANTS = {
    "grpo_hf": ("grpo", {"rollout": {"engine": "hf"}}),
    "grpo_shared": ("grpo", {"trainer": {"shared_prompts": True}}),
}
GRPO_KL = 0.04  # alignkit's GRPO default kl_coef, passed to TRL as beta
LR, SEED, TARGET_CHARS, MAX_LENGTH = 1e-5, 0, 8, 64


def alignkit_config(args: argparse.Namespace, algorithm: str, root: str) -> dict[str, Any]:
    algorithm, extra = VARIANTS.get(algorithm, (algorithm, {}))
    cfg = _config(args, algorithm, root)
    for section, values in extra.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def _config(args: argparse.Namespace, algorithm: str, root: str) -> dict[str, Any]:
    return {
        "name": f"bench_{algorithm}",
        "algorithm": {
            "name": algorithm,
            "samples_per_prompt": args.group,
            "max_new_tokens": args.max_new_tokens,
            "temperature": 1.0,
            "top_p": 1.0,
            "update_epochs": 1,
            "num_minibatches": 1,
            **({"critic_init": "policy"} if algorithm == "ppo" else {}),  # a rule reward has no model to copy
        },
        "policy": {"path": args.model_dir},
        "reward": {"source": {"kind": "rule", "name": "length_target", "args": {"target": TARGET_CHARS}}},
        "data": {
            "train": {"generator": "reverse_words", "args": {"n": args.prompts * args.steps, "seed": SEED}},
            "max_length": MAX_LENGTH,
        },
        "trainer": {
            "max_steps": args.steps,
            "prompts_per_step": args.prompts,
            "micro_batch_size": args.prompts,
            "log_every_n_steps": 1,
            "seed": SEED,
            "optimizer": {"name": "adamw", "lr": LR, "weight_decay": 0.0},
            "scheduler": {"name": "constant"},
        },
        "hardware": {"preset": args.hardware},
        "logging": {"root": root, "progress_bar": False},
        "checkpoint": {"export_hf": False},
    }


def worker_alignkit(args: argparse.Namespace) -> dict[str, Any]:
    events, wall = train_alignkit(lambda root: alignkit_config(args, args.algorithm, root))
    rewards = events.Scalars("train/reward/mean")  # one event per iteration, written as it ends
    lengths = [e.value for e in events.Scalars("train/response/length")]
    if len(rewards) != args.steps or len(lengths) != args.steps:
        raise RuntimeError(f"{args.algorithm}: {len(rewards)} iterations logged, expected {args.steps}")
    s_per_iter = (rewards[-1].wall_time - rewards[0].wall_time) / (len(rewards) - 1)
    return {
        "first_loss": events.Scalars("train/loss")[0].value,
        "s_per_iter": s_per_iter,
        "peak_mem_mb": max(e.value for e in events.Scalars("perf/peak_mem_mb")),
        "mean_length": statistics.fmean(lengths[1:]),
        "wall_s": wall,
    }


def prompt_texts(args: argparse.Namespace) -> list[str]:
    """alignkit's prompt strings, in the order its loader visits them in epoch 0 on one process."""
    from alignkit.config.load import config_from_dict
    from alignkit.data import build_datasets
    from alignkit.models import load_tokenizer

    cfg = config_from_dict(alignkit_config(args, "grpo", "unused"))
    train, _ = build_datasets(cfg.data, "prompt", load_tokenizer(cfg.policy), seed=SEED)
    return [train[i]["prompt"] for i in loader_order(len(train), SEED)]


def worker_trl(args: argparse.Namespace) -> dict[str, Any]:
    from trl_grpo import run_trl_grpo

    from alignkit.config.presets import load_preset

    hw = load_preset("hardware", args.hardware)
    if hw.get("precision", "32-true") not in ("32-true", "bf16-mixed") or hw.get("devices", 1) != 1:
        raise ValueError(f"--hardware {args.hardware}: the TRL comparison runs one device at 32-true or bf16-mixed")
    start = time.perf_counter()
    out = run_trl_grpo(
        args.model_dir,
        prompt_texts(args),
        steps=args.steps,
        prompts_per_step=args.prompts,
        group=args.group,
        max_new_tokens=args.max_new_tokens,
        beta=GRPO_KL,
        lr=LR,
        target=TARGET_CHARS,
        seed=SEED,
        use_cpu=hw.get("accelerator") == "cpu",
        bf16=hw.get("precision") == "bf16-mixed",
    )
    return {"s_per_iter": out["s_per_step"], **out, "wall_s": time.perf_counter() - start}


def spawn(args: argparse.Namespace, worker: str) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        *("--worker", worker, "--model-dir", args.model_dir, "--hardware", args.hardware),
        *("--steps", str(args.steps), "--prompts", str(args.prompts), "--group", str(args.group)),
        *("--max-new-tokens", str(args.max_new_tokens)),
    ]
    return run_worker(cmd, worker)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small-llama", help="model preset (registry/models)")
    p.add_argument("--hardware", default="cpu", help="hardware preset for alignkit (registry/hardware)")
    p.add_argument("--steps", type=int, default=8, help="iterations (one optimizer step each)")
    p.add_argument("--prompts", type=int, default=8, help="P: prompts per iteration (= micro batch)")
    p.add_argument("--group", type=int, default=4, help="G: sampled responses per prompt, every algorithm")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="runs of each worker, in alternating order; best kept")
    p.add_argument("--no-trl", action="store_true", help="skip TRL even if it is installed")
    p.add_argument("--only", help="comma-separated workers to run, e.g. grpo,trl (default: all)")
    p.add_argument("--worker", choices=[*ALGORITHMS, *VARIANTS, "trl"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.steps < 2:
        p.error("--steps: need at least 2 (iteration 1 is warm-up)")
    if args.group < 2:
        p.error("--group: need at least 2 (GRPO normalises rewards within a group)")

    if args.worker:
        args.algorithm = args.worker
        result = worker_trl(args) if args.worker == "trl" else worker_alignkit(args)
        print(json.dumps(result))
        return

    import importlib.util

    from transformers.utils import logging as hf_logging

    from alignkit.models import ModelSpec, build_scalar_model, count_parameters

    use_trl = not args.no_trl and importlib.util.find_spec("trl") is not None
    # the critic below is built only to be counted: no load report (its new head) or progress bars
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        args.model_dir, tokenizer, policy = save_preset_model(args.preset, Path(tmp) / "model")
        policy_params = count_parameters(policy)
        critic_params = count_parameters(build_scalar_model(ModelSpec(path=args.model_dir), tokenizer))
        del policy
        n = args.prompts * args.group
        print(
            f"model {args.preset} ({policy_params / 1e6:.1f}M parameters), hardware {args.hardware}, "
            f"{args.steps} iterations x {args.prompts} prompts x {args.group} samples = {n} completions per "
            f"iteration, max {args.max_new_tokens} new tokens, 1 optimizer step per iteration"
        )
        workers = [*ALGORITHMS, *VARIANTS, *(["trl"] if use_trl else [])]
        if args.only:
            wanted = args.only.split(",")
            unknown = set(wanted) - set(workers)
            if unknown:
                p.error(f"--only: unknown or unavailable workers {sorted(unknown)}; choose from {workers}")
            workers = [w for w in workers if w in wanted]
        runs: dict[str, list[dict[str, Any]]] = {}
        for worker in alternating(workers, args.repeats):
            runs.setdefault(worker, []).append(spawn(args, worker))

    trained = {a: policy_params for a in workers} | {"ppo": policy_params + critic_params}
    names = {
        "ppo": "PPO",
        "grpo": "GRPO",
        "remax": "ReMax*",
        "reinforce": "REINFORCE",
        "grpo_hf": "GRPO hf",
        "grpo_shared": "GRPO shared",
        "trl": "TRL GRPO",
    }
    print(
        f"  {'':11s} {'s/iter':>7s} {'compl/s':>8s} {'peak MB':>8s} {'trained':>8s} {'resp len':>8s}  "
        "(s/iter of each repeat)"
    )
    best = {}
    for worker, tries in runs.items():
        best[worker] = r = min(tries, key=lambda t: t["s_per_iter"])
        spread = ", ".join(f"{t['s_per_iter']:.3f}" for t in tries)
        print(
            f"  {names[worker]:11s} {r['s_per_iter']:7.3f} {n / r['s_per_iter']:8.1f} {r['peak_mem_mb']:8.0f} "
            f"{trained[worker] / 1e6:7.1f}M {r['mean_length']:8.1f}  ({spread})"
        )
    if "remax" in best:
        print(f"  * ReMax also generates {args.prompts} greedy responses per iteration (its baseline), not counted")

    if {"ppo", "grpo", "remax"} <= set(best):
        ppo = best["ppo"]["peak_mem_mb"]
        extra = {a: ppo - best[a]["peak_mem_mb"] for a in ("grpo", "remax")}
        print(
            f"PPO's critic costs {extra['grpo']:.0f} / {extra['remax']:.0f} MB more peak memory than GRPO / ReMax "
            f"here ({100 * extra['grpo'] / ppo:.0f}% / {100 * extra['remax'] / ppo:.0f}% of PPO's peak); its "
            f"weights, gradients and AdamW state alone are {16 * critic_params / 2**20:.0f} MB at fp32"
        )
    if "trl" not in best or not {"grpo", *VARIANTS} & set(best):
        if not args.no_trl and not use_trl:
            print("(trl is not installed: pip install -e .[bench] to compare with TRL's GRPOTrainer)")
        return
    t = best["trl"]
    for worker in ("grpo", *VARIANTS):
        if worker not in best:
            continue
        a = best[worker]
        speed = t["s_per_iter"] / a["s_per_iter"]
        tokens = speed * a["mean_length"] / t["mean_length"]
        print(
            f"alignkit {names[worker]} / TRL GRPO: {speed:.2f}x completions/s, "
            f"{a['peak_mem_mb'] / t['peak_mem_mb']:.2f}x peak memory, {tokens:.2f}x generated tokens/s; "
            f"first-iteration loss {a['first_loss']:.2e} vs {t['first_loss']:.2e}; "
            f"mean completion length {a['mean_length']:.1f} vs {t['mean_length']:.1f} tokens"
        )
    print(
        "  (GRPO's first loss is 0 up to rounding for both: ratio 1, group-normalised advantages of mean 0, KL 0; "
        "a run whose completions are shorter is faster for that reason alone)"
    )


if __name__ == "__main__":
    main()
