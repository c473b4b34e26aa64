"""Time the bandit studies: the released linear study (3 methods x 10 seeds) and the n x m/n sweep.

    python benchmarks/bandit_speed.py            # bandit_linear.yaml, then bandit_linear_sweep.yaml
    python benchmarks/bandit_speed.py --no-sweep
    python benchmarks/bandit_speed.py --sweep-budgets released --with-logs

Goals (issue 3): the whole linear study in under 5 s on 2 cores, the sweep in under a minute. The released
code takes about 24 s per seed on one core for the linear setting, i.e. about 240 s for 10 seeds.
Timed: the study itself (environment, data, reward models, every method's Lightning fit, evaluation),
without TensorBoard files and without the one-off import of torch/Lightning, which `--with-logs` adds back.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from alignkit.bandits.report import markdown_table
from alignkit.bandits.study import run_study
from alignkit.config.load import load_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def timed(name: str, budgets: list[str] | None, with_logs: bool) -> float:
    cfg = load_config(EXPERIMENTS / f"{name}.yaml").algorithm
    if budgets is not None:
        cfg = cfg.model_copy(update={"budgets": budgets})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        log_dir = Path(tmp) if with_logs else None
        fits = run_study(
            cfg.env,
            cfg.seeds,
            methods=cfg.methods,
            n=cfg.n,
            m_ratio=cfg.m_ratio,
            budgets=cfg.budgets,
            beta=cfg.beta,
            log_every=cfg.log_every,
            log_dir=log_dir,
        )
        rows = [fit.row() for fit in fits]
        seconds = time.perf_counter() - start
    fits = len(rows)
    steps = sum(r["steps"] for r in rows)
    print(
        f"{name} budgets={[str(b) for b in cfg.budgets]}: {seconds:.2f} s "
        f"({fits} fits, {steps} optimiser iterations, {len(cfg.seeds)} seeds each)"
    )
    return seconds, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--with-logs", action="store_true", help="also write the TensorBoard runs")
    p.add_argument("--sweep-budgets", nargs="+", default=["released", "converged"], help="sweep budgets to time")
    args = p.parse_args()
    timed("bandit_linear", None, args.with_logs)  # warm-up: first Trainer construction, lazy imports
    seconds, rows = timed("bandit_linear", None, args.with_logs)
    print(markdown_table(rows))
    print(f"released linear study: {seconds:.2f} s (goal < 5 s)\n")
    if not args.no_sweep:
        for budget in args.sweep_budgets:
            seconds, _ = timed("bandit_linear_sweep", [budget], args.with_logs)
            print(f"sweep at the {budget} budget: {seconds:.2f} s (goal < 60 s)\n")


if __name__ == "__main__":
    main()
