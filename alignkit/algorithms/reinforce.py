"""REINFORCE without a baseline: the reward itself is the advantage, so users see the variance ReMax removes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from alignkit.algorithms.online import OnlineConfig, OnlineModule


class ReinforceConfig(OnlineConfig):
    name: Literal["reinforce"] = "reinforce"
    kl_coef: float = Field(0.05, ge=0, description="Weight of the KL to the reference in the loss.")


class Reinforce(OnlineModule):
    """REINFORCE (Williams 1992) on whole responses: gradient r(x, y) * grad log pi(y|x), plus the KL term."""

    name = "reinforce"
    Config = ReinforceConfig

    def advantages(self, exp: dict[str, Any]) -> None:
        exp["advantages"] = exp["scores"].clone()
