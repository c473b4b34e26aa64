"""Rule rewards: exact values by hand, and the contract every registered rule reward keeps."""

from __future__ import annotations

import inspect

import pytest

from alignkit.rewards import REWARDS
from alignkit.rewards.rules import keyword_count, length_target, regex_match

PROMPTS = ["p1", "p2", "p3"]


@pytest.mark.parametrize("name", REWARDS.names())
def test_every_rule_reward_gives_one_float_per_completion(name: str) -> None:
    """With the prompt-row columns a rule requires (e.g. exact_answer's `answer`) given, as RuleSource does."""
    fn = REWARDS.get(name)
    completions = ["", "a short one", "x" * 200]
    required = [p.name for p in list(inspect.signature(fn).parameters.values())[2:] if p.default is p.empty]
    out = fn(PROMPTS, completions, **{column: ["1"] * len(completions) for column in required})
    assert isinstance(out, list) and len(out) == len(completions)
    assert all(type(v) is float for v in out)
    assert fn([], [], **{column: [] for column in required}) == []


def test_length_target_by_hand() -> None:
    """target 4: 1 - |len - 4| / 4 -> len 4: 1; len 2: 0.5; len 0: 0; len 8: 0; len 12: -1 (below 0 past 2x)."""
    completions = ["abcd", "ab", "", "abcdefgh", "x" * 12]
    assert length_target(PROMPTS, completions, target=4) == [1.0, 0.5, 0.0, 0.0, -1.0]
    assert length_target(PROMPTS, ["é" * 32]) == [1.0]  # characters, not bytes; default target 32


def test_length_target_needs_a_positive_target() -> None:
    with pytest.raises(ValueError, match=r"target must be a positive number of characters \(got 0\)"):
        length_target(PROMPTS, ["a"], target=0)


def test_regex_match() -> None:
    pattern = r"<answer>\d+</answer>"
    completions = ["<answer>42</answer>", "  <answer>7</answer>\n", "<answer>42</answer> extra", "<answer>x</answer>"]
    assert regex_match(PROMPTS, completions, pattern=pattern) == [1.0, 1.0, 0.0, 0.0]  # whole (stripped) text
    assert regex_match(PROMPTS, ["line one\nline two"], pattern=r"line.*two") == [1.0]  # '.' spans lines
    assert regex_match(PROMPTS, ["anything", "", "   "]) == [1.0, 0.0, 0.0]  # default: non-empty


def test_keyword_count_by_hand() -> None:
    """'Great film, great fun; greatness aside' with words [great, fun], weight 0.5: great x2 + fun x1 -> 1.5.

    'greatness' is not the word 'great'; case does not matter.
    """
    text = "Great film, great fun; greatness aside"
    assert keyword_count(PROMPTS, [text], words=["great", "fun"], weight=0.5) == [1.5]
    assert keyword_count(PROMPTS, [text, "nothing here"], words=["great"]) == [2.0, 0.0]


def test_keyword_count_edge_cases() -> None:
    assert keyword_count(PROMPTS, ["a b c", ""]) == [0.0, 0.0]  # no words: zero reward
    assert keyword_count(PROMPTS, ["great, Great!"], words="great") == [2.0]  # one word given as a string
    assert keyword_count(PROMPTS, ["I like C++ and c++."], words=["c++"]) == [2.0]  # punctuation in the word
    assert keyword_count(PROMPTS, ["a.b a+b"], words=["a.b"]) == [1.0]  # regex characters are literal
    assert keyword_count(PROMPTS, ["new york is new"], words=["new york"]) == [1.0]  # phrases
