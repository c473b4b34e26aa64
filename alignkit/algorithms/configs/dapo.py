"""DAPO's options and card: GRPO's with DAPO's defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignkit.algorithms.configs.online import DynamicSampling, GroupConfig, OverlongShaping, online_card
from alignkit.ops.variants import Aggregation


class DAPOConfig(GroupConfig):
    name: Literal["dapo"] = "dapo"
    samples_per_prompt: int = Field(
        4, ge=2, description="G: responses per prompt, normalised in their group as GRPO's (DAPO: 16)."
    )
    clip_eps: float = Field(0.2, gt=0, description="Lower clip range, 1 - clip_eps (DAPO: 0.2).")
    clip_eps_high: float | None = Field(
        0.28, gt=0, description="Clip-higher: the upper range 1 + clip_eps_high (DAPO: 0.28), room for rare tokens."
    )
    kl_coef: float = Field(
        0.0, ge=0, description="KL to the reference in the loss; DAPO drops it (long reasoning moves far anyway)."
    )
    loss_aggregation: Aggregation = Field(
        "token_mean", description="DAPO's token-level loss: every token of the step weighs the same (sec. 3.3)."
    )
    dynamic_sampling: DynamicSampling | None = Field(
        DynamicSampling(), description="As for every group method; on by default (DAPO sec. 3.2)."
    )
    overlong_shaping: OverlongShaping | None = Field(
        OverlongShaping(), description="As for every group method; on by default (DAPO sec. 3.4)."
    )


DAPO_CARD = online_card(
    name="dapo",
    Config=DAPOConfig,
    module="alignkit.algorithms.dapo:DAPO",
    description="DAPO (Yu et al. 2025): GRPO with clip-higher, dynamic sampling, token-level loss, overlong "
    "shaping and no KL.",
)
