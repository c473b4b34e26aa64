"""Per-token log-probabilities, masks and position ids that make left and right padding agree."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def position_ids(attention_mask: Tensor) -> Tensor:
    """0, 1, 2, ... over the real tokens of each row, so a left-padded row sees the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(logits: Tensor, input_ids: Tensor) -> Tensor:
    """log p(x_t | x_<t) at every position t >= 1, [B, T]; position 0 (nothing predicts it) is 0.

    Cross-entropy in float32 avoids materialising a [B, T, V] log-softmax in the model's dtype.
    """
    b, t, v = logits.shape
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, v), input_ids[:, 1:].reshape(-1), reduction="none").view(
        b, t - 1
    )
    return F.pad(-nll, (1, 0))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() if dim is None else (x * m).sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x where mask is set; 0 where the mask is empty (never NaN)."""
    m = mask.to(x.dtype)
    total = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, mask, dim) / total.clamp(min=1.0)


def model_logits(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, keep_last: int | None = None
) -> Tensor:
    """A causal LM's logits with position ids taken from the mask (padding side does not matter).

    `keep_last`: only the last N positions' logits (transformers' logits_to_keep), e.g. those that predict a
    response: the LM head and the [B, T, V] logits of a long prompt are then never computed.
    """
    extra = {"logits_to_keep": keep_last} if keep_last else {}
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
        **extra,
    ).logits
