"""A controlled sentiment testbed: a grammar of short film reviews, its exact true reward, a noisy labeller.

In the spirit of the DPO paper's controlled sentiment generation, but generated rather than downloaded and
scored exactly, so a trained policy's true reward (and its KL from the grammar) can be measured without a
learned classifier standing in between.

    review := clause | clause "and" clause
    clause := "the" NOUN "was" [INTENSIFIER] ADJ

Reviews are sampled word by word by one small state machine, so any valid prefix (a prompt) can be continued.
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from alignkit.data.generators import NEGATIVE, POSITIVE, generator

REVIEW_NOUNS = ("film", "plot", "acting", "music", "ending", "story", "cast", "script")
INTENSIFIERS = ("very", "really")
# The same positive and negative adjectives as the older sentiment_* generators, so the two testbeds agree.
REVIEW_POSITIVE = POSITIVE
REVIEW_NEGATIVE = NEGATIVE
REVIEW_NEUTRAL = ("long", "short", "loud", "quiet", "slow", "simple", "odd", "new")
# Positive and negative equally likely: the grammar's own reviews average a true reward of 0, so any lean a
# policy shows comes from training, not from its SFT data.
ADJECTIVE_POOLS = (REVIEW_POSITIVE, REVIEW_NEGATIVE, REVIEW_NEUTRAL)
ADJECTIVE_WEIGHTS = (0.3, 0.3, 0.4)
P_SECOND = 0.5  # a second clause after "and"
P_INTENSIFIER = 0.3
MIN_PROMPT_WORDS, MAX_PROMPT_WORDS = 2, 4

_ADJECTIVES = REVIEW_POSITIVE + REVIEW_NEGATIVE + REVIEW_NEUTRAL
_SCORES = {**{w: 1 for w in REVIEW_POSITIVE}, **{w: -1 for w in REVIEW_NEGATIVE}}
_PUNCTUATION = string.punctuation + "“”‘’…"

# The state machine's slots: what the next word may be. A state is (slot, clause number, 1 or 2).
_THE, _NOUN, _WAS, _MODIFIER, _ADJ, _DONE = "the", "noun", "was", "modifier", "adjective", "done"
_ALLOWED: dict[str, tuple[str, ...]] = {
    _THE: ("the",),
    _NOUN: REVIEW_NOUNS,
    _WAS: ("was",),
    _MODIFIER: INTENSIFIERS + _ADJECTIVES,
    _ADJ: _ADJECTIVES,
}


def _step(slot: str, clause: int, word: str) -> tuple[str, int]:
    """The state after `word`; raises ValueError (saying what may come instead) when the grammar forbids it."""
    if slot == _DONE:
        if clause == 1 and word == "and":
            return _THE, 2
        expected = "'and' or the end of the review" if clause == 1 else "the end of the review"
    elif word in _ALLOWED[slot]:
        if slot == _MODIFIER and word in INTENSIFIERS:
            return _ADJ, clause
        following = {_THE: _NOUN, _NOUN: _WAS, _WAS: _MODIFIER, _MODIFIER: _DONE, _ADJ: _DONE}
        return following[slot], clause
    else:
        allowed = _ALLOWED[slot]
        expected = f"'{allowed[0]}'" if len(allowed) == 1 else f"one of {', '.join(allowed)}"
    raise ValueError(f"'{word}' cannot come here in a review; expected {expected}")


def _draw(rng: random.Random, slot: str, clause: int) -> str | None:
    """The next word from `slot`, or None where the review ends."""
    if slot == _DONE:
        return "and" if clause == 1 and rng.random() < P_SECOND else None
    if slot == _NOUN:
        return rng.choice(REVIEW_NOUNS)
    if slot == _MODIFIER and rng.random() < P_INTENSIFIER:
        return rng.choice(INTENSIFIERS)
    if slot in (_MODIFIER, _ADJ):
        return rng.choice(rng.choices(ADJECTIVE_POOLS, ADJECTIVE_WEIGHTS)[0])
    return slot  # "the" and "was" are the only words of their slots


def continue_review(rng: random.Random, prefix: Sequence[str]) -> list[str]:
    """A full review (list of words) that starts with `prefix`, a valid prefix of the grammar.

    Raises ValueError naming the first word of `prefix` that the grammar does not allow where it stands.
    The review always ends in a complete clause; a prefix that already is a complete first clause may come
    back unchanged (with probability 1 - P_SECOND).
    """
    slot, clause = _THE, 1
    for i, word in enumerate(prefix):
        try:
            slot, clause = _step(slot, clause, word)
        except ValueError as e:
            raise ValueError(f"bad review prefix {' '.join(prefix)!r}: word {i + 1} {e}") from None
    words = list(prefix)
    while (word := _draw(rng, slot, clause)) is not None:
        words.append(word)
        slot, clause = _step(slot, clause, word)
    return words


def sample_review(rng: random.Random) -> list[str]:
    """A review drawn from the grammar, as a list of words: ['the', 'plot', 'was', 'very', 'dull']."""
    return continue_review(rng, [])


def true_reward(text: str) -> float:
    """The exact sentiment of any text: +1 per positive adjective, -1 per negative, doubled after an intensifier.

    Works on ungrammatical text too (policies write it): words are split on whitespace, lowercased and
    stripped of surrounding punctuation; words that are only punctuation are dropped, and unknown and
    neutral words score 0. The whole text counts, prompt included, as the DPO paper's classifier scored it.

    'the plot was very dull and the music was lovely' -> very dull: 2 x -1 = -2; lovely: +1; total -1.0.
    'Great, really GREAT!' -> great: +1; really great: 2 x +1 = +2; total 3.0.
    """
    words = [w for w in (raw.lower().strip(_PUNCTUATION) for raw in text.split()) if w]
    total = 0
    for i, word in enumerate(words):
        if word in _SCORES:
            total += _SCORES[word] * (2 if i > 0 and words[i - 1] in INTENSIFIERS else 1)
    return float(total)


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x) without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@dataclass
class Labeller:
    """A noisy Bradley-Terry annotator of the true reward: the larger the reward gap, the surer the label.

    Callers pass full texts (prompt + completion), since the true reward scores the whole review.
    """

    temperature: float = 1.0
    threshold: float = 0.0  # the reward at which a single text is desirable half the time
    rng: random.Random = field(kw_only=True)

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive (got {self.temperature})")

    def p_prefer(self, a: str, b: str) -> float:
        """P(a preferred to b) = sigmoid((r(a) - r(b)) / temperature)."""
        return sigmoid((true_reward(a) - true_reward(b)) / self.temperature)

    def prefer(self, a: str, b: str) -> bool:
        """Whether this draw prefers a to b."""
        return self.rng.random() < self.p_prefer(a, b)

    def p_desirable(self, text: str) -> float:
        """P(text labelled desirable) = sigmoid((r(text) - threshold) / temperature)."""
        return sigmoid((true_reward(text) - self.threshold) / self.temperature)

    def label(self, text: str) -> bool:
        """Whether this draw labels the text desirable."""
        return self.rng.random() < self.p_desirable(text)


def _prompt_and_rest(rng: random.Random) -> tuple[list[str], list[str]]:
    """A drawn review cut after 2 to 4 words, always before its end so the rest is never empty."""
    review = sample_review(rng)  # at least 4 words: "the NOUN was ADJ"
    cut = rng.randint(MIN_PROMPT_WORDS, min(MAX_PROMPT_WORDS, len(review) - 1))
    return review[:cut], review[cut:]


def _nonempty_continuation(rng: random.Random, prefix: list[str]) -> list[str]:
    """The rest of a review after `prefix`, redrawn while empty: a completion must say something.

    Only a prefix that already is a complete clause can end at once; redrawing forces its "and ...".
    """
    while not (rest := continue_review(rng, prefix)[len(prefix) :]):
        pass
    return rest


@generator("reviews", "completion", "prompt")
def reviews(n: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Grammar film reviews cut after 2-4 words: prompt 'the plot was', completion ' very dull' (SFT data)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, rest = _prompt_and_rest(rng)
        rows.append({"prompt": " ".join(prompt), "completion": " " + " ".join(rest)})
    return rows


@generator("review_prompts", "prompt")
def review_prompts(n: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Review prefixes of 2-4 words ('the plot was') to continue, for online RL and held-out evaluation."""
    rng = random.Random(seed)
    return [{"prompt": " ".join(_prompt_and_rest(rng)[0])} for _ in range(n)]


