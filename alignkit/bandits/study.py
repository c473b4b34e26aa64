"""The bandit study runner: DPO vs RMB-PO vs RMB-PO+ for a batch of seeds, with the paper's evaluation.

`python -m alignkit.bandits.study` runs the linear study at the released budgets and prints a table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from alignkit.bandits.data import PreferenceData, preference_data
from alignkit.bandits.linear import LinearBandit, LinearBanditSpec, best_in_class
from alignkit.bandits.losses import dpo_bandit_loss, rmbpo_objective
from alignkit.bandits.methods import BANDIT_METHODS, fit_policy
from alignkit.bandits.neural import NeuralBandit, NeuralBanditSpec
from alignkit.bandits.optim import (
    AdaGradNormSpec,
    AdamSpec,
    AdamWSpec,
    LBFGSSpec,
    LogFn,
    LossFn,
    Params,
    lbfgs,
    torch_threads,
)
from alignkit.bandits.reward_fit import RewardFn, fit_reward_model

Method = Literal["dpo", "rmb_po", "rmb_po_plus"]
METHODS: tuple[Method, ...] = ("dpo", "rmb_po", "rmb_po_plus")
Env = LinearBandit | NeuralBandit
EnvSpec = LinearBanditSpec | NeuralBanditSpec
Optim = AdaGradNormSpec | AdamSpec | LBFGSSpec


def released_optimizer(env: EnvSpec | Env, method: Method) -> Optim:
    """The released budgets (bandits.md): linear AdaGrad-norm c = 1, DPO 200 and RMB-PO(+) 1000 full-batch
    iterations; neural AdamW lr 1e-3, batch 64, 50 epochs, fixed order."""
    if isinstance(env, LinearBanditSpec | LinearBandit):
        return AdaGradNormSpec(iterations=200 if method == "dpo" else 1000, c=1.0)
    return AdamWSpec(lr=1e-3, batch_size=64, epochs=50)


def converged_optimizer(env: EnvSpec | Env) -> LBFGSSpec:
    """L-BFGS per continuation stage: to max|grad| < 1e-9 for the linear bandit (float64); the float32
    neural bandit cannot resolve that, so 1e-5, a 1e-9 relative gain floor and 1000 steps per stage."""
    if isinstance(env, LinearBanditSpec | LinearBandit):
        return LBFGSSpec(max_iterations=5000, tolerance_grad=1e-9)
    return LBFGSSpec(max_iterations=1000, tolerance_grad=1e-5, tolerance_change=1e-9)


def continuation_betas(beta: float) -> list[float]:
    """beta * 2^k for k = k0 .. 0, starting at the largest value <= 1 (e.g. 0.64, 0.32, ..., 0.01)."""
    k0 = max(0, math.floor(math.log2(1.0 / beta))) if beta < 1 else 0
    return [beta * 2**k for k in range(k0, -1, -1)]


def optimize_converged(
    env: Env, loss_for_beta: Callable[[float], LossFn], beta: float, log_every: int = 0, on_log: LogFn | None = None
) -> tuple[Params, dict[str, Tensor]]:
    """The "converged" budget: L-BFGS (`converged_optimizer`), continued in beta from about 1 down to beta.

    Why the continuation: at beta = 0.01 the logits at the optimum are O(|r_hat| / beta) = O(100), and a
    solver started at the U(0,1) init saturates the softmax on a wrong action at some training states,
    where the gradient is exponentially small: L-BFGS then stops at a "stationary" point whose RMB-PO
    objective is ~1e-2 worse. Halving beta per stage and scaling the logits by 2 (exact for a linear policy
    whose optimum is theta_hat / beta) keeps every stage well conditioned.
    """
    betas = continuation_betas(beta)
    params, total, info = env.init_policy(), 0, {}
    for i, b in enumerate(betas):
        if i:
            params = env.scale_logits(params, betas[i - 1] / b)

        def shifted(step: int, p: Params, offset: int = total, first: bool = i == 0) -> None:
            if on_log is not None and (first or step > 0):
                on_log(offset + step, p)

        params, info = lbfgs(params, loss_for_beta(b), converged_optimizer(env), log_every, shifted)
        total += int(info["steps"])
    return params, {**info, "steps": torch.tensor(total)}


def policy_loss(
    env: Env, method: Method, data: PreferenceData, r_hat: RewardFn | None, beta: float
) -> tuple[LossFn, int]:
    """The per-seed training loss of a method as loss_fn(params, item index | None), and the item count.

    DPO's items are the n preference pairs; RMB-PO's the n preference states; RMB-PO+'s those plus the m
    extra states. r_hat is evaluated once on the training states. The neural RMB-PO loss takes the released
    stop-gradient form (same gradient, see `rmbpo_objective`).
    """
    log_ref = env.log_ref
    if method == "dpo":
        feats = env.policy_features(data.states)

        def dpo(params: Params, idx: Tensor | None) -> Tensor:
            pick = slice(None) if idx is None else idx
            logp = torch.log_softmax(env.policy_logits(params, feats[:, pick]), dim=-1)
            a_plus, a_minus = data.a_plus[:, pick, None], data.a_minus[:, pick, None]
            logp_plus, logp_minus = logp.gather(-1, a_plus)[..., 0], logp.gather(-1, a_minus)[..., 0]
            ref_plus, ref_minus = log_ref[a_plus[..., 0]], log_ref[a_minus[..., 0]]
            return dpo_bandit_loss(logp_plus, logp_minus, ref_plus, ref_minus, beta)[0]

        return dpo, data.states.shape[1]

    if r_hat is None:
        raise ValueError(f"method '{method}' needs a reward model r_hat")
    states = data.states if method == "rmb_po" else torch.cat([data.states, data.extra_states], dim=1)
    feats, rewards = env.policy_features(states), r_hat(states).detach()
    form = "exact" if isinstance(env, LinearBandit) else "stopgrad"

    def rmb(params: Params, idx: Tensor | None) -> Tensor:
        pick = slice(None) if idx is None else idx
        logits = env.policy_logits(params, feats[:, pick])
        return rmbpo_objective(logits, rewards[:, pick], log_ref, beta, form)[0]

    return rmb, states.shape[1]


def run_setting(
    env: EnvSpec,
    method: Method,
    n: int,
    m: int,
    seeds: Sequence[int],
    optim: Optim | Literal["released", "converged"] = "released",
    beta: float = 0.01,
    log_every: int = 10,
    threads: int | None = 1,
) -> dict[str, Tensor]:
    """Train one method on a batch of seeds and evaluate it; every value is a per-seed tensor [S].

    Keys: gap (V(pi*) - V(pi_hat)), value, optimal_value, kl_ref, objective (value - beta kl_ref, true
    reward), steps; linear: best_in_class_gap, policy/theta [S, D], theta_norm; RMB-PO(+): the reward
    model's entries (linear: rm/theta_hat [S, D], rm/separable, rm/converged; neural: rm/loss,
    rm/accuracy); L-BFGS: optim/converged; and the curve trajectory/step [T], trajectory/gap [S, T]
    (every log_every steps; log_every 0: no curve).
    beta 0.01 as released (bandits.md). threads: torch intra-op threads while it runs (see `torch_threads`).
    """
    with torch_threads(threads):
        bandit = env.build(seeds)
        return train_method(bandit, method, preference_data(bandit, n, m), optim, beta, log_every)


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


def run_study(
    env: EnvSpec,
    n: int,
    m: int,
    seeds: Sequence[int],
    methods: Sequence[Method] = METHODS,
    optim: Optim | Literal["released", "converged"] = "released",
    beta: float = 0.01,
    log_every: int = 10,
    threads: int | None = 1,
) -> dict[str, dict[str, Tensor]]:
    """All methods on one environment, the same data and one reward-model fit: {method: run_setting dict}."""
    with torch_threads(threads):
        bandit = env.build(seeds)
        data = preference_data(bandit, n, m)
        fitted = fit_reward_model(bandit, data) if any(mt != "dpo" for mt in methods) else None
        return {mt: train_method(bandit, mt, data, optim, beta, log_every, fitted) for mt in methods}


def mean_se(x: Tensor) -> tuple[float, float]:
    """Mean and standard error over seeds."""
    x = x.double()
    se = float(x.std() / len(x) ** 0.5) if len(x) > 1 else 0.0
    return float(x.mean()), se


def _main() -> None:
    seeds = range(2021, 2031)  # released: seeds 2021..2030, n = 20, m = 0.5 n (bandits.md)
    for features in ("matched", "flip"):
        spec = LinearBanditSpec(features=features)
        start = time.perf_counter()
        best_in_class(spec)  # cached per spec: computed once, reused by every run on it
        searched = time.perf_counter() - start
        for optim in ("released", "converged"):
            start = time.perf_counter()
            results = run_study(spec, n=20, m=10, seeds=seeds, optim=optim)
            elapsed = time.perf_counter() - start
            separable = int(results["rmb_po"]["rm/separable"].sum())
            print(
                f"linear {features}, n=20, m=10, 10 seeds, {optim} budgets: {elapsed:.2f} s "
                f"(+ {searched:.2f} s best-in-class search); separable D_pref: {separable}/10"
            )
            for method, res in results.items():
                gap, se = mean_se(res["gap"])
                bic = res["best_in_class_gap"].mean()
                print(f"  {method:12s} gap {gap:.4f} ± {se:.4f}   best-in-class gap {bic:.4f}")
            searched = 0.0


if __name__ == "__main__":
    _main()
