"""The reasoning testbed's tasks: every generated answer checked by an independent evaluation (Python's own
arithmetic on the expression parsed back from the prompt), the worked steps, the knobs, both answer formats and
both templates (through the byte tokenizer's and the BPE tokenizer's chat templates), and the countdown checker
against a table of tricky answers."""

from __future__ import annotations

import operator
import re
from fractions import Fraction

import pytest
from transformers import PreTrainedTokenizerFast

from alignkit.data import DATASETS, SourceSpec, load_records, tokenize_records
from alignkit.models import bpe_tokenizer, byte_tokenizer
from alignkit.rewards import REWARDS
from alignkit.rewards.answers import countdown_solves, evaluate_expression, extract_answer, same_answer

KNOBS = [
    {"digits": 1, "min_terms": 2, "max_terms": 4},
    {"digits": 3, "min_terms": 2, "max_terms": 6, "ops": "+-*"},
    {"digits": 2, "min_terms": 3, "max_terms": 3, "ops": "-"},
]
STEP = re.compile(r"^(-?\d+)([-+*/])(\d+)=(-?\d+)$")
PYTHON_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def python_value(expression: str) -> Fraction:
    """Python's own evaluation, a check independent of alignkit's parser: eval on whole numbers, exact via Fraction
    only where a division needs it (no names can occur: the expression is checked to hold digits and signs)."""
    assert re.fullmatch(r"[\d+\-*/() ]+", expression), expression
    value = eval(expression, {"__builtins__": {}})
    return Fraction(value).limit_denominator(10**9)


def solution(row: dict) -> str:
    return row["completion"] if "completion" in row else row["messages"][-1]["content"]


def question(row: dict) -> str:
    return row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][0]["content"]


@pytest.mark.parametrize("knobs", KNOBS)
def test_arithmetic_answers_equal_pythons_value_of_the_prompt(knobs: dict) -> None:
    rows = DATASETS.get("arithmetic")(n=300, seed=7, **knobs)
    terms_seen = set()
    for row in rows:
        expression = re.fullmatch(r"Compute (.+)\. End with '#### <answer>'\.\n", row["prompt"]).group(1)
        assert python_value(expression) == int(row["answer"])
        operands = [int(x) for x in re.split(r"[-+*]", expression)]
        assert all(0 <= x < 10 ** knobs["digits"] for x in operands)
        assert set(re.findall(r"[-+*]", expression)) <= set(knobs.get("ops", "+-*"))
        assert row["difficulty"] == f"terms={len(operands)}"
        terms_seen.add(len(operands))
        # each worked step is one true operation, and the steps end at the answer
        body, last = row["completion"].rsplit("\n", 1)
        assert last == f"#### {row['answer']}"
        steps = body.split(", ")
        assert len(steps) == len(operands) - 1
        for step in steps:
            a, op, b, c = STEP.fullmatch(step).groups()
            assert PYTHON_OPS[op](int(a), int(b)) == int(c)
        assert STEP.fullmatch(steps[-1]).group(4) == row["answer"]
    assert terms_seen == set(range(knobs["min_terms"], knobs["max_terms"] + 1))


def test_countdown_problems_are_solvable_and_their_answers_reach_the_target() -> None:
    rows = DATASETS.get("countdown")(n=400, seed=3, min_numbers=2, max_numbers=5, max_number=25)
    for row in rows:
        numbers, target = row["numbers"], row["target"]
        listed = re.match(r"Use ([\d, ]+) once each", row["prompt"]).group(1)
        assert [int(x) for x in listed.split(", ")] == numbers and f"to make {target}." in row["prompt"]
        assert all(1 <= x <= 25 for x in numbers) and row["difficulty"] == f"numbers={len(numbers)}"
        assert python_value(row["answer"]) == target  # Python's value of the reference expression
        assert sorted(int(x) for x in re.findall(r"\d+", row["answer"])) == sorted(numbers)
        # every step is a positive whole number, as in the game
        body, last = row["completion"].rsplit("\n", 1)
        assert last == f"#### {row['answer']}"
        for step in body.split(", "):
            a, op, b, c = STEP.fullmatch(step).groups()
            assert PYTHON_OPS[op](int(a), int(b)) == int(c) > 0
        assert countdown_solves(row["answer"], numbers, target)
    assert {len(r["numbers"]) for r in rows} == {2, 3, 4, 5}


def test_sorting_answers_are_the_sorted_numbers() -> None:
    for row in DATASETS.get("sorting")(n=200, seed=1, min_length=2, max_length=7, max_value=9):
        numbers = [int(x) for x in re.match(r"Sort ([\d, ]+) ascending", row["prompt"]).group(1).split(", ")]
        assert [int(x) for x in row["answer"].split(", ")] == sorted(numbers)
        assert row["difficulty"] == f"length={len(numbers)}" and all(0 <= x <= 9 for x in numbers)


