"""KTO's options and card."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignkit.algorithms.configs.base import AlgorithmCard, ReferenceConfig


class KTOConfig(ReferenceConfig):
    name: Literal["kto"] = "kto"
    beta: float = Field(0.1, gt=0, description="Scale of the implicit reward log(pi/ref) inside the value function.")
    desirable_weight: float = Field(1.0, gt=0, description="lambda_D: weight of the desirable examples' losses.")
    undesirable_weight: float = Field(1.0, gt=0, description="lambda_U: weight of the undesirable examples' losses.")
    data_kind: Literal["auto", "unpaired", "preference"] = Field(
        "auto",
        description="unpaired: prompt/completion/label rows; preference: prompt/chosen/rejected pairs, each split "
        "into a desirable and an undesirable example; auto: preference when the training source has chosen and "
        "rejected columns.",
    )


KTO_CARD = AlgorithmCard(
    name="kto",
    Config=KTOConfig,
    module="alignkit.algorithms.kto:KTO",
    description="KTO: the policy's log-ratio on each example against z0, a batch estimate of KL from mismatched pairs.",
    models=("policy", "reference"),
    records="unpaired",
    also_loads=("preference",),
    progress=("loss", "rewards/margins", "kl/z0"),
    no_token_budget="KTO's KL estimate z0 is a mean over each micro-batch, so micro-batches of other sizes would "
    "change its loss; set trainer.micro_batch_size instead",
)
