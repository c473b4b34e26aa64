"""Rewards: rule rewards registered by name, reward-source specs, and the reward function built from them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignkit.lazy import lazy_attributes
from alignkit.rewards.rules import REWARDS, RuleReward
from alignkit.rewards.spec import (
    Llama2SourceSpec,
    ModelSourceSpec,
    RewardSourceSpec,
    RewardSpec,
    RuleSourceSpec,
    WeightedSumSourceSpec,
    WeightedTermSpec,
)

# The specs import neither torch nor transformers, so validating a config stays fast (`alignkit validate`);
# the reward function and its sources load on first use.
_LAZY = {
    "RewardFunction": "function",
    "build_reward": "function",
    "RewardInputs": "sources",
    "build_source": "sources",
    "RunningMoments": "normalize",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


if TYPE_CHECKING:
    from alignkit.rewards.function import RewardFunction, build_reward
    from alignkit.rewards.normalize import RunningMoments
    from alignkit.rewards.sources import RewardInputs, build_source

__all__ = [
    "REWARDS",
    "Llama2SourceSpec",
    "ModelSourceSpec",
    "RewardFunction",
    "RewardInputs",
    "RewardSourceSpec",
    "RewardSpec",
    "RuleReward",
    "RuleSourceSpec",
    "RunningMoments",
    "WeightedSumSourceSpec",
    "WeightedTermSpec",
    "build_reward",
    "build_source",
]
