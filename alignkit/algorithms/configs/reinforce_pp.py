"""REINFORCE++'s options and card."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alignkit.algorithms.configs.online import GroupConfig, online_card
from alignkit.ops.variants import Aggregation, KLKind


class ReinforcePPConfig(GroupConfig):
    name: Literal["reinforce_pp"] = "reinforce_pp"
    samples_per_prompt: int = Field(
        1,
        ge=1,
        description="Responses per prompt: 1 for REINFORCE++, more (with baseline: group_mean) for its "
        "baseline variant.",
    )
    baseline: Literal["none", "group_mean"] = Field(
        "none",
        description="none: REINFORCE++ (Hu 2025), the score itself; group_mean: REINFORCE++ with baseline, each "
        "score minus its prompt's mean score (needs samples_per_prompt >= 2). Either way the per-token "
        "advantages are then normalised over the whole step's response tokens, on every process together.",
    )
    kl_coef: float = Field(
        0.01,
        ge=0,
        description="beta: weight of the per-token KL to the reference, in each token's reward (kl_in: reward: "
        "the advantage of token t is the score minus beta x the KL of tokens t..end) or in the loss.",
    )
    kl_in: Literal["reward", "loss"] = Field(
        "reward",
        description="Where the KL to the reference goes. reward: per token, before the normalisation (the paper's "
        "REINFORCE++); loss: kl_coef x the per-token KL in the loss, as GRPO (the paper's baseline variant puts it "
        "there, with k2).",
    )
    kl_estimator: KLKind = Field("k1", description="The paper's is k1, log(pi_old / ref) (Hu 2025, eq. 9).")
    loss_aggregation: Aggregation = Field("token_mean", description="As for GRPO; token_mean as the paper's code.")

    @model_validator(mode="after")
    def _baseline_needs_a_group(self) -> ReinforcePPConfig:
        if self.baseline == "group_mean" and self.samples_per_prompt < 2:
            raise ValueError(
                f"baseline: group_mean subtracts the mean score of each prompt's responses, so it needs "
                f"samples_per_prompt >= 2 (got {self.samples_per_prompt}); raise samples_per_prompt or set "
                "baseline: none"
            )
        return self


REINFORCE_PP_CARD = online_card(
    name="reinforce_pp",
    Config=ReinforcePPConfig,
    module="alignkit.algorithms.reinforce_pp:ReinforcePP",
    description="REINFORCE++ (Hu 2025): per-token KL in the reward, advantages normalised over the whole global "
    "batch; group_mean baseline as an option.",
)
