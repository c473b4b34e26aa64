"""Direct Preference Optimisation and its variants (IPO, hinge/SLiC, robust, conservative) on preference pairs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.algorithms.base import AlignModule
from alignkit.algorithms.configs.dpo import DPO_CARD
from alignkit.algorithms.reference import fill_reference_cache, forward_logps, reference_logps


# Each maps h = (log pi_w - log ref_w) - (log pi_l - log ref_l), beta and the label noise eps to a loss per pair.
def _sigmoid(h: Tensor, beta: float, eps: float) -> Tensor:
    return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def _ipo(h: Tensor, beta: float, eps: float) -> Tensor:
    return (h - 1 / (2 * beta)) ** 2


def _hinge(h: Tensor, beta: float, eps: float) -> Tensor:
    return torch.relu(1 - beta * h)


def _robust(h: Tensor, beta: float, eps: float) -> Tensor:
    return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)


LOSSES: dict[str, Callable[[Tensor, float, float], Tensor]] = {
    "sigmoid": _sigmoid,
    "ipo": _ipo,
    "hinge": _hinge,
    "robust": _robust,
}


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The mean over pairs of LOSSES[loss_type], from [B] sequence log-probs of chosen and rejected completions.

    Metrics use the implicit reward beta * (log pi - log ref): `rewards/chosen|rejected` (means),
    `rewards/margins` (mean chosen - rejected), `rewards/accuracies` (share of pairs where chosen's reward
    is higher), and `logps/chosen|rejected`, the policy's mean sequence log-probs.
    """
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    loss = LOSSES[loss_type](chosen_ratio - rejected_ratio, beta, label_smoothing).mean()
    chosen_reward, rejected_reward = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    metrics = {
        "loss": loss.detach(),
        "rewards/chosen": chosen_reward.mean(),
        "rewards/rejected": rejected_reward.mean(),
        "rewards/margins": (chosen_reward - rejected_reward).mean(),
        "rewards/accuracies": (chosen_reward > rejected_reward).float().mean(),
        "logps/chosen": policy_chosen.detach().mean(),
        "logps/rejected": policy_rejected.detach().mean(),
    }
    return loss, metrics


class DPO(AlignModule):
    """DPO family on prompt/chosen/rejected pairs: chosen and rejected in one forward through the policy."""

    card = DPO_CARD
    SEQUENCES = ("chosen_", "rejected_")

    def on_fit_start(self) -> None:
        fill_reference_cache(self, self.SEQUENCES)

    def step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        # the reference first: its activations are freed before the policy's graph is built, not on top of it
        ref = reference_logps(self, batch, self.SEQUENCES, split)
        policy = forward_logps(self.policy, batch, self.SEQUENCES)
        loss, metrics = dpo_loss(
            policy[:, 0],
            policy[:, 1],
            ref[:, 0],
            ref[:, 1],
            self.algo.beta,
            self.algo.loss_type,
            self.algo.label_smoothing,
        )
        self.log_split(split, metrics, batch_size=policy.shape[0])
        return loss
