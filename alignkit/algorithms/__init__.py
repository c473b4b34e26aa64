"""The algorithm registry: every algorithm's card, registered here by an explicit import and nowhere else.

An algorithm is two files of one name: `configs/<name>.py` (its options and card: config-only, no torch)
and `<name>.py` (its loss and LightningModule, imported by `ALGORITHMS.get(name).load()` when a run starts).
"""

from __future__ import annotations

from alignkit.algorithms.configs.bandit_study import BANDIT_STUDY_CARD
from alignkit.algorithms.configs.base import AlgorithmCard, AlgorithmConfig
from alignkit.algorithms.configs.cpo import CPO_CARD
from alignkit.algorithms.configs.dapo import DAPO_CARD
from alignkit.algorithms.configs.dpo import DPO_CARD
from alignkit.algorithms.configs.grpo import GRPO_CARD
from alignkit.algorithms.configs.kto import KTO_CARD
from alignkit.algorithms.configs.online_dpo import ONLINE_DPO_CARD
from alignkit.algorithms.configs.orpo import ORPO_CARD
from alignkit.algorithms.configs.ppo import PPO_CARD
from alignkit.algorithms.configs.reinforce import REINFORCE_CARD
from alignkit.algorithms.configs.reinforce_pp import REINFORCE_PP_CARD
from alignkit.algorithms.configs.rejection_sampling import REJECTION_SAMPLING_CARD
from alignkit.algorithms.configs.remax import REMAX_CARD
from alignkit.algorithms.configs.reward_model import REWARD_MODEL_CARD
from alignkit.algorithms.configs.rloo import RLOO_CARD
from alignkit.algorithms.configs.sft import SFT_CARD
from alignkit.algorithms.configs.simpo import SIMPO_CARD
from alignkit.registry import Registry

ALGORITHMS: Registry[AlgorithmCard] = Registry("algorithm")
for _card in (
    SFT_CARD,
    REWARD_MODEL_CARD,
    DPO_CARD,
    KTO_CARD,
    SIMPO_CARD,
    ORPO_CARD,
    CPO_CARD,
    PPO_CARD,
    GRPO_CARD,
    REMAX_CARD,
    RLOO_CARD,
    REINFORCE_PP_CARD,
    DAPO_CARD,
    REINFORCE_CARD,
    REJECTION_SAMPLING_CARD,
    ONLINE_DPO_CARD,
    BANDIT_STUDY_CARD,
):
    ALGORITHMS.add(_card.name, _card, _card.description)

__all__ = ["ALGORITHMS", "AlgorithmCard", "AlgorithmConfig"]
