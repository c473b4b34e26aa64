"""REINFORCE's options and card."""

from __future__ import annotations

from typing import Literal

from alignkit.algorithms.configs.online import OnlineConfig, online_card


class ReinforceConfig(OnlineConfig):
    name: Literal["reinforce"] = "reinforce"


REINFORCE_CARD = online_card(
    name="reinforce",
    Config=ReinforceConfig,
    module="alignkit.algorithms.reinforce:Reinforce",
    description="REINFORCE (Williams 1992) on whole responses: gradient r(x, y) * grad log pi(y|x), plus the KL term.",
)
