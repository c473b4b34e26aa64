"""Token layout, completion masks, truncation and collation, checked by decoding with the byte tokenizer."""

from __future__ import annotations

import logging

import pytest
import torch
from datasets import Dataset

from alignkit.data import Collator, DataError, tokenize_records
from alignkit.models.tokenizer import byte_tokenizer

TOK = byte_tokenizer()
BOS, EOS, PAD = TOK.bos_token_id, TOK.eos_token_id, TOK.pad_token_id


def tokenize(rows: list[dict], kind: str, max_length: int = 512, max_prompt_length: int | None = None) -> Dataset:
    return tokenize_records(Dataset.from_list(rows), kind, TOK, max_length, max_prompt_length, source="t.jsonl")


def masked_text(ids: list[int], mask: list[int]) -> str:
    return TOK.decode([t for t, m in zip(ids, mask, strict=True) if m])


def test_completion_mask_covers_exactly_the_completion_and_eos() -> None:
    row = tokenize([{"prompt": "reverse: cat dog =", "completion": " dog cat"}], "completion")[0]
    prompt_ids = TOK("reverse: cat dog =")["input_ids"]
    completion_ids = TOK(" dog cat", add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == prompt_ids + completion_ids + [EOS]
    assert prompt_ids[0] == BOS
    assert row["completion_mask"] == [0] * len(prompt_ids) + [1] * (len(completion_ids) + 1)
    assert masked_text(row["input_ids"], row["completion_mask"]) == " dog cat</s>"


def test_preference_rows_share_the_prompt_and_keep_margin() -> None:
    row = tokenize([{"prompt": "Review:", "chosen": " great", "rejected": " dull film", "margin": 2.0}], "preference")[
        0
    ]
    assert masked_text(row["chosen_input_ids"], row["chosen_completion_mask"]) == " great</s>"
    assert masked_text(row["rejected_input_ids"], row["rejected_completion_mask"]) == " dull film</s>"
    assert row["chosen_input_ids"][:8] == row["rejected_input_ids"][:8] == TOK("Review:")["input_ids"]
    assert row["margin"] == 2.0


def test_conversational_sft_trains_on_assistant_turns_only() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "Reverse: cat dog"},
        {"role": "assistant", "content": "dog cat"},
        {"role": "user", "content": "Reverse: sun sky"},
        {"role": "assistant", "content": "sky sun"},
    ]
    row = tokenize([{"messages": messages}], "completion")[0]
    ids, mask = row["input_ids"], row["completion_mask"]
    assert ids[0] == BOS
    assert TOK.decode(ids[1:]) == TOK.apply_chat_template(messages, tokenize=False)
    # The byte template closes a turn with "</s>\n"; those tokens belong to the assistant's turn.
    assert masked_text(ids, mask) == "dog cat</s>\nsky sun</s>\n"
    untrained = TOK.decode([t for t, m in zip(ids, mask, strict=True) if not m], skip_special_tokens=True)
    assert "Reverse: cat dog" in untrained and "dog cat" not in untrained


def test_conversational_preference_and_prompt_rows() -> None:
    prompt = [{"role": "user", "content": "hi"}]
    row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "hello"}],
           "rejected": [{"role": "assistant", "content": "go away"}]}  # fmt: skip
    pref = tokenize([row], "preference")[0]
    assert masked_text(pref["chosen_input_ids"], pref["chosen_completion_mask"]) == "hello</s>\n"
    assert masked_text(pref["rejected_input_ids"], pref["rejected_completion_mask"]) == "go away</s>\n"
    prompts = tokenize([{"prompt": prompt, "answer": "hello"}], "prompt")[0]
    assert prompts["prompt"] == "<|user|>hi</s>\n<|assistant|>"
    assert prompts["prompt_input_ids"] == TOK(prompts["prompt"])["input_ids"]
    assert prompts["answer"] == "hello"  # metadata stays in the dataset