@pytest.mark.parametrize("fmt", ["hash", "tag"])
@pytest.mark.parametrize("template", ["standard", "chat"])
def test_worked_solutions_earn_the_rule_rewards_and_wrong_ones_do_not(fmt: str, template: str) -> None:
    args = {"n": 40, "seed": 5, "answer_format": fmt, "template": template}
    for name, rule in (("arithmetic", "exact_answer"), ("sorting", "exact_answer"), ("countdown", "countdown")):
        rows = DATASETS.get(name)(**args)
        reward = REWARDS.get(rule)
        columns = {"answer": [r["answer"] for r in rows]}
        if rule == "countdown":
            columns = {"numbers": [r["numbers"] for r in rows], "target": [r["target"] for r in rows]}
        right = [solution(r) for r in rows]
        wrong = [s.replace(r["answer"], r["answer"] + "1") for s, r in zip(right, rows, strict=True)]
        prompts = [question(r) for r in rows]
        assert reward(prompts, right, answer_format=fmt, **columns) == [1.0] * len(rows), name
        assert reward(prompts, wrong, answer_format=fmt, **columns) == [0.0] * len(rows), name
        assert REWARDS.get("answer_format")(prompts, right, answer_format=fmt) == [1.0] * len(rows)
        marker = "'#### <answer>'" if fmt == "hash" else "'<answer>...</answer>'"
        assert all(p.rstrip("\n").endswith(f"End with {marker}.") for p in prompts)
        if template == "chat":
            assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
            assert rows[0]["prompt"] == rows[0]["messages"][:1]


@pytest.fixture(scope="module", params=["byte", "bpe"])
def tokenizer(request: pytest.FixtureRequest) -> PreTrainedTokenizerFast:
    return bpe_tokenizer() if request.param == "bpe" else byte_tokenizer()


@pytest.mark.parametrize("template", ["standard", "chat"])
def test_rows_tokenize_for_sft_and_rl_and_the_trained_tokens_decode_to_the_solution(
    tokenizer: PreTrainedTokenizerFast, template: str
) -> None:
    """SFT trains exactly the worked solution (its tokens decode back to it, answer line included), and RL's prompt
    rows keep `answer` and `difficulty` for the rewards and the evaluation's split."""
    source = SourceSpec(generator="arithmetic", args={"n": 20, "seed": 2, "template": template})
    records = load_records(source, "completion")
    sft = tokenize_records(records, "completion", tokenizer, max_length=256)
    for row, tokens in zip(records, sft, strict=True):
        trained = [t for t, m in zip(tokens["input_ids"], tokens["completion_mask"], strict=True) if m]
        text = tokenizer.decode(trained, skip_special_tokens=True)
        assert solution(row) in text and extract_answer(text) == row["answer"]
    prompts = tokenize_records(load_records(source, "prompt"), "prompt", tokenizer, max_length=256)
    assert {"answer", "difficulty"} <= set(prompts.column_names)
    assert all("Compute" in p for p in prompts["prompt"])


@pytest.mark.parametrize(
    ("answer", "numbers", "target", "expected"),
    [
        ("(12-5)*3", [3, 5, 12], 21, True),
        ("3*(12-5)", [12, 5, 3], 21, True),  # any order of the numbers
        (" (12 - 5) * 3. ", [3, 5, 12], 21, True),  # spaces and a full stop
        ("(12-5)x3", [3, 5, 12], 21, True),  # x and × for times
        ("(12-5)×3", [3, 5, 12], 21, True),
        ("(8/3)*3", [8, 3, 3], 8, True),  # a fraction on the way is exact, and 3 given twice is used twice
        ("8*3/3", [8, 3], 8, False),  # 3 used twice but given once
        ("12-5", [3, 5, 12], 7, False),  # 3 not used
        ("12-5*3", [3, 5, 12], 21, False),  # precedence: -3
        ("(12-5)*3", [3, 5, 12], 22, False),  # the wrong target
        ("12/(5-5)", [12, 5, 5], 0, False),  # division by zero
        ("3**2+12", [3, 2, 12], 21, False),  # powers are not an operation
        ("-3+24", [3, 24], 21, False),  # unary minus: no such number was given
        ("7.0*3", [7, 3], 21, False),  # only whole numbers
        ("__import__('os').getpid()", [1], 1, False),  # names and calls are refused, never run
        ("(" * 150 + "1" + ")" * 150, [1], 1, False),  # longer than an answer can be
        ("21", [3, 5, 12], 21, False),
        ("", [1], 1, False),
    ],
)
def test_countdown_checker_table(answer: str, numbers: list[int], target: int, expected: bool) -> None:
    assert countdown_solves(answer, numbers, target) is expected


def test_expressions_evaluate_exactly_and_lists_compare_with_any_spacing() -> None:
    """1/3 + 1/3 + 1/3 is exactly 1 (not 0.999...); a list answer may space its commas as it likes."""
    assert evaluate_expression("1/3+1/3+1/3") == 1 and evaluate_expression("2*(3+4)") == 14
    assert evaluate_expression("2 ^ 3") is None and evaluate_expression("1/0") is None
    assert same_answer("3,7, 19", "3, 7, 19") and not same_answer("3, 19, 7", "3, 7, 19")


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("arithmetic", {"min_terms": 1}, r"need 2 <= min_terms <= max_terms"),
        ("arithmetic", {"ops": "+/"}, r"ops must be a non-empty string of \+ - \*"),
        ("arithmetic", {"answer_format": "boxed"}, r"unknown answer format 'boxed'; allowed: hash, tag"),
        ("arithmetic", {"template": "llama"}, r"unknown template 'llama'; allowed: standard, chat"),
        ("countdown", {"max_number": 1}, r"max_number must be at least 2"),
        ("sorting", {"min_length": 4, "max_length": 3}, r"need 2 <= min_length <= max_length"),
    ],
)
def test_bad_knobs_are_named(name: str, args: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_records(SourceSpec(generator=name, args=args), "prompt")
