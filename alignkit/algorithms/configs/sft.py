"""SFT's options and card."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignkit.algorithms.configs.base import AlgorithmCard, AlgorithmConfig


class SFTConfig(AlgorithmConfig):
    name: Literal["sft"] = "sft"
    loss_aggregation: Literal["token_mean", "sequence_mean"] = Field(
        "token_mean",
        description="token_mean: every completion token in the batch weighs the same; sequence_mean: every "
        "sequence weighs the same (its tokens averaged first).",
    )


SFT_CARD = AlgorithmCard(
    name="sft",
    Config=SFTConfig,
    module="alignkit.algorithms.sft:SFT",
    description="Supervised fine-tuning on prompt/completion or chat records (loss on completion tokens only).",
    records="completion",
    progress=("loss", "ppl"),
)
