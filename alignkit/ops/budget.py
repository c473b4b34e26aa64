"""Micro-batches filled to a token budget instead of a fixed number of rows (`trainer.max_tokens_per_micro_batch`).

A step's rows are split into micro-batches whose forward costs at most the budget: rows x the longest row on
padded rows, the sum of the lengths on packed rows (`trainer.padding_free`). Rows go longest first, so rows of
similar length share a micro-batch and little is padded. Gradients add over micro-batches, so the split changes
no number as long as each micro-batch's loss is weighted by its share of the step (the callers' job). Every
process of a distributed run must run as many forwards (FSDP gathers weights in each, DDP reduces gradients in
each backward): `equalise` splits the largest micro-batches until the counts agree.
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_budget_chunks(lengths: Tensor, budget: int, *, packed: bool, keep_order: bool = False) -> list[Tensor]:
    """Row indices [k] of each micro-batch: rows by decreasing length (or as given: `keep_order`, e.g. to keep a
    prompt's samples together), each micro-batch filled while its cost (`packed`: the sum of its lengths; else
    rows x its longest) stays within `budget`. A row longer than the budget gets a micro-batch of its own."""
    lengths = lengths.cpu()
    order = torch.arange(len(lengths)) if keep_order else torch.argsort(lengths, descending=True, stable=True)
    chunks: list[list[int]] = []
    current: list[int] = []
    longest = total = 0
    for i in order.tolist():
        n = int(lengths[i])
        cost = total + n if packed else (len(current) + 1) * max(longest, n)
        if current and cost > budget:
            chunks.append(current)
            current, longest, total = [], 0, 0
        current.append(i)
        longest, total = max(longest, n), total + n
    if current:
        chunks.append(current)
    return [torch.tensor(c, dtype=torch.long) for c in chunks]


def equalise(chunks: list[Tensor], count: int) -> list[Tensor]:
    """`count` micro-batches from `chunks` (at most `count` of them): the one with most rows split in two until
    there are as many; `count` must not exceed the number of rows."""
    chunks = list(chunks)
    if count > sum(len(c) for c in chunks):
        raise ValueError(f"cannot make {count} micro-batches of {sum(len(c) for c in chunks)} rows")
    while len(chunks) < count:
        big = max(range(len(chunks)), key=lambda k: len(chunks[k]))
        half = len(chunks[big]) // 2
        chunks[big : big + 1] = [chunks[big][:half], chunks[big][half:]]
    return chunks
