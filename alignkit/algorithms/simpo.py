"""SimPO (Meng et al. 2024): preference pairs without a reference model, the length-normalised log-prob as reward."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from alignkit.algorithms.base import AlignModule
from alignkit.algorithms.configs.simpo import SIMPO_CARD
from alignkit.algorithms.dpo import pair_metrics
from alignkit.algorithms.reference import completion_lengths, forward_logps


def simpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    chosen_tokens: Tensor,
    rejected_tokens: Tensor,
    beta: float = 2.0,
    gamma_beta_ratio: float = 0.5,
    label_smoothing: float = 0.0,
    nll_weight: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SimPO's loss (Meng et al. 2024, eq. 6), averaged over pairs, from [B] summed log-probs and token counts.

    The reward is r(y) = beta / |y| * log pi(y|x), the average per-token log-prob scaled by beta, and a pair loses
    -log sigmoid(r_w - r_l - gamma) with gamma = gamma_beta_ratio * beta; with label smoothing eps,
    (1 - eps) of that plus eps of the same on the flipped pair. `nll_weight` adds that much of the chosen
    completion's mean per-token NLL (CPO-SimPO). Metrics: `pair_metrics` of these rewards, and `nll`.
    """
    chosen_mean = policy_chosen / chosen_tokens.clamp(min=1)
    rejected_mean = policy_rejected / rejected_tokens.clamp(min=1)
    chosen_reward, rejected_reward = beta * chosen_mean, beta * rejected_mean
    x = chosen_reward - rejected_reward - gamma_beta_ratio * beta
    preference = -(1 - label_smoothing) * F.logsigmoid(x) - label_smoothing * F.logsigmoid(-x)
    nll = -chosen_mean.mean()
    loss = preference.mean() + nll_weight * nll
    metrics = pair_metrics(chosen_reward, rejected_reward, policy_chosen, policy_rejected)
    return loss, {"loss": loss.detach(), **metrics, "nll": nll.detach()}


class SimPO(AlignModule):
    """SimPO on prompt/chosen/rejected pairs, no reference: the average log-prob as reward, a target margin."""

    card = SIMPO_CARD
    SEQUENCES = ("chosen_", "rejected_")

    def step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        policy = forward_logps(self.policy, batch, self.SEQUENCES)
        tokens = completion_lengths(batch, self.SEQUENCES)
        a = self.algo
        loss, metrics = simpo_loss(
            policy[:, 0],
            policy[:, 1],
            tokens[:, 0],
            tokens[:, 1],
            a.beta,
            a.gamma_beta_ratio,
            a.label_smoothing,
            a.nll_weight,
        )
        self.log_split(split, metrics, batch_size=policy.shape[0])
        return loss