@generator("review_pairs", "preference", "prompt")
def review_pairs(n: int = 1000, seed: int = 0, temperature: float = 1.0) -> list[dict[str, Any]]:
    """Two continuations of a review prefix, chosen by a Bradley-Terry labeller of the true reward."""
    rng = random.Random(seed)
    labeller = Labeller(temperature=temperature, rng=rng)
    rows = []
    for _ in range(n):
        prompt = _prompt_and_rest(rng)[0]
        a = _nonempty_continuation(rng, prompt)
        b = _nonempty_continuation(rng, prompt)
        while b == a:  # identical texts teach nothing and make a pair loss degenerate
            b = _nonempty_continuation(rng, prompt)
        prompt_text, a_text, b_text = " ".join(prompt), " " + " ".join(a), " " + " ".join(b)
        first = labeller.prefer(prompt_text + a_text, prompt_text + b_text)
        chosen, rejected = (a_text, b_text) if first else (b_text, a_text)
        rows.append({"prompt": prompt_text, "chosen": chosen, "rejected": rejected})
    return rows


@generator("review_labels", "unpaired", "prompt")
def review_labels(
    n: int = 1000, seed: int = 0, temperature: float = 1.0, threshold: float = 0.0
) -> list[dict[str, Any]]:
    """Review prefixes and continuations, labelled desirable by a noisy labeller of the true reward."""
    rng = random.Random(seed)
    labeller = Labeller(temperature=temperature, threshold=threshold, rng=rng)
    rows = []
    for _ in range(n):
        prompt, rest = _prompt_and_rest(rng)
        prompt_text, completion = " ".join(prompt), " " + " ".join(rest)
        rows.append(
            {"prompt": prompt_text, "completion": completion, "label": labeller.label(prompt_text + completion)}
        )
    return rows
