"""The algorithm registry; every algorithm is registered here by an explicit import, nowhere else."""

from __future__ import annotations

from typing import Any

from alignkit.algorithms.bandit_study import BanditStudy
from alignkit.algorithms.base import AlgorithmConfig, AlignModule
from alignkit.algorithms.dpo import DPO
from alignkit.algorithms.grpo import GRPO
from alignkit.algorithms.kto import KTO
from alignkit.algorithms.ppo import PPO
from alignkit.algorithms.reinforce import Reinforce
from alignkit.algorithms.rejection_sampling import RejectionSampling
from alignkit.algorithms.remax import ReMax
from alignkit.algorithms.reward_model import RewardModel
from alignkit.algorithms.sft import SFT
from alignkit.registry import Registry

# AlignModule subclasses train through one Trainer.fit; a study (BanditStudy) has `launch` instead
ALGORITHMS: Registry[Any] = Registry("algorithm")
for _algorithm in (SFT, RewardModel, DPO, KTO, PPO, GRPO, ReMax, Reinforce, RejectionSampling, BanditStudy):
    ALGORITHMS.add(_algorithm.name, _algorithm)

__all__ = ["ALGORITHMS", "AlgorithmConfig", "AlignModule"]
