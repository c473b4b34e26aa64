"""Per-token values and per-sequence scores from a scalar-head model, for left- or right-padded batches."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from alignkit.ops.lm_head import layout_for, model_inputs


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] index of each row's last real token (mask 1), whatever side the padding is on."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def token_values(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, T] float32: the score head applied to the last hidden state at every position (0 on padding).

    The backbone runs on the layout the model's options ask for (packed rows, shared prompts of the rows that
    `groups` [B] puts together: alignkit/ops/layout.py); the values are the padded batch's.
    """
    layout = layout_for(model, input_ids, attention_mask, groups)
    hidden = model.base_model(**model_inputs(model, layout)).last_hidden_state
    if layout.kind != "padded":
        hidden = layout.gather(hidden)
    return model.score(hidden).squeeze(-1).float() * attention_mask


def sequence_scores(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """[B] float32: the value at each sequence's last real token (the reward model's score)."""
    values = token_values(model, input_ids, attention_mask, groups)
    return values.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)
