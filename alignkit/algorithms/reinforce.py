"""REINFORCE without a baseline: the reward itself is the advantage, so users see the variance ReMax removes."""

from __future__ import annotations

from typing import Any

from alignkit.algorithms.configs.reinforce import REINFORCE_CARD
from alignkit.algorithms.online import OnlineModule


class Reinforce(OnlineModule):
    """REINFORCE (Williams 1992) on whole responses: gradient r(x, y) * grad log pi(y|x), plus the KL term."""

    card = REINFORCE_CARD

    def advantages(self, exp: dict[str, Any]) -> None:
        exp["advantages"] = exp["scores"].clone()
