"""Padding tokenized rows into batches of tensors, on either side, for every record kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.nn.utils.rnn import pad_sequence

from alignkit.data.spec import RecordKind

# The token sequences each kind carries, by column prefix; preference rows carry two.
PREFIXES: dict[str, tuple[str, ...]] = {
    "completion": ("",),
    "unpaired": ("",),
    "preference": ("chosen_", "rejected_"),
    "prompt": ("prompt_",),
}
# Sequences some datasets add to a kind (KTO's mismatched prompt/completion pairs, alignkit.data.transforms).
OPTIONAL_PREFIXES = ("kl_",)


def pad(seqs: list[list[int]], value: int, side: Literal["left", "right"]) -> torch.Tensor:
    """[B, T] long tensor of `seqs` padded with `value` to the longest one."""
    tensors = [torch.tensor(s, dtype=torch.long) for s in seqs]
    return pad_sequence(tensors, batch_first=True, padding_value=value, padding_side=side)


@dataclass(frozen=True)
class Collator:
    """Rows -> dict of tensors: `<prefix>input_ids`, `<prefix>attention_mask`, `<prefix>completion_mask`.

    All sequences of a row (chosen and rejected; an example and its mismatched pair) are padded to one
    length T, so they can be concatenated along the batch for a single forward pass. An `index` column
    (the row's position in its dataset) is passed through, for caches keyed by row. `padding_side=None`
    means left for prompts (generation appends on the right) and right otherwise.
    """

    kind: RecordKind
    pad_token_id: int
    padding_side: Literal["left", "right"] | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        side = self.padding_side or ("left" if self.kind == "prompt" else "right")
        prefixes = PREFIXES[self.kind] + tuple(p for p in OPTIONAL_PREFIXES if f"{p}input_ids" in rows[0])
        ids = [row[f"{p}input_ids"] for p in prefixes for row in rows]
        columns = {
            "input_ids": pad(ids, self.pad_token_id, side),
            "attention_mask": pad([[1] * len(s) for s in ids], 0, side),
        }
        if self.kind != "prompt":
            columns["completion_mask"] = pad([row[f"{p}completion_mask"] for p in prefixes for row in rows], 0, side)
        batch = {}
        for name, tensor in columns.items():
            for p, part in zip(prefixes, tensor.split(len(rows)), strict=True):
                batch[f"{p}{name}"] = part
        if self.kind == "unpaired":
            batch["label"] = torch.tensor([row["label"] for row in rows], dtype=torch.bool)
        if self.kind == "prompt":
            # the prompt rows' other columns (prompt text, answers, safety flags) for rewards that read them
            batch["metadata"] = [
                {k: v for k, v in row.items() if k not in ("prompt_input_ids", "index")} for row in rows
            ]
        if "index" in rows[0]:
            batch["index"] = torch.tensor([row["index"] for row in rows], dtype=torch.long)
        if self.kind == "preference" and "margin" in rows[0]:
            batch["margin"] = torch.tensor([row["margin"] for row in rows], dtype=torch.float)
        return batch


# The columns of one token sequence; every prefix of PREFIXES carries these three.
SEQUENCE_COLUMNS = ("input_ids", "attention_mask", "completion_mask")


def concat_sequences(batch: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    """input_ids, attention_mask, completion_mask of the sequences under `prefixes`, stacked along the batch.

    The Collator pads all sequences of a row to one length, so they concatenate into one forward pass.
    """
    return tuple(torch.cat([batch[f"{p}{name}"] for p in prefixes]) for name in SEQUENCE_COLUMNS)
