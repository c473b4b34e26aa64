"""Reshaping tokenized datasets for KTO: pairs split into labelled examples, and mismatched prompt/completion pairs."""

from __future__ import annotations

import random
from typing import Any

from datasets import Dataset


def split_pairs(ds: Dataset) -> Dataset:
    """Tokenized preference rows -> twice as many unpaired rows: chosen labelled true, rejected false.

    The two halves of a pair stay adjacent (chosen first), so row 2i and 2i + 1 come from pair i.
    """

    def split(rows: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"input_ids": [], "completion_mask": [], "label": []}
        for i in range(len(rows["chosen_input_ids"])):
            for side, label in (("chosen", True), ("rejected", False)):
                out["input_ids"].append(rows[f"{side}_input_ids"][i])
                out["completion_mask"].append(rows[f"{side}_completion_mask"][i])
                out["label"].append(label)
        return out

    return ds.map(split, batched=True, remove_columns=ds.column_names, desc="splitting pairs")


def prompt_length(completion_mask: list[int]) -> int:
    """Tokens before the first trained one: the prompt (with any template text before the completion)."""
    return completion_mask.index(1) if 1 in completion_mask else len(completion_mask)


def add_mismatched_pairs(ds: Dataset, seed: int, max_length: int) -> Dataset:
    """Give every row `kl_input_ids`/`kl_completion_mask`: its own prompt followed by another row's completion.

    KTO estimates KL(policy || reference) from such mismatched pairs (Ethayarajh et al. 2024, sec. 4.1).
    The partner is fixed per row (the next row in a seeded cycle through all rows, never the row itself),
    so reference log-probs of the pairs can be computed once, before training. Token ids are spliced at the
    prompt/completion boundary; the result is cut to `max_length` from the right.
    """
    n = len(ds)
    if n < 2:
        raise ValueError(f"KTO needs at least 2 examples to form mismatched prompt/completion pairs (got {n})")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partner = [0] * n
    for k, row in enumerate(order):
        partner[row] = order[(k + 1) % n]
    ids, masks = ds["input_ids"], ds["completion_mask"]

    def pair(row: dict[str, Any], index: int) -> dict[str, list[int]]:
        j = partner[index]
        p, q = prompt_length(row["completion_mask"]), prompt_length(masks[j])
        kl_ids = row["input_ids"][:p] + ids[j][q:]
        kl_mask = [0] * p + masks[j][q:]
        return {"kl_input_ids": kl_ids[:max_length], "kl_completion_mask": kl_mask[:max_length]}

    return ds.map(pair, with_indices=True, desc="mismatched pairs for the KL estimate")
