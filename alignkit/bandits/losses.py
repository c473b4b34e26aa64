"""Bandit losses and evaluation: pure functions of tensors, each returning (loss, metrics).

Shapes: a leading seed dim S, then states (or pairs) N, then actions K. Losses reduce the state/pair dim
and return one value per seed, shape [S]; an optimiser sums them, which keeps the seeds' gradients apart.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def _mean(x: Tensor, weights: Tensor | None) -> Tensor:
    """Mean over the last dim, or a weighted sum when weights (summing to 1 on that dim) are given."""
    return x.mean(-1) if weights is None else (x * weights).sum(-1)


def dpo_bandit_loss(
    logp_pi_plus: Tensor,
    logp_pi_minus: Tensor,
    logp_ref_plus: Tensor,
    logp_ref_minus: Tensor,
    beta: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO on preference pairs [S, N]: mean_N -log sigmoid(beta [(logp+ - ref+) - (logp- - ref-)]), per seed.

    Takes log-probabilities (bandits.md: the released neural code fed probabilities here; we do not).
    """
    chosen = beta * (logp_pi_plus - logp_ref_plus)
    rejected = beta * (logp_pi_minus - logp_ref_minus)
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).mean(-1)
    metrics = {
        "rewards/chosen": chosen.mean(-1).detach(),
        "rewards/rejected": rejected.mean(-1).detach(),
        "rewards/margins": margin.mean(-1).detach(),
        "rewards/accuracies": (margin > 0).to(margin.dtype).mean(-1).detach(),
    }
    return loss, metrics


def rmbpo_objective(
    logits: Tensor,
    r_hat: Tensor,
    log_ref: Tensor,
    beta: float,
    form: Literal["exact", "stopgrad"] = "exact",
) -> tuple[Tensor, dict[str, Tensor]]:
    """RMB-PO loss -mean_s sum_a pi(a|s) [r_hat(s,a) - beta log(pi(a|s)/pi_ref(a|s))], exact over actions.

    logits, r_hat: [S, N, K]; log_ref broadcasts to them. `form="stopgrad"` is the released neural form,
    -mean_s sum_a pi(a|s) stopgrad[bracket]: the same value and the same gradient, since the extra term of
    the exact form, -beta sum_a pi grad log pi = -beta grad sum_a pi, is zero.
    """
    logp = torch.log_softmax(logits, dim=-1)
    pi = logp.exp()
    log_ratio = logp - log_ref
    bracket = r_hat - beta * log_ratio
    if form == "stopgrad":
        bracket = bracket.detach()
    loss = -(pi * bracket).sum(-1).mean(-1)
    metrics = {
        "reward/model": (pi * r_hat).sum(-1).mean(-1).detach(),
        "kl/ref": (pi * log_ratio).sum(-1).mean(-1).detach(),
    }
    return loss, metrics


def kl_to_reference(logits: Tensor, log_ref: Tensor, weights: Tensor | None = None) -> Tensor:
    """E_s KL(pi(.|s) || pi_ref(.|s)) per seed; weights [.., N] turn the mean into a quadrature."""
    logp = torch.log_softmax(logits, dim=-1)
    return _mean((logp.exp() * (logp - log_ref)).sum(-1), weights)


def evaluate_policy(
    logits: Tensor,
    rewards: Tensor,
    log_ref: Tensor,
    beta: float,
    weights: Tensor | None = None,
    action_dim: int = -1,
) -> dict[str, Tensor]:
    """The true-reward evaluation of bandits.md, per seed, on evaluation states [S, N] with rewards [S, N, K].

    value V(pi) = E_s sum_a pi(a|s) r(s,a); optimal_value = E_s max_a r(s,a) (pi* greedy);
    gap = optimal_value - value; kl_ref = E_s KL(pi||ref); objective = value - beta kl_ref.
    action_dim=1 takes logits and rewards as [S, K, N]: on CPU a softmax over a middle dimension is several
    times faster than over a last dimension of size K = 4 (measured; the linear bandit's curves use it).
    """
    if action_dim == 1:
        log_ref = log_ref.view(-1, 1)
    logp = torch.log_softmax(logits, dim=action_dim)
    pi = logp.exp()
    value = _mean((pi * rewards).sum(action_dim), weights)
    optimal = _mean(rewards.amax(action_dim), weights)
    kl = _mean((pi * (logp - log_ref)).sum(action_dim), weights)
    return {
        "value": value,
        "optimal_value": optimal,
        "gap": optimal - value,
        "kl_ref": kl,
        "objective": value - beta * kl,
    }
