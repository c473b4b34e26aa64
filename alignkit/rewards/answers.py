"""Final answers of reasoning responses: where a response states its answer, and when two answers are the same.

Torch-free (the rule rewards that use it are listed by config-only commands). Two answer formats:
`hash`, a final line `#### 42` (GSM8K's); `tag`, `<answer>42</answer>` (R1-style prompts). The last one in the
response counts, so a response may think aloud before it answers. Numbers compare by value: whitespace, a
leading +, thousands separators, a trailing period, a Unicode minus and trailing zeros after a decimal point do
not matter ("1,234." == "+1234" == "1234.0"), and fractions compare exactly ("3/4" == "0.75"). Anything that is
not a number compares as text, after whitespace is collapsed.
"""

from __future__ import annotations

import re
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
    return " ".join(predicted.split()).casefold() == " ".join(gold.split()).casefold()
