"""KTO's dataset reshaping: pairs split into labelled examples, mismatched prompt/completion pairs, their batches."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from alignkit.data import Collator, tokenize_records
from alignkit.data.transforms import add_mismatched_pairs, prompt_length, split_pairs
from alignkit.models.tokenizer import byte_tokenizer

TOK = byte_tokenizer()
PAIRS = [
    {"prompt": "Q1:", "chosen": " good one", "rejected": " bad"},
    {"prompt": "Question 2:", "chosen": " yes", "rejected": " no way"},
    {"prompt": "Q3:", "chosen": " fine", "rejected": " awful answer"},
]


def text_of(ids: list[int], mask: list[int], trained: bool) -> str:
    return TOK.decode([t for t, m in zip(ids, mask, strict=True) if m == trained], skip_special_tokens=True)


def unpaired() -> Dataset:
    return split_pairs(tokenize_records(Dataset.from_list(PAIRS), "preference", TOK, 128))


def test_split_pairs_labels_chosen_true_and_rejected_false_side_by_side() -> None:
    ds = unpaired()
    assert ds.column_names == ["input_ids", "completion_mask", "label"]
    assert ds["label"] == [True, False] * 3
    completions = [text_of(r["input_ids"], r["completion_mask"], True) for r in ds]
    assert completions == [" good one", " bad", " yes", " no way", " fine", " awful answer"]
    assert text_of(ds[3]["input_ids"], ds[3]["completion_mask"], False) == "Question 2:"


def test_mismatched_pairs_join_each_prompt_to_another_rows_completion() -> None:
    ds = add_mismatched_pairs(unpaired(), seed=0, max_length=128)
    completions = [text_of(r["input_ids"], r["completion_mask"], True) for r in ds]
    partners = []
    for row in ds:
        # the row's own prompt, token for token, then a completion from a different row
        p = prompt_length(row["completion_mask"])
        assert row["kl_input_ids"][:p] == row["input_ids"][:p] and row["kl_completion_mask"][:p] == [0] * p
        completion = text_of(row["kl_input_ids"], row["kl_completion_mask"], True)
        assert completion in completions and completion != text_of(row["input_ids"], row["completion_mask"], True)
        partners.append(completions.index(completion))
    assert sorted(partners) == list(range(6))  # a cycle: every completion is used exactly once
    again = add_mismatched_pairs(unpaired(), seed=0, max_length=128)
    assert again["kl_input_ids"] == ds["kl_input_ids"]  # fixed per seed, so reference log-probs can be cached
    assert add_mismatched_pairs(unpaired(), seed=1, max_length=128)["kl_input_ids"] != ds["kl_input_ids"]


def test_mismatched_pairs_are_cut_to_max_length() -> None:
    ds = add_mismatched_pairs(unpaired(), seed=0, max_length=10)
    assert max(len(ids) for ids in ds["kl_input_ids"]) <= 10
    assert all(len(i) == len(m) for i, m in zip(ds["kl_input_ids"], ds["kl_completion_mask"], strict=True))


def test_one_example_cannot_be_mismatched() -> None:
    one = Dataset.from_list([{"input_ids": [1, 5, 2], "completion_mask": [0, 1, 1], "label": True}])
    with pytest.raises(ValueError, match="at least 2 examples"):
        add_mismatched_pairs(one, seed=0, max_length=8)


def test_batches_pad_example_and_mismatched_pair_to_one_length_and_carry_the_index() -> None:
    ds = add_mismatched_pairs(unpaired(), seed=0, max_length=128)
    ds = ds.add_column("index", list(range(len(ds))))
    rows = [ds[i] for i in (4, 1)]
    batch = Collator("unpaired", TOK.pad_token_id)(rows)
    longest = max(len(r[k]) for r in rows for k in ("input_ids", "kl_input_ids"))
    assert batch["input_ids"].shape == batch["kl_input_ids"].shape == (2, longest)
    assert batch["kl_completion_mask"].shape == (2, longest)
    assert batch["index"].tolist() == [4, 1] and batch["label"].tolist() == [True, False]
    keep = batch["kl_attention_mask"][0].bool()
    assert batch["kl_input_ids"][0][keep].tolist() == rows[0]["kl_input_ids"]
    assert torch.equal(batch["kl_completion_mask"][0][keep], torch.tensor(rows[0]["kl_completion_mask"]))
