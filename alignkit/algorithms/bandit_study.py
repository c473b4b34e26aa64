"""The bandit studies of Li, Xu, Yu 2023 (DPO vs RMB-PO vs RMB-PO+) declared in YAML: settings x seeds.

Every (budget, n, m) setting trains each method's registered BanditPolicy (alignkit.bandits.methods) on
all seeds at once; the study writes one TensorBoard run per method and setting, a CSV and Markdown table
of mean +- standard error over seeds, and the figures (alignkit.bandits.report).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from alignkit.algorithms.base import AlgorithmConfig
from alignkit.bandits.linear import LinearBanditSpec
from alignkit.bandits.neural import NeuralBanditSpec
from alignkit.bandits.optim import AdaGradNormSpec, AdamSpec, AdamWSpec, LBFGSSpec

Budget = Literal["released", "converged"] | AdaGradNormSpec | AdamSpec | AdamWSpec | LBFGSSpec


class BanditStudyConfig(AlgorithmConfig):
    name: Literal["bandit_study"] = "bandit_study"
    env: Annotated[LinearBanditSpec | NeuralBanditSpec, Field(discriminator="kind")] = Field(
        description="The bandit: {kind: linear, ...} or {kind: neural, ...} (sizes, features, evaluation)."
    )
    methods: list[Literal["dpo", "rmb_po", "rmb_po_plus"]] = Field(
        ["dpo", "rmb_po", "rmb_po_plus"], min_length=1, description="Methods to compare."
    )
    n: list[Annotated[int, Field(ge=2)]] = Field(
        [20], min_length=1, description="Preference-data sizes (pairs); each one setting."
    )
    m_ratio: list[Annotated[float, Field(ge=0)]] = Field(
        [0.5], min_length=1, description="RMB-PO+'s preference-free states per pair, m/n (0 = RMB-PO itself)."
    )
    seeds: list[int] = Field(
        list(range(2021, 2031)), min_length=1, description="Seeds, run together as one batch (released: 2021-2030)."
    )
    beta: float = Field(0.01, gt=0, description="KL coefficient (released script: 0.01).")
    budgets: list[Budget] = Field(
        ["released"],
        min_length=1,
        description="Optimisation budgets: 'released' (the authors' optimisers and iteration counts), 'converged' "
        "(L-BFGS to a tiny gradient, continued in beta), or an optimiser such as {name: adagrad_norm, iterations: "
        "20000} or {name: adam, lr: 0.01, epochs: 5000, batch_size: null}.",
    )
    log_every: int = Field(
        25, ge=1, description="Evaluate on the true reward and log the curves every N optimiser iterations."
    )


def budget_label(budget: Budget) -> str:
    if isinstance(budget, str):
        return budget
    size = getattr(budget, "iterations", None) or getattr(budget, "epochs", None) or budget.max_iterations  # type: ignore[union-attr]
    return f"{budget.name}-{size}"


def study_rows(cfg: BanditStudyConfig, log_dir: Path | None = None) -> list[dict[str, Any]]:
    """Train every method at every (budget, n, m) on all seeds; one result row per setting and method."""
    from alignkit.bandits.data import preference_data
    from alignkit.bandits.optim import torch_threads
    from alignkit.bandits.reward_fit import fit_reward_model
    from alignkit.bandits.study import train_method

    rows: list[dict[str, Any]] = []
    with torch_threads(1):  # tiny tensors: threads only add contention (see torch_threads)
        env = cfg.env.build(cfg.seeds)
        for budget in cfg.budgets:
            label = budget_label(budget)
            for n in cfg.n:
                ms = sorted({round(r * n) for r in cfg.m_ratio if r > 0}) if "rmb_po_plus" in cfg.methods else []
                # D_pref does not depend on m (its own random stream): one reward model per n serves all m
                data = {m: preference_data(env, n, m) for m in [0, *ms]}
                fitted = fit_reward_model(env, data[0]) if set(cfg.methods) - {"dpo"} else None
                jobs = [(meth, 0) for meth in cfg.methods if meth != "rmb_po_plus"]
                jobs += [("rmb_po_plus", m) for m in ms]
                for method, m in jobs:
                    start = time.perf_counter()
                    name = method if method != "rmb_po_plus" else f"{method}_m{m}"
                    where = log_dir / label / f"n{n}" if log_dir else None
                    out = train_method(env, method, data[m], budget, cfg.beta, cfg.log_every, fitted, where, name)
                    rows.append(_row(label, method, n, m, cfg.seeds, out, time.perf_counter() - start))
    return rows


def _row(budget: str, method: str, n: int, m: int, seeds: list[int], out: dict, wall: float) -> dict[str, Any]:
    best = out.get("best_in_class_gap")
    return {
        "budget": budget,
        "method": method,
        "n": n,
        "m": m,
        "ratio": m / n,
        "seeds": list(seeds),
        **{k: out[k].tolist() for k in ("gap", "value", "objective", "kl_ref")},
        "best_in_class_gap": best.tolist() if best is not None else None,
        "steps": int(out["steps"].max()),
        "wall_s": wall,
    }


class BanditStudy:
    """DPO vs RMB-PO vs RMB-PO+ on a linear or neural bandit: settings x seeds, tables and figures."""

    name: ClassVar[str] = "bandit_study"
    Config = BanditStudyConfig
    models: ClassVar[tuple[str, ...]] = ()
    required_models: ClassVar[tuple[str, ...]] = ()
    trained: ClassVar[tuple[str, ...]] = ()
    records: ClassVar[str | None] = None

    @classmethod
    def launch(cls, cfg: Any, run_dir: Path) -> dict[str, float]:
        """Run the study into run_dir (TensorBoard runs, results.csv/.md, figures); print the table."""
        from alignkit.bandits.report import markdown_table, mean_se, write_report

        rows = study_rows(cfg.algorithm, log_dir=run_dir)
        written = write_report(rows, run_dir, title=cfg.description or cfg.name)
        print(markdown_table(rows))
        for path in written.values():
            print(f"  wrote {path}")
        return {f"{r['budget']}/n{r['n']}/m{r['m']}/{r['method']}/gap": mean_se(r["gap"])[0] for r in rows}
