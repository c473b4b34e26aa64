"""Direct Preference Optimisation and its variants (IPO, hinge/SLiC, robust, conservative) on preference pairs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from alignkit.algorithms.base import AlignModule
from alignkit.algorithms.reference import ReferenceConfig, fill_reference_cache, forward_logps, reference_logps

LossType = Literal["sigmoid", "ipo", "hinge", "robust"]


class DPOConfig(ReferenceConfig):
    name: Literal["dpo"] = "dpo"
    beta: float = Field(
        0.1,
        gt=0,
        description="Strength of the KL penalty to the reference: the implicit reward is beta * log(pi/ref). "
        "For ipo it is the regulariser tau, for hinge 1/beta is the margin.",
    )
    loss_type: LossType = Field(
        "sigmoid",
        description="sigmoid: DPO (Rafailov et al. 2023); ipo: squared loss to 1/(2 beta) (Azar et al. 2023); "
        "hinge: SLiC-HF's max(0, 1 - beta h) (Zhao et al. 2023); robust: rDPO, unbiased under labels "
        "flipped with probability label_smoothing (Chowdhury et al. 2024). Sequence log-probs are sums over "
        "completion tokens for every type.",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="Assumed probability that a pair's label is flipped: with sigmoid, conservative DPO "
        "(Mitchell 2023); with robust, rDPO's noise rate.",
    )

    @model_validator(mode="after")
    def _smoothing_needs_a_noise_model(self) -> DPOConfig:
        if self.label_smoothing and self.loss_type not in ("sigmoid", "robust"):
            raise ValueError(
                f"label_smoothing applies to loss_type sigmoid or robust (got loss_type {self.loss_type} with "
                f"label_smoothing {self.label_smoothing}); set label_smoothing: 0 or change loss_type"
            )
        return self


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

    name = "dpo"
    Config = DPOConfig
    models = ("policy", "reference")
    required_models = ("policy",)
    trained = ("policy",)
    records = "preference"
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
