"""Options every online algorithm has (sampling, updates, KL, loss aggregation), and its card's defaults."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from alignkit.algorithms.configs.base import AlgorithmCard, AlgorithmConfig
from alignkit.ops.variants import Aggregation, KLKind


class OnlineConfig(AlgorithmConfig):
    """Sampling and update options every online algorithm has (defaults differ per algorithm)."""

    samples_per_prompt: int = Field(1, ge=1, description="Responses sampled per prompt (G in GRPO).")
    max_new_tokens: int = Field(32, ge=1, description="Most tokens in a response; a response cut here did not stop.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (log-probs are of the tempered policy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest token set with this mass.")
    update_epochs: int = Field(1, ge=1, description="Passes over each iteration's samples (PPO epochs, GRPO's mu).")
    num_minibatches: int = Field(
        1, ge=1, description="Optimizer steps per pass: the iteration's samples split into this many minibatches."
    )
    kl_coef: float = Field(
        0.05,
        ge=0,
        description="Weight of the KL penalty to the reference (beta): in the loss for critic-free methods (GRPO, "
        "ReMax, REINFORCE), in the per-token reward for PPO.",
    )
    kl_estimator: KLKind = Field(
        "k1",
        description="Per-token KL estimate (Schulman 2020): k1 = log(pi/ref); k2 = log(pi/ref)^2 / 2; "
        "k3 = ref/pi - log(ref/pi) - 1, unbiased and never negative.",
    )
    clip_eps: float = Field(0.2, gt=0, description="Policy ratio clip range (Schulman et al. 2017).")
    clip_eps_high: float | None = Field(
        None, gt=0, description="Upper clip range if different from clip_eps (DAPO's clip-higher, Yu et al. 2025)."
    )
    loss_aggregation: Aggregation = Field(
        "token_mean",
        description="How per-token losses become one number: token_mean (every response token weighs the same), "
        "seq_mean_token_mean (each response's mean, then the mean over responses: GRPO's paper), "
        "seq_mean_token_sum_norm (token sums over max_new_tokens: Dr. GRPO). Over the whole optimizer step, "
        "whatever the micro-batching and number of processes.",
    )
    eval_greedy: bool = Field(True, description="Evaluate held-out prompts with greedy responses (else sampled).")

    def updates_per_step(self) -> int:
        """Optimizer steps in one iteration; Lightning counts these, run.py converts max_steps with them."""
        return self.update_epochs * self.num_minibatches


def online_card(**fields: Any) -> AlgorithmCard:
    """A card with what every online algorithm needs: a policy and a reward, prompts; a reference by default."""
    defaults: dict[str, Any] = {
        "models": ("policy", "reference", "reward"),
        "required_models": ("policy", "reward"),
        "trained": ("policy",),
        "records": "prompt",
        "progress": ("reward/mean", "kl/ref", "response/length"),
    }
    return AlgorithmCard(**{**defaults, **fields})
