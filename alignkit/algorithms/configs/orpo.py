"""ORPO's options and card."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignkit.algorithms.configs.base import AlgorithmCard, AlgorithmConfig


class ORPOConfig(AlgorithmConfig):
    name: Literal["orpo"] = "orpo"
    beta: float = Field(
        0.1,
        gt=0,
        description="lambda of Hong et al. 2024 (TRL's beta): weight of the odds-ratio term beside the chosen "
        "completion's NLL; 0.1 is the paper's. Also scales the logged rewards, beta * mean per-token log-prob.",
    )


ORPO_CARD = AlgorithmCard(
    name="orpo",
    Config=ORPOConfig,
    module="alignkit.algorithms.orpo:ORPO",
    description="ORPO on prompt/chosen/rejected pairs, no reference: SFT on the chosen plus a log-odds-ratio term.",
    records="preference",
    progress=("loss", "nll", "rewards/accuracies"),
)
