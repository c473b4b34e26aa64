"""CPO's options and card."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignkit.algorithms.configs.base import AlgorithmCard, AlgorithmConfig


class CPOConfig(AlgorithmConfig):
    name: Literal["cpo"] = "cpo"
    beta: float = Field(
        0.1,
        gt=0,
        description="Scale of the reward beta * log pi(y|x), with summed (sequence) log-probs as in Xu et al. "
        "2024's preference term -log sigmoid(beta log pi_chosen - beta log pi_rejected); 0.1 is the paper's.",
    )
    nll_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of the behaviour-cloning term, the chosen completion's negative log-likelihood (the "
        "paper's L_NLL, weight 1; TRL's cpo_alpha), as the mean over its tokens (the paper's code and TRL average "
        "over the tokens of a batch; here each pair's mean, then over pairs).",
    )


CPO_CARD = AlgorithmCard(
    name="cpo",
    Config=CPOConfig,
    module="alignkit.algorithms.cpo:CPO",
    description="CPO on prompt/chosen/rejected pairs, no reference: DPO's loss with the reference left out, plus NLL.",
    records="preference",
    progress=("loss", "nll", "rewards/accuracies"),
)
