"""Reward modelling's options and card."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignkit.algorithms.configs.base import AlgorithmCard, AlgorithmConfig


class RewardModelConfig(AlgorithmConfig):
    name: Literal["reward_model"] = "reward_model"
    use_margin: bool = Field(
        False,
        description="Subtract each pair's `margin` column inside the sigmoid, as Llama 2 does for pairs rated "
        "far apart (Touvron et al. 2023, eq. 2).",
    )
    center_coef: float = Field(
        0.0,
        ge=0,
        description="Reward centering: add center_coef * mean((r_chosen + r_rejected)^2), which pins the "
        "otherwise free offset of the rewards near 0 (Eisenstein et al. 2023; 0.01 is usual).",
    )


REWARD_MODEL_CARD = AlgorithmCard(
    name="reward_model",
    Config=RewardModelConfig,
    module="alignkit.algorithms.reward_model:RewardModel",
    description="Bradley-Terry reward model on prompt/chosen/rejected pairs (Llama 2 margins and centering optional).",
    models=("reward_model",),
    required_models=("reward_model",),
    trained=("reward_model",),
    records="preference",
    progress=("loss", "rewards/accuracies", "rewards/margins"),
)
