"""The review testbed: the grammar, the exact true reward, the Bradley-Terry labeller and its generators."""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict

import pytest

from alignkit.data import DATASETS, GENERATOR_KINDS, SourceSpec, load_records
from alignkit.data.sentiment import (
    INTENSIFIERS,
    REVIEW_NEGATIVE,
    REVIEW_NEUTRAL,
    REVIEW_NOUNS,
    REVIEW_POSITIVE,
    Labeller,
    continue_review,
    sample_review,
    sigmoid,
    true_reward,
)
from alignkit.rewards import REWARDS
from alignkit.rewards.rules import review_sentiment

# The grammar written out again as a regex, independently of the state machine that samples it.
_CLAUSE = (
    rf"the ({'|'.join(REVIEW_NOUNS)}) was (?:({'|'.join(INTENSIFIERS)}) )?"
    rf"({'|'.join(REVIEW_POSITIVE + REVIEW_NEGATIVE + REVIEW_NEUTRAL)})"
)
REVIEW = re.compile(rf"{_CLAUSE}(?: and {_CLAUSE})?")


def within_4_se(outcomes: list[bool], p: float) -> bool:
    """The empirical rate of `outcomes` is within 4 binomial standard errors of p."""
    se = math.sqrt(p * (1 - p) / len(outcomes))
    return abs(sum(outcomes) / len(outcomes) - p) <= 4 * se


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # lovely +1; very dull 2 x -1 = -2 -> -1
        ("the plot was very dull and the music was lovely", -1.0),
        # Great +1 (case); really GREAT! 2 x +1 = +2 (case, punctuation stripped) -> 3
        ("Great, really GREAT!", 3.0),
        # an intensifier before a neutral word doubles 0 -> 0
        ("the film was really long", 0.0),
        # only the word right before counts: very dull -> -2 (the first 'very' precedes 'very', not an adjective)
        ("very very dull", -2.0),
        # an intensifier after the adjective does nothing: dull -1
        ("dull very", -1.0),
        # unknown words 0; 'greatness' is not the word 'great'; '(superb)' is superb after stripping -> +1
        ("the popcorn was xyzzy, greatness (superb)", 1.0),
        # words that are only punctuation are dropped, so 'very' is still right before 'boring': 2 x -1 -> -2
        ("very -- boring", -2.0),
        # really superb +2, really awful -2 -> 0
        ("the acting was really superb and the ending was really awful", 0.0),
        ("", 0.0),
    ],
)
def test_true_reward_by_hand(text: str, expected: float) -> None:
    assert true_reward(text) == expected
    assert type(true_reward(text)) is float


def test_sampled_reviews_follow_the_grammar_and_its_rates() -> None:
    """Over 20,000 reviews: a second clause half the time, an intensifier in 30% of clauses, adjectives 3:3:4."""
    rng = random.Random(0)
    reviews = [" ".join(sample_review(rng)) for _ in range(20_000)]
    matches = [REVIEW.fullmatch(r) for r in reviews]
    assert all(matches), [r for r, m in zip(reviews, matches, strict=True) if not m][:3]
    assert within_4_se([" and " in r for r in reviews], 0.5)
    clauses = [c for r in reviews for c in r.split(" and ")]
    assert within_4_se([any(f" {i} " in c for i in INTENSIFIERS) for c in clauses], 0.3)
    adjectives = [c.split()[-1] for c in clauses]
    assert within_4_se([a in REVIEW_POSITIVE for a in adjectives], 0.3)
    assert within_4_se([a in REVIEW_NEGATIVE for a in adjectives], 0.3)
    # The grammar itself has no sentiment lean: mean true reward 0 within 4 standard errors.
    rewards = [true_reward(r) for r in reviews]
    mean = sum(rewards) / len(rewards)
    se = math.sqrt(sum((x - mean) ** 2 for x in rewards) / (len(rewards) - 1) / len(rewards))
    assert abs(mean) <= 4 * se


