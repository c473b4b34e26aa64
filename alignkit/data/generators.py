"""Registered synthetic datasets with exact answers or rewards, small enough for a tiny model to learn."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from alignkit.registry import Registry

Generator = Callable[..., list[dict[str, Any]]]
DATASETS: Registry[Generator] = Registry("dataset")
# The record kinds each generator's rows serve (a prompt kind ignores the answers or keeps them as
# metadata), so a mismatch with the algorithm is named before any row check.
GENERATOR_KINDS: dict[str, tuple[str, ...]] = {}

# A small vocabulary: reversing it is learnable by a tiny model in a few hundred steps.
WORDS = ("cat", "dog", "sun", "sky", "red", "blue", "tree", "fish", "car", "hat")
POSITIVE = ("great", "wonderful", "superb", "lovely", "moving", "brilliant", "fun", "charming")
NEGATIVE = ("awful", "boring", "dull", "terrible", "weak", "messy", "bland", "tedious")
NEUTRAL = ("the", "film", "plot", "actor", "scene", "music", "story", "ending", "was", "and")
REVIEW_PROMPT = "Review of the film:"


def generator(name: str, *kinds: str) -> Callable[[Generator], Generator]:
    """Register a generator under `name` and note the record kinds its rows serve."""

    def wrap(fn: Generator) -> Generator:
        DATASETS.register(name)(fn)
        GENERATOR_KINDS[name] = kinds
        return fn

    return wrap


def check_range(name: str, low: int, high: int, floor: int = 1) -> None:
    """A generator's `min_<name>`..`max_<name>` knobs: `floor <= low <= high`, or a ValueError naming both."""
    if not floor <= low <= high:
        raise ValueError(f"need {floor} <= min_{name} <= max_{name} (got min_{name}={low}, max_{name}={high})")


def _words(rng: random.Random, min_words: int, max_words: int) -> list[str]:
    return rng.choices(WORDS, k=rng.randint(min_words, max_words))


@generator("reverse_words", "completion", "prompt")
def reverse_words(n: int = 1000, seed: int = 0, min_words: int = 2, max_words: int = 5) -> list[dict[str, Any]]:
    """Reverse a few words: prompt 'reverse: cat dog sun =', completion ' sun dog cat'."""
    check_range("words", min_words, max_words)
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = _words(rng, min_words, max_words)
        rows.append({"prompt": f"reverse: {' '.join(words)} =", "completion": " " + " ".join(words[::-1])})
    return rows


@generator("chat_sft", "completion")
def chat_sft(
    n: int = 1000, seed: int = 0, min_words: int = 2, max_words: int = 5, turns: int = 1
) -> list[dict[str, Any]]:
    """Conversations in which the user asks to reverse words and the assistant answers, `turns` times."""
    check_range("words", min_words, max_words)
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = []
        for _ in range(turns):
            words = _words(rng, min_words, max_words)
            messages.append({"role": "user", "content": f"Reverse the words: {' '.join(words)}"})
            messages.append({"role": "assistant", "content": " ".join(words[::-1])})
        rows.append({"messages": messages})
    return rows


def sentiment_score(text: str) -> int:
    """The true reward of a review: positive words minus negative words."""
    words = text.split()
    return sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)


def _review(rng: random.Random, min_words: int, max_words: int) -> str:
    pools = (POSITIVE, NEGATIVE, NEUTRAL, NEUTRAL)  # neutral twice: most words carry no signal
    return " " + " ".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(min_words, max_words)))


@generator("sentiment_pairs", "preference", "prompt")
def sentiment_pairs(
    n: int = 1000,
    seed: int = 0,
    min_words: int = 4,
    max_words: int = 8,
    noise: bool = False,
    temperature: float = 1.0,
) -> list[dict[str, Any]]:
    """Pairs of film reviews; the one with more positive than negative words wins (optional BT noise)."""
    check_range("words", min_words, max_words)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive (got {temperature})")
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        a, b = _review(rng, min_words, max_words), _review(rng, min_words, max_words)
        diff = sentiment_score(a) - sentiment_score(b)
        if diff == 0:  # a tie has no right answer; skip it so noise-free labels are always correct
            continue
        p_a = 1 / (1 + math.exp(-diff / temperature)) if noise else float(diff > 0)
        chosen, rejected = (a, b) if rng.random() < p_a else (b, a)
        # Llama-2 margins are non-negative preference strengths, so a noisy flip keeps |diff|.
        rows.append({"prompt": REVIEW_PROMPT, "chosen": chosen, "rejected": rejected, "margin": float(abs(diff))})
    return rows


@generator("sentiment_unpaired", "unpaired", "prompt")
def sentiment_unpaired(n: int = 1000, seed: int = 0, min_words: int = 4, max_words: int = 8) -> list[dict[str, Any]]:
    """Single film reviews labelled desirable when they have more positive than negative words."""
    check_range("words", min_words, max_words)
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text = _review(rng, min_words, max_words)
        rows.append({"prompt": REVIEW_PROMPT, "completion": text, "label": sentiment_score(text) > 0})
    return rows


def write_jsonl(records: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write records one JSON object a line (creating parent folders); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
