"""RLOO's options and card."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignkit.algorithms.configs.online import GroupConfig, online_card
from alignkit.ops.variants import Aggregation


class RLOOConfig(GroupConfig):
    name: Literal["rloo"] = "rloo"
    samples_per_prompt: int = Field(
        4, ge=2, description="k: responses per prompt; each one's baseline is the mean reward of the other k - 1."
    )
    kl_coef: float = Field(
        0.05,
        ge=0,
        description="beta: weight of the KL to the reference, in each response's reward or in the loss (kl_in).",
    )
    kl_in: Literal["reward", "loss"] = Field(
        "reward",
        description="Where the KL to the reference goes. reward: each response's reward minus kl_coef x its KL "
        "(summed over its tokens) before the baseline, as Ahmadian et al. 2024 do; loss: kl_coef x the per-token KL "
        "in the loss, as GRPO.",
    )
    loss_aggregation: Aggregation = Field(
        "seq_mean_token_sum_norm",
        description="seq_mean_token_sum_norm: each response's token log-probs summed (the paper's sequence-level "
        "REINFORCE), divided by max_new_tokens for a step size like the other methods'; token_mean and "
        "seq_mean_token_mean as for GRPO.",
    )


RLOO_CARD = online_card(
    name="rloo",
    Config=RLOOConfig,
    module="alignkit.algorithms.rloo:RLOO",
    description="RLOO (Ahmadian et al. 2024): k samples per prompt, each one's baseline the mean reward of the "
    "other k - 1; no value model.",
)
