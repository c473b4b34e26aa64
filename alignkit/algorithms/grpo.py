"""GRPO: G responses per prompt, each scored against its group (no critic); k3 KL to the reference in the loss."""

from __future__ import annotations

from typing import Any

from alignkit.algorithms.configs.grpo import GRPO_CARD
from alignkit.algorithms.online import OnlineModule
from alignkit.ops.rl import group_advantages


class GRPO(OnlineModule):
    """GRPO (Shao et al. 2024): the group-normalised reward is the advantage of every token of its response."""

    card = GRPO_CARD

    def advantages(self, exp: dict[str, Any]) -> None:
        exp["advantages"] = group_advantages(exp["scores"], self.algo.samples_per_prompt, self.algo.scale_rewards)
