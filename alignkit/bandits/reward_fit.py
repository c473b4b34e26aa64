"""Reward models fitted by Bradley-Terry maximum likelihood on preference data, batched over seeds.

Linear bandit: unregularised logistic regression on phi_r(s,a+) - phi_r(s,a-), solved to optimality by a
batched damped Newton method (the released code used a convex solver; bandits.md). Neural bandit: the
two-tower ReLU model trained with the Bradley-Terry loss, AdamW lr 1e-3, batch 64, 20 epochs (bandits.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.bandits.data import PreferenceData
from alignkit.bandits.linear import LinearBandit
from alignkit.bandits.neural import NeuralBandit
from alignkit.bandits.optim import Params, adam
from alignkit.bandits.spec import AdamWSpec

RewardFn = Callable[[Tensor], Tensor]  # states [S, N, d_s] -> r_hat [S, N, K]


class LogisticFit(NamedTuple):
    theta_hat: Tensor  # [S, D]
    separable: Tensor  # [S] bool: the MLE does not exist; theta_hat is capped at norm max_norm
    converged: Tensor  # [S] bool: max |score| <= tolerance
    iterations: int


def _nll(x: Tensor, theta: Tensor) -> Tensor:
    """mean_i -log sigmoid(x_i . theta), per seed: x [S, n, D], theta [S, D]."""
    return F.softplus(-torch.einsum("snd,sd->sn", x, theta)).mean(-1)


def fit_logistic_mle(
    x: Tensor, max_norm: float = 100.0, tolerance: float = 1e-10, max_iterations: int = 200
) -> LogisticFit:
    """argmax_theta mean_i log sigmoid(x_i . theta), every label +1 (x_i = phi(s,a+) - phi(s,a-)).

    Damped Newton: direction -(H + eps I)^{-1} g, at most 10 long, Armijo backtracking from step 1, per
    seed. When the pairs are separable (some theta != 0 has x_i . theta >= 0 for all i) the likelihood has
    no maximiser: it keeps rising as |theta| -> inf, and the gradient can fall below any tolerance on the
    way out, so a small gradient proves nothing. We flag a seed `separable` as soon as an iterate has every
    margin x_i . theta >= 0 (then theta itself separates the pairs: an exact certificate), or when |theta|
    passes `max_norm` (default 100, 45 |theta*|; catches ties that keep margins at 0), and return that
    direction scaled to norm max_norm: a capped estimate, to be reported, not trusted.
    """
    S, _, D = x.shape
    theta = torch.zeros(S, D, dtype=x.dtype)
    eye = torch.eye(D, dtype=x.dtype)
    separable = torch.zeros(S, dtype=torch.bool)
    converged = torch.zeros(S, dtype=torch.bool)
    iterations = 0
    for _ in range(max_iterations):
        iterations += 1
        margin = torch.einsum("snd,sd->sn", x, theta)
        # A theta != 0 with every margin >= 0 separates the pairs: a proof that no maximiser exists.
        separates = (margin.amin(1) >= 0) & (theta.abs().amax(1) > 0)
        theta = torch.where(separates[:, None], theta * (max_norm / theta.norm(dim=1, keepdim=True)), theta)
        separable |= separates
        p_wrong = torch.sigmoid(-margin)  # 1 - P(a+ preferred)
        grad = -(p_wrong[..., None] * x).mean(1)
        converged = grad.abs().amax(1) <= tolerance
        active = ~converged & ~separable
        if not active.any():
            break
        curvature = (p_wrong * (1 - p_wrong))[..., None, None] * x[..., :, None] * x[..., None, :]
        hess = curvature.mean(1)
        damping = 1e-12 * hess.diagonal(dim1=1, dim2=2).sum(1).clamp_min(1e-300)
        direction = torch.linalg.solve(hess + damping[:, None, None] * eye, -grad[..., None])[..., 0]
        # At most 10 units per step: an ill-conditioned first step must not fake a divergence.
        direction = direction * (10.0 / direction.norm(dim=1).clamp_min(1e-300)).clamp(max=1.0)[:, None]
        slope = (grad * direction).sum(1)
        loss = _nll(x, theta)
        rounding = 8 * torch.finfo(x.dtype).eps * loss  # near the optimum the decrease is below rounding
        step = torch.ones(S, dtype=x.dtype)
        for _ in range(50):
            ok = ~active | (_nll(x, theta + step[:, None] * direction) <= loss + 1e-4 * step * slope + rounding)
            if ok.all():
                break
            step = torch.where(ok, step, step / 2)
        theta = torch.where(active[:, None], theta + step[:, None] * direction, theta)
        norm = theta.norm(dim=1)
        over = active & (norm > max_norm)
        theta = torch.where(over[:, None], theta * (max_norm / norm)[:, None], theta)
        separable |= over
    grad = -(torch.sigmoid(-torch.einsum("snd,sd->sn", x, theta))[..., None] * x).mean(1)
    converged = (grad.abs().amax(1) <= tolerance) & ~separable
    return LogisticFit(theta, separable, converged, iterations)


def fit_linear_reward(env: LinearBandit, data: PreferenceData) -> tuple[RewardFn, dict[str, Tensor]]:
    """theta_hat = the logistic-regression MLE; r_hat(s, a) = phi_r(s, a) . theta_hat."""
    phi = env.reward_features(data.states)  # [S, n, K, D]

    def take(a: Tensor) -> Tensor:
        return phi.gather(2, a[:, :, None, None].expand(-1, -1, 1, phi.shape[-1]))[:, :, 0]

    fit = fit_logistic_mle(take(data.a_plus) - take(data.a_minus))
    theta_hat = fit.theta_hat

    def r_hat(states: Tensor) -> Tensor:
        return torch.einsum("snkd,sd->snk", env.reward_features(states), theta_hat)

    info = {"rm/theta_hat": theta_hat, "rm/separable": fit.separable, "rm/converged": fit.converged}
    return r_hat, info


def bradley_terry_loss(r_hat: Tensor, a_plus: Tensor, a_minus: Tensor) -> Tensor:
    """mean_i -log sigmoid(r_hat(s_i, a+_i) - r_hat(s_i, a-_i)) per seed; r_hat [S, n, K], actions [S, n]."""
    diff = r_hat.gather(-1, a_plus[..., None]) - r_hat.gather(-1, a_minus[..., None])
    return -F.logsigmoid(diff[..., 0]).mean(-1)


def fit_neural_reward(
    env: NeuralBandit, data: PreferenceData, spec: AdamWSpec | None = None
) -> tuple[RewardFn, dict[str, Tensor]]:
    """Two-tower ReLU reward model, Bradley-Terry loss, AdamW lr 1e-3, batch 64, 20 epochs, fixed order."""
    spec = spec or AdamWSpec(lr=1e-3, batch_size=64, epochs=20)

    def loss_fn(params: Params, idx: Tensor | None) -> Tensor:
        pick = slice(None) if idx is None else idx
        r = env.reward_model(params, data.states[:, pick])
        return bradley_terry_loss(r, data.a_plus[:, pick], data.a_minus[:, pick])

    params, _ = adam(env.init_reward_model(), loss_fn, spec, num_items=data.states.shape[1])
    with torch.no_grad():
        r_train = env.reward_model(params, data.states)
        diff = r_train.gather(-1, data.a_plus[..., None]) - r_train.gather(-1, data.a_minus[..., None])
        info = {"rm/loss": loss_fn(params, None), "rm/accuracy": (diff > 0).float().mean((1, 2))}

    def r_hat(states: Tensor) -> Tensor:
        with torch.no_grad():
            return env.reward_model(params, states)

    return r_hat, info


def fit_reward_model(env: LinearBandit | NeuralBandit, data: PreferenceData) -> tuple[RewardFn, dict[str, Tensor]]:
    """The reward model of bandits.md for this environment."""
    return fit_linear_reward(env, data) if isinstance(env, LinearBandit) else fit_neural_reward(env, data)
