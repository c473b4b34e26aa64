"""Options every online algorithm has (sampling, updates, KL, loss aggregation), and its card's defaults."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from alignkit.algorithms.configs.base import AlgorithmCard, AlgorithmConfig
from alignkit.config.base import Spec
from alignkit.ops.variants import Aggregation, KLKind, RatioLevel


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
    importance_ratio: RatioLevel = Field(
        "token",
        description="The ratio pi / pi_old that clip_eps clips. token: per token (PPO, GRPO); sequence: the "
        "response's length-normalised ratio exp(mean_t log(pi_t / pi_old_t)), clipped per response (GSPO, Zheng "
        "et al. 2025; its paper clips at 3e-4 / 4e-4, far tighter than token-level ranges). Acts only from the "
        "second optimizer step on an iteration's samples (update_epochs or num_minibatches > 1); before it, the "
        "ratio is 1 either way.",
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


class DynamicSampling(Spec):
    """DAPO's dynamic sampling (Yu et al. 2025, sec. 3.2)."""

    max_rounds: int = Field(
        4,
        ge=1,
        description="Most generation rounds per iteration: the step's prompts, then as many more as needed from "
        "the training set until every process has prompts_per_step / world informative groups. Past the cap "
        "the iteration trains on the informative groups it has (as many on every process); none at all is an "
        "error naming the fix.",
    )


class OverlongShaping(Spec):
    """DAPO's soft overlong punishment (Yu et al. 2025, sec. 3.4, eq. 13)."""

    buffer_fraction: float = Field(
        0.2,
        gt=0,
        le=1,
        description="L_cache as a share of max_new_tokens: the penalty starts at max_new_tokens x (1 - this) "
        "tokens and reaches -penalty at max_new_tokens (DAPO: 4,096 of 20,480, i.e. 0.2).",
    )
    penalty: float = Field(1.0, gt=0, description="The penalty at max_new_tokens (DAPO: 1, in units of the reward).")

    def buffer(self, max_new_tokens: int) -> int:
        """L_cache in tokens, at least 1."""
        return max(1, round(self.buffer_fraction * max_new_tokens))


class GroupConfig(OnlineConfig):
    """Options of the methods that sample a group of responses per prompt and compare them (GRPO, RLOO, DAPO,
    REINFORCE++ with its baseline)."""

    dynamic_sampling: DynamicSampling | None = Field(
        None,
        description="Drop the groups whose rewards are all equal (no gradient from group-relative advantages) and "
        "sample more prompts until the batch is full of informative ones (DAPO). The reward before overlong "
        "shaping decides. Logs sampling/rounds, sampling/dropped_groups and sampling/kept_groups; reward/mean "
        "stays that of the step's first round, every group counted.",
    )
    overlong_shaping: OverlongShaping | None = Field(
        None,
        description="Add DAPO's length penalty over the last part of max_new_tokens to each response's reward "
        "(logged as reward/overlong_penalty).",
    )

    @model_validator(mode="after")
    def _groups_to_compare(self) -> GroupConfig:
        if self.dynamic_sampling is not None and self.samples_per_prompt < 2:
            raise ValueError(
                f"dynamic_sampling compares each prompt's responses, so it needs samples_per_prompt >= 2 (got "
                f"{self.samples_per_prompt}); raise samples_per_prompt or set dynamic_sampling: null"
            )
        return self


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