def test_continue_review_keeps_every_prefix_and_ends_in_a_complete_clause() -> None:
    rng = random.Random(1)
    for _ in range(300):
        review = sample_review(rng)
        for cut in range(len(review) + 1):
            out = continue_review(rng, review[:cut])
            assert out[:cut] == review[:cut]
            assert REVIEW.fullmatch(" ".join(out))
    two_clauses = ["the", "plot", "was", "dull", "and", "the", "music", "was", "very", "lovely"]
    assert continue_review(rng, two_clauses) == two_clauses  # nothing may follow a second clause
    # a complete first clause ends there or goes on with "and ..." (P_SECOND = 0.5)
    one_clause = ["the", "plot", "was", "dull"]
    endings = [len(continue_review(rng, one_clause)) == 4 for _ in range(2000)]
    assert within_4_se(endings, 0.5)


def test_continue_review_is_seeded() -> None:
    prefix = ["the", "plot"]
    assert continue_review(random.Random(5), prefix) == continue_review(random.Random(5), prefix)
    assert sample_review(random.Random(5)) == continue_review(random.Random(5), [])


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("the plot is", r"word 3 'is' cannot come here in a review; expected 'was'"),
        ("plot", r"word 1 'plot' cannot come here in a review; expected 'the'"),
        ("the plot was ok", r"word 4 'ok' cannot come here.*expected one of very, really, great"),
        ("the plot was very very", r"word 5 'very' cannot come here.*expected one of great"),
        ("the plot was dull but", r"word 5 'but' cannot come here.*expected 'and' or the end of the review"),
        ("the plot was dull and the cast was odd and", r"word 10 'and'.*expected the end of the review"),
        ("The plot", r"word 1 'The'"),  # the grammar is lowercase; only true_reward forgives case
    ],
)
def test_bad_prefix_names_the_word(prefix: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        continue_review(random.Random(0), prefix.split())


def test_sigmoid_is_stable() -> None:
    """sigmoid(0) = 1/2; sigmoid(x) + sigmoid(-x) = 1; no overflow at |x| = 1000."""
    assert sigmoid(0.0) == 0.5
    assert sigmoid(2.0) + sigmoid(-2.0) == pytest.approx(1.0)
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0


# Reward differences r(a) - r(b) of 0, 1, 2 and -1: 'dull' -1 vs 'weak' -1; 'fun' +1 vs 'long' 0;
# 'very fun' +2 vs 'long' 0; 'long' 0 vs 'fun' +1.
BT_PAIRS = [
    ("the plot was dull", "the cast was weak", 0),
    ("the plot was fun", "the plot was long", 1),
    ("the plot was very fun", "the plot was long", 2),
    ("the plot was long", "the plot was fun", -1),
]


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(("a", "b", "d"), BT_PAIRS)
def test_labeller_preferences_follow_bradley_terry(a: str, b: str, d: int, temperature: float) -> None:
    """P(a preferred) = sigmoid(d / T): e.g. d = 2, T = 2 -> sigmoid(1) = 0.731; checked on 20,000 draws."""
    labeller = Labeller(temperature=temperature, rng=random.Random(d))
    assert labeller.p_prefer(a, b) == pytest.approx(sigmoid(d / temperature))
    assert within_4_se([labeller.prefer(a, b) for _ in range(20_000)], sigmoid(d / temperature))


def test_labeller_desirability_by_hand() -> None:
    """'very dull' r = -2, threshold -1, T 2: sigmoid((-2 - -1) / 2) = sigmoid(-0.5) = 0.3775; 20,000 draws."""
    labeller = Labeller(temperature=2.0, threshold=-1.0, rng=random.Random(0))
    assert labeller.p_desirable("the plot was very dull") == pytest.approx(1 / (1 + math.exp(0.5)))
    assert within_4_se([labeller.label("the plot was very dull") for _ in range(20_000)], sigmoid(-0.5))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_labeller_needs_a_positive_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match=r"temperature must be positive"):
        Labeller(temperature=temperature, rng=random.Random(0))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_review_pairs_follow_bradley_terry_per_reward_gap(temperature: float) -> None:
    """Per gap |d| of the full texts' true rewards, the higher side is chosen at rate sigmoid(|d| / T)."""
    hits: dict[float, list[bool]] = defaultdict(list)
    for row in DATASETS.get("review_pairs")(n=20_000, seed=0, temperature=temperature):
        d = true_reward(row["prompt"] + row["chosen"]) - true_reward(row["prompt"] + row["rejected"])
        if d != 0:  # a tie has no higher side
            hits[abs(d)].append(d > 0)
    checked = [gap for gap, outcomes in hits.items() if len(outcomes) >= 200]
    assert len(checked) >= 3, {gap: len(o) for gap, o in hits.items()}
    for gap in checked:
        assert within_4_se(hits[gap], sigmoid(gap / temperature)), (gap, sum(hits[gap]) / len(hits[gap]))


