"""What each bandit method minimises, and the optimiser budgets: the released ones and L-BFGS to convergence.

`policy_loss` builds a method's per-seed loss; the released budgets and the "converged" budget (L-BFGS
continued in beta) are from /work/shared/papers/bandits.md. Used by the methods (alignkit/bandits/methods.py)
and the study runner (alignkit/bandits/study.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from alignkit.bandits.data import PreferenceData
from alignkit.bandits.linear import LinearBandit
from alignkit.bandits.losses import dpo_bandit_loss, rmbpo_objective
from alignkit.bandits.neural import NeuralBandit
from alignkit.bandits.optim import LogFn, LossFn, Params, lbfgs
from alignkit.bandits.reward_fit import RewardFn
from alignkit.bandits.spec import AdaGradNormSpec, AdamWSpec, EnvSpec, LBFGSSpec, LinearBanditSpec, Method, Optim

Env = LinearBandit | NeuralBandit


def build_env(spec: EnvSpec, seeds: Sequence[int]) -> Env:
    """The environment a spec describes, batched over `seeds`."""
    return LinearBandit(spec, seeds) if isinstance(spec, LinearBanditSpec) else NeuralBandit(spec, seeds)


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
