"""SFT throughput and memory on a model built from a preset: prints samples/s, tokens/s, peak memory.

    python benchmarks/sft_throughput.py                          # small-llama (~18M), CPU, 20 steps
    python benchmarks/sft_throughput.py --preset tiny-llama --hardware gpu-1 --steps 50

Numbers come from the run's own perf/* metrics (PerfMonitor), averaged over the steps after warm-up,
so they measure the same thing users see in TensorBoard.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alignkit.config.load import config_from_dict
from alignkit.models import build_causal_lm, count_parameters, load_tokenizer
from alignkit.run import run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small-llama", help="model preset (registry/models)")
    p.add_argument("--hardware", default="cpu", help="hardware preset (registry/hardware)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8, help="sequences per step (= micro batch)")
    p.add_argument("--seq", type=int, default=128, help="max_length of prompt + completion")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as root:
        cfg = config_from_dict(
            {
                "name": "bench_sft",
                "algorithm": {"name": "sft"},
                "policy": {"preset": args.preset},
                "data": {
                    "train": {"generator": "reverse_words", "args": {"n": args.batch * (args.steps + 1)}},
                    "max_length": args.seq,
                },
                "trainer": {
                    "max_steps": args.steps,
                    "prompts_per_step": args.batch,
                    "micro_batch_size": args.batch,
                    "log_every_n_steps": 1,
                },
                "hardware": {"preset": args.hardware},
                "logging": {"root": root, "progress_bar": False},
                "checkpoint": {"export_hf": False},
            }
        )
        params = count_parameters(build_causal_lm(cfg.policy, load_tokenizer(cfg.policy)))
        start = time.perf_counter()
        result = run(cfg)
        wall = time.perf_counter() - start
        events = EventAccumulator(str(next(Path(result.run_dir).glob("events.*")))).Reload()

        def steady(tag: str) -> float:
            values = [e.value for e in events.Scalars(tag)]
            return statistics.mean(values[2:] or values)  # skip warm-up steps

        print(
            f"model {args.preset}: {params / 1e6:.1f}M parameters; hardware {args.hardware}; "
            f"{args.steps} steps x {args.batch} sequences, max_length {args.seq}"
        )
        print(f"  samples/s   {steady('perf/samples_per_s'):10.1f}")
        print(f"  tokens/s    {steady('perf/tokens_per_s'):10.1f}")
        print(f"  peak memory {max(e.value for e in events.Scalars('perf/peak_mem_mb')):10.1f} MB")
        print(f"  wall time   {wall:10.1f} s (including model build and data)")


if __name__ == "__main__":
    main()