def test_a_template_that_rewrites_earlier_turns_is_an_error() -> None:
    tok = byte_tokenizer()
    # Numbers every turn by the conversation's length, so a shorter conversation is no prefix of the whole.
    tok.chat_template = "{% for m in messages %}{{ messages|length }}{{ m['content'] }}{% endfor %}"
    ds = Dataset.from_list([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    with pytest.raises(DataError, match=r"t\.jsonl: row 1: the chat template does not render .* prefixes"):
        tokenize_records(ds, "completion", tok, 64, source="t.jsonl")


def test_truncation_cuts_the_prompt_left_and_the_completion_right() -> None:
    row = {"prompt": "abcdefghij", "completion": "0123456789"}
    out = tokenize([row], "completion", max_length=8, max_prompt_length=3)[0]
    assert TOK.decode(out["input_ids"]) == "hij01234"
    assert out["completion_mask"] == [0, 0, 0, 1, 1, 1, 1, 1]
    whole = tokenize([row], "completion", max_length=12)[0]  # BOS + 10 prompt bytes leave one completion token
    assert masked_text(whole["input_ids"], whole["completion_mask"]) == "0"


def test_a_completion_truncated_to_nothing_is_an_error() -> None:
    rows = [{"prompt": "ab", "completion": " c"}, {"prompt": "abcdefghij", "completion": " c"}]
    with pytest.raises(DataError, match=r"t\.jsonl: row 2: no completion tokens are left .* max_length=11"):
        tokenize(rows, "completion", max_length=11)


def test_prompt_rows_are_cut_from_the_left() -> None:
    out = tokenize([{"prompt": "abcdefghij"}], "prompt", max_prompt_length=4)[0]
    assert TOK.decode(out["prompt_input_ids"]) == "ghij"


ROWS = [
    {"prompt": "a", "completion": " bc", "label": True},
    {"prompt": "defg", "completion": " h", "label": False},
]


@pytest.mark.parametrize("kind", ["completion", "unpaired"])
def test_left_and_right_padding_hold_the_same_tokens(kind: str) -> None:
    rows = tokenize(ROWS, kind).to_list()
    right, left = Collator(kind, PAD)(rows), Collator(kind, PAD, padding_side="left")(rows)
    assert right["input_ids"].shape == left["input_ids"].shape == (2, 8)  # BOS + "defg" + " h" + EOS
    assert right["input_ids"][0, -1] == PAD and left["input_ids"][0, 0] == PAD
    for i, row in enumerate(rows):
        for batch in (right, left):
            keep = batch["attention_mask"][i].bool()
            assert batch["input_ids"][i][keep].tolist() == row["input_ids"]
            assert batch["completion_mask"][i][keep].tolist() == row["completion_mask"]
            assert batch["completion_mask"][i][~keep].sum() == 0
    if kind == "unpaired":
        assert right["label"].tolist() == [True, False] and right["label"].dtype == torch.bool


def test_preference_batches_pad_chosen_and_rejected_to_one_length() -> None:
    rows = tokenize(
        [{"prompt": "p", "chosen": " a", "rejected": " a much longer answer", "margin": 1.0},
         {"prompt": "prompt", "chosen": " longer chosen", "rejected": " b", "margin": 3}],
        "preference",
    ).to_list()  # fmt: skip
    for side in ("right", "left"):
        batch = Collator("preference", PAD, padding_side=side)(rows)
        longest = max(len(r[f"{s}_input_ids"]) for r in rows for s in ("chosen", "rejected"))
        for name in ("input_ids", "attention_mask", "completion_mask"):
            assert batch[f"chosen_{name}"].shape == batch[f"rejected_{name}"].shape == (2, longest)
        assert torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]]).shape == (4, longest)
        keep = batch["rejected_attention_mask"][1].bool()
        assert batch["rejected_input_ids"][1][keep].tolist() == rows[1]["rejected_input_ids"]
        assert batch["margin"].tolist() == [1.0, 3.0]


def test_prompt_batches_pad_on_the_left_by_default() -> None:
    rows = tokenize([{"prompt": "a"}, {"prompt": "abc"}], "prompt").to_list()
    batch = Collator("prompt", PAD)(rows)
    assert batch["prompt_input_ids"].tolist() == [[PAD, PAD, BOS, 97 - 30], [BOS, 97 - 30, 98 - 30, 99 - 30]]
    assert batch["prompt_attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert set(batch) == {"prompt_input_ids", "prompt_attention_mask", "metadata"}
    assert batch["metadata"] == [{"prompt": "a"}, {"prompt": "abc"}]  # the rows' other columns, for rewards


def test_every_row_cut_to_nothing_is_reported_not_just_the_first() -> None:
    rows = [{"prompt": "ab", "completion": " c"}] + [{"prompt": "abcdefghij", "completion": " c"}] * 5
    with pytest.raises(DataError) as err:
        tokenize(rows, "completion", max_length=11)
    lines = str(err.value).splitlines()
    assert [line.split(": ")[1] for line in lines[:3]] == ["row 2", "row 3", "row 4"]
    assert lines[0].startswith("t.jsonl: row 2: no completion tokens are left after truncation to max_length=11")
    assert lines[3] == "(2 more bad rows)"


def test_truncation_is_reported_once_per_source(caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"prompt": "Q", "completion": " short"}] + [{"prompt": "Q", "completion": " " + "x" * 100}] * 3
    with caplog.at_level(logging.WARNING, logger="alignkit.data.tokenization"):
        out = tokenize_records(Dataset.from_list(rows), "completion", TOK, 16, source="t.jsonl", key="data.train")
    assert [len(ids) for ids in out["input_ids"]] == [9, 16, 16, 16]
    assert set(out.column_names) == {"input_ids", "completion_mask"}
    assert [r.getMessage() for r in caplog.records] == [
        "data.train (t.jsonl): 3 of 4 rows were truncated (completions from the right to max_length 16); "
        "raise data.max_length to keep them whole"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="alignkit.data.tokenization"):
        tokenize(rows, "completion", max_length=16, max_prompt_length=1)
        tokenize([{"prompt": "abcdefghij"}, {"prompt": "ab"}], "prompt", max_prompt_length=4)
        tokenize(rows[:1], "completion")
    assert [r.getMessage() for r in caplog.records] == [
        "t.jsonl: 4 of 4 rows were truncated (prompts from the left to max_prompt_length 1, completions from the "
        "right to max_length 16); raise data.max_length to keep them whole",
        "t.jsonl: 1 of 2 prompts longer than max_prompt_length 4 were cut from the left",
    ]


def test_a_conversation_opening_with_the_assistant_is_an_error_with_a_fix() -> None:
    # Rendering the empty conversation before it raised transformers' "Cannot apply chat template to an empty
    # conversation", with no fix.
    rows = [{"messages": [{"role": "assistant", "content": "hi"}]}]
    with pytest.raises(DataError, match=r"t\.jsonl: row 1: message 1 is an assistant turn, .* with a user or system"):
        tokenize(rows, "completion")


def test_a_multi_line_template_error_stays_on_its_row_line() -> None:
    # Every line of a DataError starts with the source; a library's message broke that with its newlines.
    tok = byte_tokenizer()
    tok.chat_template = "{{ raise_exception('this template\nrefuses') }}"
    ds = Dataset.from_list([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    with pytest.raises(DataError) as err:
        tokenize_records(ds, "completion", tok, 64, source="t.jsonl")
    assert str(err.value) == "t.jsonl: row 1: this template refuses"
