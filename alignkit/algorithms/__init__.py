"""The algorithm registry; every algorithm is registered here by an explicit import, nowhere else."""

from __future__ import annotations

from alignkit.algorithms.base import AlgorithmConfig, AlignModule
from alignkit.algorithms.reward_model import RewardModel
from alignkit.algorithms.sft import SFT
from alignkit.registry import Registry

ALGORITHMS: Registry[type[AlignModule]] = Registry("algorithm")
for _algorithm in (SFT, RewardModel):
    ALGORITHMS.add(_algorithm.name, _algorithm)

__all__ = ["ALGORITHMS", "AlgorithmConfig", "AlignModule"]
