"""ReMax's options and card."""

from __future__ import annotations

from typing import Literal

from alignkit.algorithms.configs.online import OnlineConfig, online_card


class ReMaxConfig(OnlineConfig):
    name: Literal["remax"] = "remax"


REMAX_CARD = online_card(
    name="remax",
    Config=ReMaxConfig,
    module="alignkit.algorithms.remax:ReMax",
    description="ReMax (Li et al. 2023): REINFORCE with the greedy response's reward as the baseline; no value model.",
)
