"""Tensor math shared by two or more algorithms; the variant names (ops/variants.py) import without torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignkit.lazy import lazy_attributes
from alignkit.ops.variants import Aggregation, GroupScale, KLKind, RatioLevel

# Config-only code imports alignkit.ops.variants, which runs this file: the math (torch) loads on first use.
_LAZY = {
    "masked_mean": "logprobs",
    "masked_sum": "logprobs",
    "model_logits": "logprobs",
    "position_ids": "logprobs",
    "completion_logprobs": "lm_head",
    "sequence_logprobs": "lm_head",
    "token_logprobs": "logprobs",
    "AGGREGATIONS": "rl",
    "KL_ESTIMATORS": "rl",
    "AdaptiveKLController": "rl",
    "FixedKLController": "rl",
    "aggregate": "rl",
    "baseline_advantages": "rl",
    "clipped_policy_loss": "rl",
    "clipped_value_loss": "rl",
    "entropy_from_logits": "rl",
    "explained_variance": "rl",
    "gae": "rl",
    "group_advantages": "rl",
    "leave_one_out_advantages": "rl",
    "informative_groups": "rl",
    "overlong_penalty": "rl",
    "reinforce_pp_advantages": "rl",
    "reward_to_go": "rl",
    "sequence_log_ratio": "rl",
    "kl_penalty": "rl",
    "token_rewards": "rl",
    "whiten": "rl",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


if TYPE_CHECKING:
    from alignkit.ops.lm_head import completion_logprobs, sequence_logprobs
    from alignkit.ops.logprobs import (
        masked_mean,
        masked_sum,
        model_logits,
        position_ids,
        token_logprobs,
    )
    from alignkit.ops.rl import (
        AGGREGATIONS,
        KL_ESTIMATORS,
        AdaptiveKLController,
        FixedKLController,
        aggregate,
        baseline_advantages,
        clipped_policy_loss,
        clipped_value_loss,
        entropy_from_logits,
        explained_variance,
        gae,
        group_advantages,
        informative_groups,
        kl_penalty,
        leave_one_out_advantages,
        overlong_penalty,
        reinforce_pp_advantages,
        reward_to_go,
        sequence_log_ratio,
        token_rewards,
        whiten,
    )

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "Aggregation",
    "FixedKLController",
    "GroupScale",
    "KLKind",
    "RatioLevel",
    "aggregate",
    "baseline_advantages",
    "clipped_policy_loss",
    "clipped_value_loss",
    "completion_logprobs",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "group_advantages",
    "informative_groups",
    "kl_penalty",
    "leave_one_out_advantages",
    "masked_mean",
    "masked_sum",
    "model_logits",
    "overlong_penalty",
    "position_ids",
    "reinforce_pp_advantages",
    "reward_to_go",
    "sequence_log_ratio",
    "sequence_logprobs",
    "token_logprobs",
    "token_rewards",
    "whiten",
]
