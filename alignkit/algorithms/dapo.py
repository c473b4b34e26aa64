"""DAPO: GRPO's group advantages with DAPO's sampling, shaping, clipping and aggregation (set in its config)."""

from __future__ import annotations

from typing import Any

from alignkit.algorithms.configs.dapo import DAPO_CARD
from alignkit.algorithms.online import OnlineModule
from alignkit.ops.rl import group_advantages


class DAPO(OnlineModule):
    """DAPO (Yu et al. 2025): A = (r - group mean) / group std of the informative groups (dynamic sampling) with
    the overlong penalty in r; the clipped token-level loss with clip-higher, no KL. Everything but the
    advantages is the shared loop's, so each of DAPO's parts is also an option of GRPO and RLOO."""

    card = DAPO_CARD

    def advantages(self, exp: dict[str, Any]) -> None:
        exp["advantages"] = group_advantages(exp["scores"], self.algo.samples_per_prompt, "std")
