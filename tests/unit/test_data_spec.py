"""The data config specs' validation messages, and build_datasets end to end on generated data."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from alignkit.data import DataSpec, SourceSpec, build_datasets, write_jsonl
from alignkit.data.sources import DataError
from alignkit.models.tokenizer import byte_tokenizer


def test_unknown_generator_suggests_the_closest_name() -> None:
    with pytest.raises(
        ValidationError, match=r"unknown dataset 'revers_words'; allowed: .*did you mean 'reverse_words'"
    ):
        SourceSpec(generator="revers_words")


@pytest.mark.parametrize(
    ("fields", "got"),
    [
        ({}, "neither"),
        ({"path": "a.jsonl", "generator": "reverse_words"}, "path and generator"),
        ({"path": "a.jsonl", "hub": "org/set"}, "path and hub"),
    ],
)
def test_exactly_one_of_path_generator_and_hub(fields: dict, got: str) -> None:
    with pytest.raises(ValidationError, match=rf"set exactly one of path, generator or hub \(got {got}\)"):
        SourceSpec(**fields)


def test_generator_arguments_are_checked_against_its_signature() -> None:
    with pytest.raises(
        ValidationError, match=r"\(got 'max_word'\); allowed: n, seed, min_words, max_words; did you mean"
    ):
        SourceSpec(generator="reverse_words", args={"max_word": 3})
    assert SourceSpec(generator="reverse_words", args={"n": 3, "max_words": 3}).args == {
        "n": 3,
        "max_words": 3,
    }


def test_source_field_checks() -> None:
    with pytest.raises(ValidationError, match=r"unknown standard name \(got 'promt'\).*did you mean 'prompt'"):
        SourceSpec(path="a.jsonl", columns={"promt": "question"})
    with pytest.raises(ValidationError, match=r"args apply only to a generator"):
        SourceSpec(path="a.jsonl", args={"n": 3})
    with pytest.raises(ValidationError, match=r"extra"):
        SourceSpec(path="a.jsonl", colums={})


def test_data_spec_checks() -> None:
    train = SourceSpec(generator="reverse_words")
    with pytest.raises(ValidationError, match=r"max_prompt_length must be below max_length"):
        DataSpec(train=train, max_length=64, max_prompt_length=64)
    with pytest.raises(ValidationError, match=r"eval_fraction applies only when eval is not given"):
        DataSpec(train=train, eval=train, eval_fraction=0.1)
    with pytest.raises(ValidationError, match=r"less than or equal to 0.5"):
        DataSpec(train=train, eval_fraction=0.6)
    assert DataSpec(train={"generator": "reverse_words"}).max_length == 512


def test_build_datasets_holds_out_a_seeded_eval_split() -> None:
    spec = DataSpec(train={"generator": "reverse_words", "args": {"n": 40}}, eval_fraction=0.25)
    train, eval_ = build_datasets(spec, "completion", byte_tokenizer(), seed=0)
    assert (len(train), len(eval_)) == (30, 10)
    again = build_datasets(spec, "completion", byte_tokenizer(), seed=0)[1]
    assert again["input_ids"] == eval_["input_ids"]
    assert set(train.column_names) == {"input_ids", "completion_mask"}


def test_build_datasets_with_an_eval_file(tmp_path: Path) -> None:
    path = write_jsonl([{"p": "Review:", "good": " great", "bad": " dull"}] * 3, tmp_path / "eval.jsonl")
    spec = DataSpec(
        train={"generator": "sentiment_pairs", "args": {"n": 8}},
        eval={"path": str(path), "columns": {"prompt": "p", "chosen": "good", "rejected": "bad"}},
    )
    train, eval_ = build_datasets(spec, "preference", byte_tokenizer(), seed=0)
    assert len(train) == 8 and "margin" in train.column_names
    assert len(eval_) == 3 and "margin" not in eval_.column_names
    assert build_datasets(spec.model_copy(update={"eval": None}), "preference", byte_tokenizer(), 0)[1] is None


def test_build_datasets_says_once_how_many_long_rows_it_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"prompt": "Q", "completion": " a"}] * 3 + [{"prompt": "Q", "completion": " " + "x" * (1 << 18)}]
    path = write_jsonl(rows, tmp_path / "sft.jsonl")
    spec = DataSpec(train={"path": str(path)}, max_length=64)
    for _ in range(2):  # the second build may reuse datasets' cache of the first map: the count must survive it
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="alignkit.data.tokenization"):
            train, _ = build_datasets(spec, "completion", byte_tokenizer(), seed=0)
        assert max(len(ids) for ids in train["input_ids"]) == 64
        assert [r.getMessage() for r in caplog.records] == [
            f"data.train ({path}): 1 of 4 rows were truncated (completions from the right to max_length 64); "
            "raise data.max_length to keep them whole"
        ]
    path = write_jsonl([*rows, {"prompt": "x" * 100, "completion": " a"}], tmp_path / "long_prompt.jsonl")
    with pytest.raises(DataError, match=rf"^{path}: row 5: no completion tokens are left .* set data.max_prompt"):
        build_datasets(spec.model_copy(update={"train": SourceSpec(path=str(path))}), "completion", byte_tokenizer(), 0)
