"""DPO's options and card."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alignkit.algorithms.configs.base import AlgorithmCard, ReferenceConfig

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


DPO_CARD = AlgorithmCard(
    name="dpo",
    Config=DPOConfig,
    module="alignkit.algorithms.dpo:DPO",
    description="DPO family on prompt/chosen/rejected pairs: chosen and rejected in one forward through the policy.",
    models=("policy", "reference"),
    records="preference",
    progress=("loss", "rewards/accuracies", "rewards/margins"),
)
