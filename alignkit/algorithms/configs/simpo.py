"""SimPO's options and card."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignkit.algorithms.configs.base import AlgorithmCard, AlgorithmConfig


class SimPOConfig(AlgorithmConfig):
    name: Literal["simpo"] = "simpo"
    beta: float = Field(
        2.0,
        gt=0,
        description="Scale of the length-normalised reward beta/|y| * log pi(y|x) (Meng et al. 2024 used 2.0 to 2.5 "
        "and, for instruct models, up to 10: far above DPO's 0.1, as a per-token log-prob moves far less than a "
        "sequence's).",
    )
    gamma_beta_ratio: float = Field(
        0.5,
        ge=0,
        description="The target reward margin gamma as a fraction of beta: the loss is "
        "-log sigmoid(r_chosen - r_rejected - gamma) with gamma = gamma_beta_ratio * beta. The paper writes gamma; "
        "its authors later tuned gamma/beta, which stays in range whatever beta is, and recommend 0.5 as the start "
        "of a search over 0 to 1 (github.com/princeton-nlp/SimPO).",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="Assumed probability that a pair's label is flipped, as conservative DPO's (the SimPO code's "
        "option): (1 - eps) of the loss on the pair as labelled, eps on it flipped.",
    )
    nll_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of an SFT term, the chosen completion's mean per-token negative log-likelihood: 1.0 is "
        "CPO-SimPO (github.com/fe1ixxu/CPO_SIMPO), which the SimPO authors found to help in some cases; 0 is "
        "SimPO as published.",
    )


SIMPO_CARD = AlgorithmCard(
    name="simpo",
    Config=SimPOConfig,
    module="alignkit.algorithms.simpo:SimPO",
    description="SimPO on prompt/chosen/rejected pairs, no reference: the average log-prob as reward, a target margin.",
    records="preference",
    progress=("loss", "rewards/accuracies", "rewards/margins"),
)
