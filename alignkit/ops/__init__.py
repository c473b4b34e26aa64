"""Tensor math shared by two or more algorithms."""

from alignkit.ops.logprobs import (
    masked_mean,
    masked_sum,
    model_logits,
    position_ids,
    sequence_logprobs,
    token_logprobs,
)

__all__ = ["masked_mean", "masked_sum", "model_logits", "position_ids", "sequence_logprobs", "token_logprobs"]
