"""The bandit study runner: DPO vs RMB-PO vs RMB-PO+ over settings, every seed of a setting in one batch.

`python -m alignkit.bandits.study` runs the linear study at the released budgets and prints a table; a
study declared in YAML (`algorithm: {name: bandit_study}`, alignkit/algorithms/bandit_study.py) runs the
same `run_study` and writes its tables and figures (alignkit/bandits/report.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from alignkit.bandits.data import PreferenceData, preference_data
from alignkit.bandits.linear import LinearBandit, best_in_class
from alignkit.bandits.methods import BANDIT_METHODS, fit_policy
from alignkit.bandits.objectives import Env, build_env, released_optimizer
from alignkit.bandits.optim import torch_threads
from alignkit.bandits.reward_fit import RewardFn, fit_reward_model
from alignkit.bandits.spec import METHODS, Budget, EnvSpec, LinearBanditSpec, Method, Optim, budget_label
from alignkit.stats import bootstrap_ci, mean_se


@dataclass
class Fit:
    """One method trained at one setting (budget, n, m) on every seed: `out` holds per-seed tensors [S]."""

    budget: str
    method: Method
    n: int
    m: int
    seeds: list[int]
    out: dict[str, Tensor]
    wall_s: float

    def row(self) -> dict[str, Any]:
        """The result row the report reads (alignkit/bandits/report.py): per-seed lists of floats."""
        best = self.out.get("best_in_class_gap")
        return {
            "budget": self.budget,
            "method": self.method,
            "n": self.n,
            "m": self.m,
            "ratio": self.m / self.n,
            "seeds": list(self.seeds),
            **{k: self.out[k].tolist() for k in ("gap", "value", "objective", "kl_ref")},
            "best_in_class_gap": best.tolist() if best is not None else None,
            "steps": int(self.out["steps"].max()),
            "wall_s": self.wall_s,
        }


def run_study(
    env: EnvSpec,
    seeds: Sequence[int],
    *,
    methods: Sequence[Method] = METHODS,
    n: Sequence[int] = (20,),
    m_ratio: Sequence[float] = (0.5,),
    budgets: Sequence[Budget] = ("released",),
    beta: float = 0.01,
    log_every: int = 10,
    log_dir: Path | None = None,
    threads: int | None = 1,
) -> list[Fit]:
    """Train every method at every (budget, n, m = round(ratio n)) on all seeds at once; one Fit each.

    Per (budget, n) the preference data and the reward model are made once and shared by every method: D_pref
    does not depend on m (its own random stream), so one reward model per n serves all m. DPO and RMB-PO run
    once (m = 0; they do not use the extra states), RMB-PO+ once per m > 0. beta 0.01 as released
    (bandits.md); log_every 0: no curve; with log_dir, TensorBoard runs under log_dir/<budget>/n<n>/<method>.
    threads: torch intra-op threads while it runs (tiny tensors: more threads only add contention).
    """
    fits: list[Fit] = []
    with torch_threads(threads):
        bandit = build_env(env, seeds)
        for budget in budgets:
            label = budget_label(budget)
            for size in n:
                ms = sorted({round(r * size) for r in m_ratio if r > 0}) if "rmb_po_plus" in methods else []
                data = {m: preference_data(bandit, size, m) for m in [0, *ms]}
                fitted = fit_reward_model(bandit, data[0]) if set(methods) - {"dpo"} else None
                jobs = [(method, 0) for method in methods if method != "rmb_po_plus"]
                jobs += [("rmb_po_plus", m) for m in ms]
                for method, m in jobs:
                    start = time.perf_counter()
                    name = method if method != "rmb_po_plus" else f"{method}_m{m}"
                    where = log_dir / label / f"n{size}" if log_dir else None
                    out = train_method(bandit, method, data[m], budget, beta, log_every, fitted, where, name)
                    fits.append(Fit(label, method, size, m, list(seeds), out, time.perf_counter() - start))
    return fits


def train_method(
    env: Env,
    method: Method,
    data: PreferenceData,
    optim: Optim | Literal["released", "converged"],
    beta: float,
    log_every: int,
    fitted: tuple[RewardFn, dict[str, Tensor]] | None = None,
    log_dir: Path | None = None,
    name: str = "",
) -> dict[str, Tensor]:
    """One method trained on one setting's data, every seed at once; per-seed results (keys: see run_study's
    callers: gap, value, objective, kl_ref, steps, the reward model's rm/* entries, the linear bandit's
    best_in_class_gap and policy/theta, trajectory/step and trajectory/gap when log_every > 0)."""
    if optim == "released":
        optim = released_optimizer(env, method)
    out: dict[str, Tensor] = {}
    r_hat = None
    if method != "dpo":
        r_hat, rm_info = fitted or fit_reward_model(env, data)
        out.update(rm_info)
    module = BANDIT_METHODS.get(method)(env, data, r_hat, beta, optim, log_every or 10**9)
    fit_policy(module, log_dir, name)
    params = {k: v.detach() for k, v in module.params().items()}
    # L-BFGS counts its own iterations (inside one Lightning step); the others step once per iteration
    info = {"steps": torch.tensor(module.trainer.global_step), **module.info}
    with torch.no_grad():
        out.update(env.evaluate(params, beta))
    out["steps"] = info["steps"].expand(len(env.seeds))
    if "converged" in info:
        out["optim/converged"] = info["converged"]
    if isinstance(env, LinearBandit):
        out["best_in_class_gap"] = env.best_in_class_gap()
        out["policy/theta"] = params["theta"]
        out["theta_norm"] = params["theta"].norm(dim=1)
    if log_every:
        out.update(module.trajectory())
    return out


def _main() -> None:
    seeds = range(2021, 2031)  # released: seeds 2021..2030, n = 20, m = 0.5 n (bandits.md)
    for features in ("matched", "flip"):
        spec = LinearBanditSpec(features=features)
        start = time.perf_counter()
        best_in_class(spec)  # cached per spec: computed once, reused by every run on it
        searched = time.perf_counter() - start
        for optim in ("released", "converged"):
            start = time.perf_counter()
            results = {fit.method: fit.out for fit in run_study(spec, seeds, budgets=[optim])}
            elapsed = time.perf_counter() - start
            separable = int(results["rmb_po"]["rm/separable"].sum())
            print(
                f"linear {features}, n=20, m=10, 10 seeds, {optim} budgets: {elapsed:.2f} s "
                f"(+ {searched:.2f} s best-in-class search); separable D_pref: {separable}/10"
            )
            for method, res in results.items():
                gap, se = mean_se(res["gap"])
                low, high = bootstrap_ci(res["gap"].reshape(-1, 1))  # over seeds, as in the report's tables
                bic = res["best_in_class_gap"].mean()
                print(f"  {method:12s} gap {gap:.4f} ± {se:.4f} [{low:.3f}, {high:.3f}]   best-in-class gap {bic:.4f}")
            searched = 0.0


if __name__ == "__main__":
    _main()