@pytest.mark.parametrize(("temperature", "threshold"), [(1.0, 0.0), (2.0, 1.0)])
def test_review_labels_follow_the_labeller_per_reward(temperature: float, threshold: float) -> None:
    """Per true reward r of the full text, the label is True at rate sigmoid((r - threshold) / T)."""
    rows = DATASETS.get("review_labels")(n=20_000, seed=0, temperature=temperature, threshold=threshold)
    labels: dict[float, list[bool]] = defaultdict(list)
    for row in rows:
        labels[true_reward(row["prompt"] + row["completion"])].append(row["label"])
    checked = [r for r, outcomes in labels.items() if len(outcomes) >= 200]
    assert len(checked) >= 5, {r: len(o) for r, o in labels.items()}
    for r in checked:
        assert within_4_se(labels[r], sigmoid((r - threshold) / temperature)), r


def test_review_generators_are_registered_with_their_kinds() -> None:
    assert GENERATOR_KINDS["reviews"] == ("completion", "prompt")
    assert GENERATOR_KINDS["review_prompts"] == ("prompt",)
    assert GENERATOR_KINDS["review_pairs"] == ("preference", "prompt")
    assert GENERATOR_KINDS["review_labels"] == ("unpaired", "prompt")
    assert len(load_records(SourceSpec(generator="review_pairs", args={"n": 20, "temperature": 2.0}), "preference"))


@pytest.mark.parametrize("name", ["reviews", "review_prompts", "review_pairs", "review_labels"])
def test_review_generators_layout(name: str) -> None:
    """Prompts are 2-4 word grammar prefixes; every completion is non-empty and finishes a grammar review."""
    make = DATASETS.get(name)
    rows = make(n=500, seed=2)
    assert rows == make(n=500, seed=2) and rows != make(n=500, seed=3)
    assert {len(row["prompt"].split()) for row in rows} == {2, 3, 4}
    for row in rows:
        continue_review(random.Random(0), row["prompt"].split())  # a valid prefix, or this raises
        completions = [row[k] for k in ("completion", "chosen", "rejected") if k in row]
        for completion in completions:
            assert completion.startswith(" ") and completion.strip()
            assert REVIEW.fullmatch(row["prompt"] + completion)
        if name == "review_pairs":
            assert row["chosen"] != row["rejected"]
        if name == "review_labels":
            assert type(row["label"]) is bool


def test_review_labels_are_balanced_at_the_defaults() -> None:
    """Threshold 0 and a grammar without lean: about half the reviews are labelled desirable."""
    rows = DATASETS.get("review_labels")(n=4000, seed=1)
    assert within_4_se([row["label"] for row in rows], 0.5)


def test_review_generators_reject_a_bad_temperature() -> None:
    with pytest.raises(ValueError, match=r"generator:review_pairs: temperature must be positive \(got 0\)"):
        load_records(SourceSpec(generator="review_pairs", args={"temperature": 0}), "preference")


def test_review_sentiment_rule_reward() -> None:
    """'the plot was' + ' very dull' -> very dull: 2 x -1 = -2; the prompt's 'lovely' counts too: +1 - 2 = -1."""
    assert "review_sentiment" in REWARDS.names()
    assert REWARDS.get("review_sentiment") is review_sentiment
    assert review_sentiment(["the plot was"], [" very dull"]) == [-2.0]
    assert review_sentiment(["the music was lovely and the plot was", "x"], [" very dull", " fun"]) == [-1.0, 1.0]
