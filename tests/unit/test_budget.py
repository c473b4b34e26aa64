"""Micro-batches filled to a token budget: hand-worked splits, every row exactly once, and equal counts."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from alignkit.ops.budget import equalise, token_budget_chunks


def as_lists(chunks: list[torch.Tensor]) -> list[list[int]]:
    return [c.tolist() for c in chunks]


def test_padded_and_packed_costs_by_hand() -> None:
    """Lengths [5, 9, 3, 7], budget 16, longest first (9, 7, 5, 3). Padded (rows x longest): [9] (2 x 9 = 18 is
    over), [7, 5] (2 x 7 = 14; 3 x 7 = 21 is over), [3]. Packed (sum): [9, 7] (16), [5, 3] (8)."""
    lengths = torch.tensor([5, 9, 3, 7])
    assert as_lists(token_budget_chunks(lengths, 16, packed=False)) == [[1], [3, 0], [2]]
    assert as_lists(token_budget_chunks(lengths, 16, packed=True)) == [[1, 3], [0, 2]]
    # in the given order (a prompt's samples together): 5 | 9 (2 x 9 over) | 3, 7 -> [0], [1], [2, 3]
    assert as_lists(token_budget_chunks(lengths, 16, packed=False, keep_order=True)) == [[0], [1], [2, 3]]


def test_a_row_over_the_budget_gets_its_own_micro_batch() -> None:
    assert as_lists(token_budget_chunks(torch.tensor([50, 2, 2]), 10, packed=True)) == [[0], [1, 2]]


def test_equalise_splits_the_largest_until_the_counts_agree() -> None:
    chunks = [torch.tensor([1]), torch.tensor([3, 0, 4, 5]), torch.tensor([2])]
    assert as_lists(equalise(chunks, 4)) == [[1], [3, 0], [4, 5], [2]]
    assert as_lists(equalise(chunks, 3)) == as_lists(chunks)


@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=30),
    st.integers(1, 120),
    st.booleans(),
    st.integers(1, 30),
)
def test_every_row_once_within_the_budget_and_any_count(
    lengths: list[int], budget: int, packed: bool, more: int
) -> None:
    tensor = torch.tensor(lengths)
    chunks = token_budget_chunks(tensor, budget, packed=packed)
    assert sorted(torch.cat(chunks).tolist()) == list(range(len(lengths)))
    for c in chunks:
        cost = tensor[c].sum() if packed else len(c) * tensor[c].max()
        assert len(c) == 1 or cost <= budget
    count = min(len(lengths), len(chunks) + more)
    even = equalise(chunks, count)
    assert len(even) == count and sorted(torch.cat(even).tolist()) == list(range(len(lengths)))
