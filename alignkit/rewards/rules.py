"""Rule rewards: plain Python functions `fn(prompts, completions, **args) -> list[float]`, registered by name."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from alignkit.data.sentiment import true_reward
from alignkit.registry import Registry
from alignkit.rewards.answers import AnswerFormat, countdown_solves, extract_answer, same_answer

RuleReward = Callable[..., list[float]]
REWARDS: Registry[RuleReward] = Registry("reward")


@REWARDS.register("length_target")
def length_target(prompts: Sequence[str], completions: Sequence[str], target: int = 32) -> list[float]:
    """1 at exactly `target` characters, falling linearly to 0 at 0 and 2*target characters (below 0 past)."""
    if target <= 0:
        raise ValueError(f"length_target: target must be a positive number of characters (got {target})")
    return [1.0 - abs(len(c) - target) / target for c in completions]


@REWARDS.register("regex_match")
def regex_match(prompts: Sequence[str], completions: Sequence[str], pattern: str = r".+") -> list[float]:
    """1 when the whole completion (stripped) matches `pattern`, else 0: format rewards."""
    compiled = re.compile(pattern, re.DOTALL)
    return [1.0 if compiled.fullmatch(c.strip()) else 0.0 for c in completions]


@REWARDS.register("keyword_count")
def keyword_count(
    prompts: Sequence[str], completions: Sequence[str], words: Sequence[str] = (), weight: float = 1.0
) -> list[float]:
    """weight x number of whole-word occurrences of any of `words` in the completion (case-insensitive)."""
    if isinstance(words, str):  # `words: great` in YAML means one word, not five letters
        words = [words]
    if not words:
        return [0.0 for _ in completions]
    # whole words by lookaround rather than \b, so that keywords ending in punctuation ("c++") still match
    alternatives = "|".join(re.escape(w) for w in words)
    pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
    return [weight * len(pattern.findall(c)) for c in completions]


@REWARDS.register("review_sentiment")
def review_sentiment(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """The exact true reward of the review testbed (alignkit.data.sentiment) on prompt + completion.

    The prompt's own sentiment counts too, as the DPO paper's classifier scored the whole text: a policy is
    judged on the review it finishes, so its best move after a negative prefix is to outweigh it.
    """
    return [true_reward(p + c) for p, c in zip(prompts, completions, strict=True)]


@REWARDS.register("exact_answer")
def exact_answer(
    prompts: Sequence[str],
    completions: Sequence[str],
    answer: Sequence[str | int | float],
    answer_format: AnswerFormat = "hash",
) -> list[float]:
    """1 when the response's last stated answer (`#### 42`, or `<answer>42</answer>` with answer_format: tag) equals
    the prompt row's `answer` column, by value for numbers (alignkit.rewards.answers), else 0; no answer scores 0."""
    return [
        float(same_answer(extract_answer(c, answer_format), gold)) for c, gold in zip(completions, answer, strict=True)
    ]


@REWARDS.register("countdown")
def countdown(
    prompts: Sequence[str],
    completions: Sequence[str],
    numbers: Sequence[Sequence[int]],
    target: Sequence[int],
    answer_format: AnswerFormat = "hash",
) -> list[float]:
    """1 when the last stated answer uses each of the row's `numbers` once with + - * / to make its `target`, else 0.

    The countdown task of alignkit.data.reasoning; the expression is parsed, never run."""
    return [
        float(countdown_solves(extract_answer(c, answer_format), nums, goal))
        for c, nums, goal in zip(completions, numbers, target, strict=True)
    ]


@REWARDS.register("answer_format")
def answer_format_reward(
    prompts: Sequence[str], completions: Sequence[str], answer_format: AnswerFormat = "hash"
) -> list[float]:
    """1 when the response states a final answer in the format (right or wrong), else 0: the format reward that
    weighted_sum combines with exact_answer."""
    return [float(extract_answer(c, answer_format) is not None) for c in completions]
