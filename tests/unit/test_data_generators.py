"""Registered generators: seeded, valid for every kind they claim, and with the label statistics promised."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import pytest

from alignkit.data import DATASETS, GENERATOR_KINDS, SourceSpec, load_records, sentiment_score, write_jsonl


@pytest.mark.parametrize("name", DATASETS.names())
def test_generators_are_deterministic_per_seed(name: str) -> None:
    make = DATASETS.get(name)
    assert make(n=20, seed=3) == make(n=20, seed=3)
    assert make(n=20, seed=3) != make(n=20, seed=4)
    assert len(make(n=7)) == 7
    assert DATASETS.describe()[DATASETS.names().index(name)][1]  # a description for `alignkit list`


@pytest.mark.parametrize(("name", "kind"), [(n, k) for n, kinds in GENERATOR_KINDS.items() for k in kinds])
def test_generator_rows_pass_the_checks_of_their_kinds(name: str, kind: str) -> None:
    assert len(load_records(SourceSpec(generator=name, args={"n": 50}), kind)) == 50


def test_reverse_words_layout() -> None:
    for row in DATASETS.get("reverse_words")(n=50, min_words=2, max_words=4):
        words = row["prompt"].removeprefix("reverse: ").removesuffix(" =").split()
        assert 2 <= len(words) <= 4
        assert row["completion"] == " " + " ".join(reversed(words))


def test_chat_sft_turns() -> None:
    row = DATASETS.get("chat_sft")(n=1, turns=2)[0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * 2
    words = row["messages"][0]["content"].removeprefix("Reverse the words: ").split()
    assert row["messages"][1]["content"] == " ".join(reversed(words))


def test_sentiment_pairs_without_noise_choose_the_higher_score() -> None:
    for row in DATASETS.get("sentiment_pairs")(n=300, seed=1):
        diff = sentiment_score(row["chosen"]) - sentiment_score(row["rejected"])
        assert diff > 0 and row["margin"] == diff
        assert row["prompt"] == "Review of the film:"


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_sentiment_pairs_noise_follows_bradley_terry(temperature: float) -> None:
    """P(higher score chosen) = sigmoid(|diff| / T): compared per |diff| and on average over 20,000 pairs."""
    rows = DATASETS.get("sentiment_pairs")(n=20_000, seed=0, noise=True, temperature=temperature)
    hits: dict[float, list[bool]] = defaultdict(list)
    for row in rows:
        hits[row["margin"]].append(sentiment_score(row["chosen"]) > sentiment_score(row["rejected"]))
    expected = {d: 1 / (1 + math.exp(-d / temperature)) for d in hits}
    for d, outcomes in hits.items():
        if len(outcomes) >= 500:
            assert sum(outcomes) / len(outcomes) == pytest.approx(expected[d], abs=0.05)
    observed = sum(sum(o) for o in hits.values()) / len(rows)
    assert observed == pytest.approx(sum(expected[d] * len(o) for d, o in hits.items()) / len(rows), abs=0.015)
    assert observed < 0.95  # the noise is really there


def test_sentiment_unpaired_labels() -> None:
    rows = DATASETS.get("sentiment_unpaired")(n=300)
    assert all(row["label"] is (sentiment_score(row["completion"]) > 0) for row in rows)
    assert 0.2 < sum(row["label"] for row in rows) / len(rows) < 0.8


def test_bad_generator_arguments_are_data_errors() -> None:
    with pytest.raises(ValueError, match=r"generator:reverse_words: need 1 <= min_words <= max_words"):
        load_records(SourceSpec(generator="reverse_words", args={"min_words": 5, "max_words": 2}), "completion")


def test_write_jsonl_round_trip(tmp_path: Path) -> None:
    rows = DATASETS.get("chat_sft")(n=5)
    path = write_jsonl(rows, tmp_path / "deep" / "chat.jsonl")
    assert load_records(SourceSpec(path=str(path)), "completion").to_list() == rows
