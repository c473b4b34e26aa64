"""Wall time of the config-only commands (`validate`, `show`, `list`, `--help`): goal at most 1.5 s each.

    python benchmarks/cli_startup.py               # 7 runs of each command after one warm-up, medians
    python benchmarks/cli_startup.py --runs 15

Each command runs as a new process (`python -m alignkit ...`), as a user types it; the commands take turns
so that a slow spell of a shared machine spreads over all of them. tests/unit/test_startup.py guards the
cause (no torch, Lightning or transformers on these paths); this prints what a user waits.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [
    ["--help"],
    ["list"],
    ["validate", "experiments/dpo_tiny.yaml"],
    ["show", "experiments/dpo_tiny.yaml"],
    ["validate", "experiments/compare_sentiment.yaml"],
    ["show", "experiments/compare_sentiment.yaml"],
]
GOAL_S = 1.5


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "alignkit", *argv], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args()
    for argv in COMMANDS:  # warm-up: byte-compiled files, the OS file cache
        wall(argv)
    times: dict[str, list[float]] = {" ".join(a): [] for a in COMMANDS}
    for _ in range(args.runs):
        for argv in COMMANDS:
            times[" ".join(argv)].append(wall(argv))
    print(f"alignkit config-only commands, wall seconds over {args.runs} runs (goal <= {GOAL_S} s):")
    for name, values in times.items():
        median = statistics.median(values)
        verdict = "ok" if median <= GOAL_S else "OVER"
        print(f"  {name:45s} median {median:.2f}  min {min(values):.2f}  max {max(values):.2f}  {verdict}")


if __name__ == "__main__":
    main()
