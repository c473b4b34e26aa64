"""Pass@k in `alignkit compare`: per-prompt values from fake answers, groups, statistics over seeds, the table,
pass_at_k.csv, the TensorBoard values, and the errors that name what to change."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from alignkit.compare import (
    CompareResult,
    Point,
    _row_json,
    aggregate,
    first_answers,
    group_labels,
    group_order,
    pass_at_k_curve,
    pass_at_k_note,
    pass_at_k_scalars,
    pass_at_k_scores,
    write_table,
)
from alignkit.config.errors import ConfigError, problems_from_validation
from alignkit.pipeline import CompareSpec

SECTION = {"prompts": {"generator": "arithmetic"}, "true_reward": {"kind": "rule", "name": "exact_answer"}}


def test_pass_at_k_per_prompt_by_hand() -> None:
    """Two prompts x n = 4 answers: prompt 0 has c = 1 correct, prompt 1 c = 4.

    pass@1 = c / n: 1/4 = 0.25 and 1.
    pass@2 = 1 - C(n - c, 2) / C(4, 2): 1 - C(3, 2) / 6 = 1 - 3/6 = 0.5, and 1 - C(0, 2) / 6 = 1.
    pass@4 = 1 - C(3, 4) / C(4, 4) = 1 - 0 = 1 (all four answers hold the correct one), and 1.
    Greedy: prompt 0's argmax answer is wrong (0.0), prompt 1's right (1.0): 0 and 1.
    """
    true = [0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    got = pass_at_k_scores(true, 4, [1, 2, 4], threshold=1.0, greedy=[0.0, 1.0])
    assert list(got) == ["greedy", "1", "2", "4"]
    assert got["1"] == pytest.approx([0.25, 1.0])
    assert got["2"] == pytest.approx([0.5, 1.0])
    assert got["4"] == [1.0, 1.0]
    assert got["greedy"] == [0.0, 1.0]
    assert "greedy" not in pass_at_k_scores(true, 4, [1], threshold=1.0)  # greedy off


def test_threshold_counts_correctness_of_a_weighted_reward() -> None:
    """A true reward of correctness + 0.1 for the format: [1.1, 0.1, 1.0, 0.0] for one prompt, n = 4.

    threshold 1.0: c = 2 (1.1 and 1.0); pass@1 = 2/4 = 0.5; pass@2 = 1 - C(2, 2) / C(4, 2) = 1 - 1/6 = 5/6.
    threshold 0.1: c = 3 (the formatted ones); pass@1 = 0.75; pass@2 = 1 - C(1, 2) / 6 = 1.
    Greedy 0.1 (formatted, wrong): 0 at threshold 1.0, 1 at threshold 0.1.
    """
    true = torch.tensor([1.1, 0.1, 1.0, 0.0])
    strict = pass_at_k_scores(true, 4, [1, 2], threshold=1.0, greedy=torch.tensor([0.1]))
    assert (strict["greedy"], strict["1"], strict["2"]) == ([0.0], [0.5], [pytest.approx(5 / 6)])
    loose = pass_at_k_scores(true, 4, [1, 2], threshold=0.1, greedy=torch.tensor([0.1]))
    assert (loose["greedy"], loose["1"], loose["2"]) == ([1.0], [0.75], [1.0])
    # a reward summed in float32: 0.01 + 0.78 + 0.21 is 0.99999994 there, and counts at threshold 1
    summed = torch.tensor([0.01]) + torch.tensor([0.78]) + torch.tensor([0.21])
    assert float(summed) < 1.0 and pass_at_k_scores(summed, 1, [1], threshold=1.0)["1"] == [1.0]
    with pytest.raises(ValueError, match="2 greedy answers for 1 prompts"):
        pass_at_k_scores(true, 4, [1], threshold=1.0, greedy=[0.0, 1.0])


def test_first_answers_of_each_prompt() -> None:
    """Two prompts x 4 answers; the first 2 of each: [0, 1] and [4, 5]. A missing score (no RM) stays None."""
    answers = {"true": torch.arange(8.0), "rm": None, "prompt": ["p"] * 8, "response": ["r"] * 8}
    first = first_answers(answers, 4, 2)
    assert first["true"].tolist() == [0.0, 1.0, 4.0, 5.0] and first["rm"] is None and "prompt" not in first


def test_group_labels_and_the_missing_column_error() -> None:
    metadata = [{"prompt": "1+2=", "answer": "3", "difficulty": 2}, {"prompt": "1+2+3=", "answer": 6, "difficulty": 3}]
    assert group_labels(metadata, "difficulty") == ["2", "3"]
    with pytest.raises(ConfigError) as err:
        group_labels(metadata, "level")
    (problem,) = err.value.problems
    assert problem.path == "compare.pass_at_k.by"
    assert problem.message.startswith("the held-out prompts (compare.prompts) have no column 'level'; ")
    assert "columns: prompt, answer, difficulty; set compare.pass_at_k.by to one of them, or to null" in str(problem)
    assert group_order(["terms=10", "terms=2", "terms=3", "terms=2"]) == ["terms=2", "terms=3", "terms=10"]


def test_samples_below_the_largest_k_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as err:
        CompareSpec(**SECTION, pass_at_k={"k": [1, 8, 32], "samples": 16})
    (problem,) = problems_from_validation(err.value, CompareSpec)
    assert str(problem) == (
        "pass_at_k.samples: pass@32 needs at least 32 samples per prompt (got 16); set compare.pass_at_k.samples to "
        "32 or more, or drop the k above 16"
    )
    spec = CompareSpec(**SECTION, pass_at_k={"k": [4, 1, 2, 2], "samples": 4})
    assert spec.pass_at_k is not None and spec.pass_at_k.k == [1, 2, 4]  # sorted, once each
    assert CompareSpec(**SECTION).pass_at_k is None  # off unless asked for


def _point(method: str, seed: int, scores: dict[str, list[float]], final: bool = True, step: int = 10) -> Point:
    return Point(
        method=method,
        stage=method,
        algorithm=method,
        step=0 if method == "sft" else step,
        true_reward=0.5,
        true_reward_se=0.0,
        kl=0.0 if method == "sft" else 2.0,
        kl_se=0.0,
        rm_score=None,
        length=10.0,
        train_time_s=None,
        final=final,
        seed=seed,
        per_prompt={"true": [0.5] * 4, "kl": [0.0 if method == "sft" else 2.0] * 4},
        pass_at_k=scores if final else {},
    )


SFT = {"greedy": [0.0] * 4, "1": [0.25] * 4, "2": [0.5] * 4}
GRPO = {"greedy": [1.0] * 4, "1": [1.0, 0.5, 1.0, 0.5], "2": [1.0] * 4}
DPO = {"greedy": [0.0] * 4, "1": [0.0] * 4, "2": [0.0] * 4}
GROUPS = ["easy", "hard", "easy", "hard"]
PASS_COLUMNS = ["method", "group", "k", "n_seeds", "mean", "ci_low", "ci_high"]
PASS_COLUMNS += ["change", "change_ci_low", "change_ci_high"]  # the paired change from the baseline


def _result(tmp_path: Path) -> tuple[CompareResult, CompareSpec]:
    """Three seeds x four prompts (easy, hard, easy, hard), every seed alike. sft: greedy 0, pass@1 0.25, pass@2 0.5
    on every prompt; grpo: greedy 1, pass@1 1 on easy and 0.5 on hard prompts, pass@2 1; ppo as sft; dpo 0
    everywhere. grpo also has a checkpoint at step 5 (no pass@k)."""
    points = []
    for seed in range(3):
        points += [_point("sft", seed, SFT), _point("grpo", seed, GRPO), _point("ppo", seed, SFT)]
        points += [_point("dpo", seed, DPO), _point("grpo", seed, {}, final=False, step=5)]
    spec = CompareSpec(**SECTION, pass_at_k={"k": [1, 2], "samples": 4}, bootstrap_reps=200)
    return CompareResult(tmp_path, points, aggregate(points, spec, GROUPS), prompt_groups=GROUPS), spec


def test_rows_summarize_pass_at_k_over_all_prompts_and_each_group(tmp_path: Path) -> None:
    """grpo's pass@1: 1 on the easy prompts, 0.5 on the hard ones, so 0.75 over all four; each group holds two
    prompts. Checkpoint rows have no pass@k."""
    result, _ = _result(tmp_path)
    grpo = next(r for r in result.final_rows() if r.method == "grpo")
    assert list(grpo.pass_at_k) == ["all", "easy", "hard"] and list(grpo.pass_at_k["all"]) == ["greedy", "1", "2"]
    assert grpo.pass_at_k["all"]["1"].mean == pytest.approx(0.75)
    easy, hard = grpo.pass_at_k["easy"]["1"], grpo.pass_at_k["hard"]["1"]
    assert (easy.mean, easy.ci, easy.n_prompts, easy.n_seeds) == (1.0, (1.0, 1.0), 2, 3)
    assert (hard.mean, hard.ci) == (0.5, (0.5, 0.5))
    assert next(r for r in result.rows if r.method == "grpo" and not r.final).pass_at_k == {}
    assert [r.method for r in result.pass_at_k_rows()] == ["sft", "grpo", "ppo", "dpo"]
    json.dumps([_row_json(r) for r in result.rows] + [asdict(p) for p in result.points])  # results.json


def test_summary_has_a_pass_at_k_section_and_pass_at_k_csv(tmp_path: Path) -> None:
    result, spec = _result(tmp_path)
    write_table(result, 4, spec)
    table = (tmp_path / "summary.md").read_text()
    section = table.split("## Pass@k\n")[1]
    assert "n = 4 samples at temperature 1, c of them correct" in section and "(true reward >= 1)" in section
    assert "| method | n | greedy pass@1 | pass@1 | pass@2 |" in section
    assert "| sft | 3 | 0.00 [0.00, 0.00] | 0.25 [0.25, 0.25] | 0.50 [0.50, 0.50] |" in section
    assert "| grpo | 3 | 1.00 [1.00, 1.00] | 0.75 [" in section
    groups = section.split("difficulty = easy (2 prompts):")[1]
    assert "| grpo | 3 | 1.00 [1.00, 1.00] | 1.00 [1.00, 1.00] | 1.00 [1.00, 1.00] |" in groups.split("difficulty =")[0]
    assert "| grpo | 3 | 1.00 [1.00, 1.00] | 0.50 [0.50, 0.50] | 1.00 [1.00, 1.00] |" in groups  # hard
    # the paired change from sft: grpo's pass@1 0.75 - 0.25 = +0.50 (hard prompts 0.5 - 0.25 = +0.25), greedy
    # 1 - 0 = +1; ppo is sft (0, no arrow); dpo 0 - 0.25 and 0 - 0.5 below 0
    change = section.split("Change from sft, paired")[1]
    assert "| change, all prompts | greedy pass@1 | pass@1 | pass@2 |" in change
    # prompts differ in grpo's change (+0.75 easy, +0.25 hard), so resampling them spreads its interval
    assert "| grpo | +1.00 [+1.00, +1.00] ↑ | +0.50 [+0.25, +0.75] ↑ | +0.50 [+0.50, +0.50] ↑ |" in change
    assert "| ppo | +0.00 [+0.00, +0.00] | +0.00 [+0.00, +0.00] | +0.00 [+0.00, +0.00] |" in change
    assert "| dpo | +0.00 [+0.00, +0.00] | -0.25 [-0.25, -0.25] ↓ | -0.50 [-0.50, -0.50] ↓ |" in change
    hard = change.split("| change, difficulty = hard |")[1]
    assert "| grpo | +1.00 [+1.00, +1.00] ↑ | +0.25 [+0.25, +0.25] ↑ | +0.50 [+0.50, +0.50] ↑ |" in hard
    assert "\n| sft |" not in change.split("Probability of improvement")[0]
    assert table.index("Ranking by true reward") < table.index("## Pass@k") < table.index("Probability of improvement")

    rows = list(csv.DictReader((tmp_path / "pass_at_k.csv").open()))
    assert list(rows[0]) == [*PASS_COLUMNS]
    assert len(rows) == 4 * 3 * 3  # methods x groups (all, easy, hard) x (greedy, 1, 2)
    got = {(r["method"], r["group"], r["k"]): r for r in rows}
    assert got[("grpo", "hard", "1")] == {
        "method": "grpo",
        "group": "hard",
        "k": "1",
        "n_seeds": "3",
        "mean": "0.5",
        "ci_low": "0.5",
        "ci_high": "0.5",
        "change": "0.25",
        "change_ci_low": "0.25",
        "change_ci_high": "0.25",
    }
    assert got[("sft", "all", "1")]["change"] == ""  # the baseline has no change from itself
    assert float(got[("sft", "all", "greedy")]["mean"]) == 0.0 and float(got[("grpo", "all", "1")]["mean"]) == 0.75


def test_without_pass_at_k_the_table_and_files_are_as_before(tmp_path: Path) -> None:
    points = [_point(m, s, {}) for s in range(2) for m in ("sft", "grpo")]
    spec = CompareSpec(**SECTION, bootstrap_reps=100)
    rows = aggregate(points, spec)
    assert all(r.pass_at_k == {} for r in rows)
    write_table(CompareResult(tmp_path, points, rows), 4, spec)
    assert "Pass@k" not in (tmp_path / "summary.md").read_text() and not (tmp_path / "pass_at_k.csv").exists()


def test_tensorboard_values_log_line_and_curve(tmp_path: Path) -> None:
    """grpo's seed-0 point: pass@1 0.75 over all prompts, 1 easy, 0.5 hard; the row (mean over seeds) the same,
    since every seed is alike. A group label with a slash or a space stays one level of the tag."""
    result, _ = _result(tmp_path)
    point = next(p for p in result.finals() if p.method == "grpo")
    values = pass_at_k_scalars(point, GROUPS)
    assert values == pytest.approx(
        {
            "eval/pass@k/greedy": 1.0,
            "eval/pass@k/1": 0.75,
            "eval/pass@k/2": 1.0,
            "eval/pass@k/easy/greedy": 1.0,
            "eval/pass@k/easy/1": 1.0,
            "eval/pass@k/easy/2": 1.0,
            "eval/pass@k/hard/greedy": 1.0,
            "eval/pass@k/hard/1": 0.5,
            "eval/pass@k/hard/2": 1.0,
        }
    )
    row = next(r for r in result.final_rows() if r.method == "grpo")
    assert pass_at_k_scalars(row) == pytest.approx(values)
    assert pass_at_k_curve(point) == pass_at_k_curve(row) == pytest.approx({1: 0.75, 2: 1.0})
    assert pass_at_k_note(point.pass_at_k) == "; pass@1 0.75, pass@2 1.00, greedy 1.00"
    assert pass_at_k_note({}) == ""
    odd = pass_at_k_scalars(Point(**{**asdict(point), "pass_at_k": {"1": [1.0, 0.0]}}), ["a/b c", "d"])
    assert odd == {"eval/pass@k/1": 0.5, "eval/pass@k/a_b_c/1": 1.0, "eval/pass@k/d/1": 0.0}
