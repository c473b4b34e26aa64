"""GRPO's options and card."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignkit.algorithms.configs.online import GroupConfig, online_card
from alignkit.ops.variants import Aggregation, GroupScale, KLKind


class GRPOConfig(GroupConfig):
    name: Literal["grpo"] = "grpo"
    samples_per_prompt: int = Field(
        4, ge=2, description="G: responses per prompt; the group its rewards are normalised in."
    )
    scale_rewards: GroupScale = Field(
        "std",
        description="std: (r - group mean) / group std (Shao et al. 2024); none: r - group mean only, which "
        "avoids favouring prompts whose responses score alike (Dr. GRPO, Liu et al. 2025).",
    )
    kl_coef: float = Field(0.04, ge=0, description="beta: weight of the KL to the reference in the loss (paper: 0.04).")
    kl_estimator: KLKind = Field("k3", description="GRPO's paper uses k3 (unbiased, never negative).")
    loss_aggregation: Aggregation = Field(
        "seq_mean_token_mean",
        description="seq_mean_token_mean: the paper's 1/G sum_i 1/|o_i| sum_t; token_mean: DAPO's; "
        "seq_mean_token_sum_norm: Dr. GRPO's constant normaliser (max_new_tokens).",
    )


GRPO_CARD = online_card(
    name="grpo",
    Config=GRPOConfig,
    module="alignkit.algorithms.grpo:GRPO",
    description="GRPO (Shao et al. 2024): the group-normalised reward is the advantage of every token of its response.",
)
