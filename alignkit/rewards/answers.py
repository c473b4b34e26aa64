"""Final answers of reasoning responses: where a response states its answer, and when two answers are the same.

Torch-free (the rule rewards that use it are listed by config-only commands). Two answer formats:
`hash`, a final line `#### 42` (GSM8K's); `tag`, `<answer>42</answer>` (R1-style prompts). The last one in the
response counts, so a response may think aloud before it answers. Numbers compare by value: whitespace, a
leading +, thousands separators, a trailing period, a Unicode minus and trailing zeros after a decimal point do
not matter ("1,234." == "+1234" == "1234.0"), and fractions compare exactly ("3/4" == "0.75"). Anything that is
not a number compares as text, after whitespace is collapsed (and around commas, so lists such as "3,7, 19" and
"3, 7, 19" are the same). Countdown answers are expressions: `evaluate_expression` computes one exactly and
`countdown_solves` checks that it uses each given number once and reaches the target.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Literal

AnswerFormat = Literal["hash", "tag"]

_PATTERNS: dict[str, re.Pattern[str]] = {
    "hash": re.compile(r"^[ \t]*####[ \t]*(.*?)[ \t]*$", re.MULTILINE),
    "tag": re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE),
}
# an optional sign, digits with optional thousands separators or plain digits, an optional decimal part; or a
# fraction of two integers
_NUMBER = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?$|^[+-]?\.\d+$")
_FRACTION = re.compile(r"^([+-]?\d+)\s*/\s*([+-]?\d+)$")


def extract_answer(response: str, fmt: AnswerFormat = "hash") -> str | None:
    """The last answer the response states in format `fmt`, stripped; None when it states none (or an empty one)."""
    if fmt not in _PATTERNS:
        raise ValueError(f"unknown answer format {fmt!r}; allowed: {', '.join(_PATTERNS)}")
    found = _PATTERNS[fmt].findall(response)
    answer = found[-1].strip() if found else ""
    return answer or None


def as_number(text: str) -> Fraction | None:
    """The exact value of a number as people write it ("1,234.", "-0.50", "3/4", "−7"), or None if it is not one."""
    s = re.sub(r"^([+-])\s+", r"\1", text.strip().replace("\u2212", "-"))  # "- 3": a sign, then the number
    s = s.removesuffix(".")  # the sentence's full stop: "42." is 42
    if (frac := _FRACTION.match(s)) is not None:
        numerator, denominator = int(frac.group(1)), int(frac.group(2))
        return Fraction(numerator, denominator) if denominator else None
    if not _NUMBER.match(s):
        return None
    return Fraction(s.replace(",", ""))


def same_answer(predicted: str | None, gold: str | int | float) -> bool:
    """Whether a parsed answer equals the gold one: by value when both are numbers, else as collapsed text."""
    if predicted is None:
        return False
    gold = str(gold)
    a, b = as_number(predicted), as_number(gold)
    if a is not None and b is not None:
        return a == b
    return _as_text(predicted) == _as_text(gold)


def _as_text(text: str) -> str:
    return re.sub(r"\s*,\s*", ", ", " ".join(text.split())).casefold()


# multiplication and division as people type them; `**` is left out on purpose (it is not an allowed operation)
_OPERATOR_SIGNS = str.maketrans({"x": "*", "X": "*", "\u00d7": "*", "\u00f7": "/", "\u2212": "-"})
_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}
MAX_EXPRESSION_CHARS = 200  # a response can be long; a countdown answer is not, and parsing costs per character


def _walk(node: ast.AST, numbers: list[int]) -> Fraction:
    """The exact value of a parsed expression of whole numbers with + - * / and parentheses; appends each number
    it uses to `numbers`. Raises ValueError on anything else (names, calls, powers, floats, unary minus)."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        numbers.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp):
        a, b = _walk(node.left, numbers), _walk(node.right, numbers)
        if isinstance(node.op, ast.Div):
            if b == 0:
                raise ValueError("division by zero")
            return a / b
        if type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](a, b)
    raise ValueError(f"not allowed in an answer: {ast.dump(node)[:40]}")


def _parse_expression(text: str) -> tuple[Fraction, list[int]] | None:
    text = text.strip().removesuffix(".").translate(_OPERATOR_SIGNS)
    if not text or len(text) > MAX_EXPRESSION_CHARS:
        return None
    try:
        numbers: list[int] = []
        return _walk(ast.parse(text, mode="eval").body, numbers), numbers
    except (SyntaxError, ValueError, RecursionError):
        return None


def evaluate_expression(text: str) -> Fraction | None:
    """The exact value of `12-5*(3+1)` and the like: whole numbers, + - * / (x and the signs x, ÷ too) and
    parentheses; None for anything else, a division by zero, or more than MAX_EXPRESSION_CHARS characters."""
    parsed = _parse_expression(text)
    return None if parsed is None else parsed[0]


def countdown_solves(expression: str | None, numbers: Sequence[int], target: int) -> bool:
    """Whether `expression` uses each of `numbers` exactly once (as many times as it is given) and equals `target`
    exactly (intermediate fractions allowed, as the value is what is checked)."""
    parsed = _parse_expression(expression) if expression is not None else None
    if parsed is None:
        return False
    value, used = parsed
    return value == target and Counter(used) == Counter(int(x) for x in numbers)
