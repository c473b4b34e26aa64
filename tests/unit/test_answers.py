"""Verifiable rewards: the answer checker against a table of tricky cases, and pass@k against hand computation and
brute-force enumeration (issue 17's first pieces)."""

from __future__ import annotations

import itertools
import math

import pytest

from alignkit.rewards import REWARDS
from alignkit.rewards.answers import as_number, extract_answer, same_answer
from alignkit.stats import pass_at_k


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        ("so 6 x 7 = 42\n#### 42", "42", True),
        ("#### 42", 42, True),
        ("####42", "42", True),  # no space after the marker
        ("#### 42.", "42", True),  # a full stop
        ("####   42   \n", "42", True),  # spaces around, a trailing newline
        ("#### 1,234", "1234", True),  # thousands separators
        ("#### +7", "7", True),  # a leading plus
        ("#### \u22127", "-7", True),  # a Unicode minus
        ("#### -0", "0", True),
        ("#### 42.0", "42", True),  # trailing zeros after the point
        ("#### 0.75", "3/4", True),  # a fraction by value
        ("#### 1,23", "123", False),  # not a thousands separator: text, not 123
        ("#### 43", "42", False),
        ("#### -42", "42", False),  # the sign matters
        ("#### 4 2", "42", False),  # a space inside a number: text, and "4 2" is not "42"
        ("42", "42", False),  # no answer line
        ("#### ", "42", False),  # an empty answer
        ("#### 41\nno wait\n#### 42", "42", True),  # the last answer counts
        ("#### 42\n#### 41", "42", False),
        ("#### Paris", "paris", True),  # text: case and whitespace collapsed
    ],
)
def test_the_answer_checker_on_tricky_cases(response: str, gold: object, expected: bool) -> None:
    assert same_answer(extract_answer(response), gold) is expected


def test_the_tag_format_and_the_rules() -> None:
    assert extract_answer("think... <answer> 12 </answer> and <ANSWER>13</ANSWER>", "tag") == "13"
    assert extract_answer("no tags", "tag") is None
    with pytest.raises(ValueError, match="allowed: hash, tag"):
        extract_answer("#### 1", "box")  # type: ignore[arg-type]
    exact, fmt = REWARDS.get("exact_answer"), REWARDS.get("answer_format")
    completions = ["#### 5", "#### 6", "five"]
    assert exact(["p"] * 3, completions, answer=["5", "5", "5"]) == [1.0, 0.0, 0.0]
    assert fmt(["p"] * 3, completions) == [1.0, 1.0, 0.0]
    assert exact(["p"], ["<answer>-3</answer>"], answer=[-3], answer_format="tag") == [1.0]


def test_numbers_as_written() -> None:
    assert as_number("12,345,678") == 12345678 and as_number("-0.50") == as_number("-1/2")
    assert as_number("4/0") is None and as_number("abc") is None and as_number(".5") == as_number("1/2")


def test_pass_at_k_by_hand() -> None:
    """n = 5, c = 2: pass@1 = 2/5 = 0.4; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7; pass@3 = 1 - C(3,3)/C(5,3) =
    1 - 1/10 = 0.9; pass@4 = 1 (only 3 wrong). c = 0: 0 for every k; c = n: 1."""
    assert [pass_at_k(5, 2, k) for k in (1, 2, 3, 4, 5)] == pytest.approx([0.4, 0.7, 0.9, 1.0, 1.0])
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 5, 1) == 1.0
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_pass_at_k_equals_brute_force_enumeration(n: int) -> None:
    """The share of k-subsets of the n samples that hold a correct one, counted subset by subset."""
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            expected = sum(any(s) for s in subsets) / len(subsets)
            assert math.isclose(pass_at_k(n, c, k), expected, abs_tol=1e-12), (n, c, k)
