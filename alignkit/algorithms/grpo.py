"""GRPO: G responses per prompt, each scored against its group (no critic); k3 KL to the reference in the loss."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from alignkit.algorithms.online import OnlineConfig, OnlineModule
from alignkit.ops.rl import KLKind, group_advantages


class GRPOConfig(OnlineConfig):
    name: Literal["grpo"] = "grpo"
    samples_per_prompt: int = Field(
        4, ge=2, description="G: responses per prompt; the group its rewards are normalised in."
    )
    scale_rewards: Literal["std", "none"] = Field(
        "std",
        description="std: (r - group mean) / group std (Shao et al. 2024); none: r - group mean only, which "
        "avoids favouring prompts whose responses score alike (Dr. GRPO, Liu et al. 2025).",
    )
    kl_coef: float = Field(0.04, ge=0, description="beta: weight of the KL to the reference in the loss (paper: 0.04).")
    kl_estimator: KLKind = Field("k3", description="GRPO's paper uses k3 (unbiased, never negative).")
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = Field(
        "seq_mean_token_mean",
        description="seq_mean_token_mean: the paper's 1/G sum_i 1/|o_i| sum_t; token_mean: DAPO's; "
        "seq_mean_token_sum_norm: Dr. GRPO's constant normaliser (max_new_tokens).",
    )


class GRPO(OnlineModule):
    """GRPO (Shao et al. 2024): the group-normalised reward is the advantage of every token of its response."""

    name = "grpo"
    Config = GRPOConfig

    def advantages(self, exp: dict[str, Any]) -> None:
        exp["advantages"] = group_advantages(exp["scores"], self.algo.samples_per_prompt, self.algo.scale_rewards)
