"""A verifiable-reward reasoning testbed: generated problems whose answers a program checks exactly.

Three tasks, each with difficulty knobs and a seed, and nothing to download:

- `arithmetic`: integer expressions such as `37+4*12-5` (`min_terms`..`max_terms` operands of up to `digits`
  digits, the operators `ops`, the usual precedence); answer: its value.
- `countdown`: reach a target from given numbers with + - * /, each number used exactly once and every step a
  positive whole number (the game of TinyZero, Pan et al. 2025, as in Gandhi et al. 2024's Countdown); the
  answer is an expression, checked by the `countdown` rule, since many expressions reach one target.
- `sorting`: a list of numbers in ascending order; answer: the list, `3, 7, 19`.

A row holds the prompt, a worked solution as its `completion` (the steps, then the final answer line), the
`answer`, a `difficulty` label (`terms=3`, `numbers=4`, `length=5`) that evaluation splits pass@k by, and what
a checker needs (countdown's `numbers` and `target`). The answer line is `#### 42` (`answer_format: hash`,
GSM8K's) or `<answer>42</answer>` (`tag`, R1-style). `template: chat` gives messages for a chat template: the
prompt as one user turn, and `messages`, that turn and the assistant's solution, in place of `completion`;
`standard` gives plain text.

So one generator serves SFT on formatted solutions (kind `completion`) and RL and evaluation on the same
distribution (kind `prompt`, where `answer`, `difficulty`, `numbers` and `target` reach the rewards).
Torch-free: generators are listed by config-only commands.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Callable
from typing import Any, Literal

from alignkit.data.generators import check_range, generator
from alignkit.rewards.answers import AnswerFormat

Template = Literal["standard", "chat"]
INSTRUCTIONS: dict[str, str] = {"hash": "End with '#### <answer>'.", "tag": "End with '<answer>...</answer>'."}
# the operators of arithmetic and countdown; countdown divides only where the division is exact
OPERATIONS: dict[str, Callable[[int, int], int]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.floordiv,
}


def answer_line(answer: str, fmt: AnswerFormat) -> str:
    """The final line that states `answer` in format `fmt` (what alignkit.rewards.answers.extract_answer reads)."""
    if fmt not in INSTRUCTIONS:
        raise ValueError(f"unknown answer format {fmt!r}; allowed: {', '.join(INSTRUCTIONS)}")
    return f"#### {answer}" if fmt == "hash" else f"<answer>{answer}</answer>"


def _row(
    question: str, steps: list[str], answer: str, difficulty: str, fmt: AnswerFormat, template: Template, **extra: Any
) -> dict[str, Any]:
    """A row of any task: the question and instruction as prompt, the steps and answer line as completion (or, for
    a chat template, the two as a conversation in `messages`)."""
    final = answer_line(answer, fmt)  # checks the format first
    prompt, solution = f"{question} {INSTRUCTIONS[fmt]}", ", ".join(steps) + "\n" + final if steps else final
    if template == "chat":
        user = {"role": "user", "content": prompt}  # SFT reads the conversation; RL and evaluation its prompt
        row = {"prompt": [user], "messages": [user, {"role": "assistant", "content": solution}]}
    elif template == "standard":
        row = {"prompt": prompt + "\n", "completion": solution}
    else:
        raise ValueError(f"unknown template {template!r}; allowed: standard, chat")
    return {**row, "answer": answer, "difficulty": difficulty, **extra}


def _check_ops(ops: str, allowed: str) -> None:
    if not ops or any(op not in allowed for op in ops):
        raise ValueError(f"ops must be a non-empty string of {' '.join(allowed)} (got {ops!r})")


def evaluate_steps(numbers: list[int], ops: list[str]) -> tuple[int, list[str]]:
    """The value of numbers[0] ops[0] numbers[1] ... with * before + and -, left to right, and the worked steps
    (`4*12=48`, one operation each, in the order a person does them)."""
    numbers, ops, steps = list(numbers), list(ops), []
    while ops:
        i = ops.index("*") if "*" in ops else 0  # multiplications first, then left to right
        a, op, b = numbers[i], ops[i], numbers[i + 1]
        value = OPERATIONS[op](a, b)
        steps.append(f"{a}{op}{b}={value}")
        numbers[i : i + 2], ops[i : i + 1] = [value], []
    return numbers[0], steps


@generator("arithmetic", "completion", "prompt")
def arithmetic(
    n: int = 1000,
    seed: int = 0,
    min_terms: int = 2,
    max_terms: int = 3,
    digits: int = 2,
    ops: str = "+-*",
    answer_format: AnswerFormat = "hash",
    template: Template = "standard",
) -> list[dict[str, Any]]:
    """Integer expressions ('Compute 37+4*12-5.') with worked solutions ('4*12=48, ...' then '#### 80').

    Difficulty: the number of operands (`terms=3`)."""
    check_range("terms", min_terms, max_terms, 2)
    _check_ops(ops, "+-*")
    if digits < 1:
        raise ValueError(f"digits must be at least 1 (got {digits})")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        terms = rng.randint(min_terms, max_terms)
        numbers = [rng.randint(0, 10**digits - 1) for _ in range(terms)]
        chosen = [rng.choice(ops) for _ in range(terms - 1)]
        value, steps = evaluate_steps(numbers, chosen)
        expression = "".join(f"{a}{op}" for a, op in zip(numbers, chosen, strict=False)) + str(numbers[-1])
        rows.append(_row(f"Compute {expression}.", steps, str(value), f"terms={terms}", answer_format, template))
    return rows


def _combine(rng: random.Random, a: tuple[int, str], b: tuple[int, str], ops: str) -> tuple[int, str, str] | None:
    """One countdown step on two (value, expression) items: a random operation whose result is a positive whole
    number, as (value, expression, step text); None when no allowed operation gives one."""
    (x, ex), (y, ey) = (a, b) if a[0] >= b[0] else (b, a)  # larger first: x - y > 0 and x / y >= 1
    choices = [op for op in ops if op in "+*" or (op == "-" and x > y) or (op == "/" and y > 1 and x % y == 0)]
    if not choices:
        return None
    op = rng.choice(choices)
    value = OPERATIONS[op](x, y)
    return value, f"({ex}{op}{ey})", f"{x}{op}{y}={value}"


@generator("countdown", "completion", "prompt")
def countdown(
    n: int = 1000,
    seed: int = 0,
    min_numbers: int = 3,
    max_numbers: int = 4,
    max_number: int = 20,
    ops: str = "+-*/",
    answer_format: AnswerFormat = "hash",
    template: Template = "standard",
) -> list[dict[str, Any]]:
    """Reach a target with + - * /, each given number once ('Use 3, 5, 12 ... to make 21.' -> '#### (12-5)*3').

    Every step is a positive whole number ('12-5=7, 7*3=21'), and every problem is solvable: the target is the
    value of a random expression of all the numbers. Difficulty: how many numbers (`numbers=3`)."""
    check_range("numbers", min_numbers, max_numbers, 2)
    _check_ops(ops, "+-*/")
    if max_number < 2:
        raise ValueError(f"max_number must be at least 2 (got {max_number})")
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        numbers = [rng.randint(1, max_number) for _ in range(rng.randint(min_numbers, max_numbers))]
        pool, steps = [(x, str(x)) for x in numbers], []
        while len(pool) > 1:
            i, j = rng.sample(range(len(pool)), 2)
            step = _combine(rng, pool[i], pool[j], ops)
            if step is None:
                break
            value, expression, text = step
            pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(value, expression)]
            steps.append(text)
        if len(pool) > 1:
            continue  # e.g. ops "-" and equal numbers: draw another problem
        target, expression = pool[0]
        listed = ", ".join(map(str, numbers))
        question = f"Use {listed} once each with {' '.join(ops)} to make {target}."
        rows.append(
            _row(
                question,
                steps,
                expression[1:-1] if expression.startswith("(") else expression,
                f"numbers={len(numbers)}",
                answer_format,
                template,
                numbers=numbers,
                target=target,
            )
        )
    return rows


@generator("sorting", "completion", "prompt")
def sorting(
    n: int = 1000,
    seed: int = 0,
    min_length: int = 3,
    max_length: int = 6,
    max_value: int = 99,
    answer_format: AnswerFormat = "hash",
    template: Template = "standard",
) -> list[dict[str, Any]]:
    """Sort numbers ascending ('Sort 42, 7, 19 ascending.' -> '#### 7, 19, 42'), the answer line alone.

    Difficulty: the list's length (`length=3`)."""
    check_range("length", min_length, max_length, 2)
    if max_value < 1:
        raise ValueError(f"max_value must be at least 1 (got {max_value})")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        numbers = [rng.randint(0, max_value) for _ in range(rng.randint(min_length, max_length))]
        answer = ", ".join(map(str, sorted(numbers)))
        question = f"Sort {', '.join(map(str, numbers))} ascending."
        rows.append(_row(question, [], answer, f"length={len(numbers)}", answer_format, template))
    return rows
