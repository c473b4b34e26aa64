"""Rejection sampling's options and card."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignkit.algorithms.configs.online import OnlineConfig, online_card


class RejectionSamplingConfig(OnlineConfig):
    name: Literal["rejection_sampling"] = "rejection_sampling"
    samples_per_prompt: int = Field(4, ge=2, description="K: responses drawn per prompt, of which the best is kept.")
    threshold: float | None = Field(
        None, description="Also drop a prompt's best response when its reward is below this (RAFT's filter)."
    )
    kl_coef: float = Field(0.0, ge=0, description="Not used in the loss (the SFT loss has no KL term); KL is logged.")


REJECTION_SAMPLING_CARD = online_card(
    name="rejection_sampling",
    Config=RejectionSamplingConfig,
    module="alignkit.algorithms.rejection_sampling:RejectionSampling",
    description="Rejection sampling fine-tuning (RAFT, Llama 2): sample K per prompt, SFT on the best by reward.",
    progress=("reward/mean", "reward/best_mean", "kl/ref", "response/length"),
)
