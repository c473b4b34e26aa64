"""The comparison's arithmetic: best-of-n selection and its KL, standard errors, and the summary table."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from alignkit.compare import CompareResult, Point, best_of_n, write_table
from alignkit.pipeline import CompareSpec
from alignkit.stats import mean_se


def test_best_of_n_keeps_the_reward_models_favourite_among_the_first_n() -> None:
    """Two prompts x 4 answers.

    prompt 0: rm [0.1, 0.9, 0.5, 2.0], true [0, 1, 2, 3] -> best-of-1 keeps answer 0 (true 0), best-of-2
    answer 1 (true 1), best-of-4 answer 3 (true 3).
    prompt 1: rm [1.0, 0.0, 3.0, 0.2], true [5, 6, 7, 8] -> best-of-1: 5; best-of-2: 5; best-of-4: 7.
    Means: n=1 (0+5)/2 = 2.5; n=2 (1+5)/2 = 3; n=4 (3+7)/2 = 5.
    KL: log 1 - 0 = 0; log 2 - 1/2 = 0.19315; log 4 - 3/4 = 0.63629.
    """
    answers = {
        "true": torch.tensor([0.0, 1, 2, 3, 5, 6, 7, 8]),
        "rm": torch.tensor([0.1, 0.9, 0.5, 2.0, 1.0, 0.0, 3.0, 0.2]),
        "length": torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8]),
    }
    points = best_of_n(answers, [4, 1, 2], 4, stage="sft", algorithm="best_of_n", train_time_s=None)
    assert [p.method for p in points] == ["best-of-1", "best-of-2", "best-of-4"]
    assert [p.true_reward for p in points] == [2.5, 3.0, 5.0]
    assert [p.kl for p in points] == pytest.approx([0.0, math.log(2) - 0.5, math.log(4) - 0.75])
    assert points[2].rm_score == pytest.approx((2.0 + 3.0) / 2) and points[2].length == (4 + 7) / 2
    assert [p.final for p in points] == [False, False, True]  # the largest n is the table's row


def test_mean_and_standard_error() -> None:
    """[1, 2, 3, 4]: mean 2.5; sample std sqrt(5/3) = 1.29099; se = 1.29099 / 2 = 0.645497."""
    assert mean_se(torch.tensor([1.0, 2, 3, 4])) == pytest.approx((2.5, 0.645497), abs=1e-6)
    assert mean_se(torch.tensor([3.0])) == (3.0, 0.0)


def test_table_says_how_much_each_method_beats_the_baseline(tmp_path: Path) -> None:
    def point(method: str, reward: float, kl: float, final: bool = True, step: int = 10) -> Point:
        return Point(method, method, method, step, reward, 0.1, kl, 0.2, 0.5, 12.0, 30.0, 500.0, final)

    base = point("sft", 0.25, 0.0)
    result = CompareResult(tmp_path, [base, point("dpo", 1.0, 3.0, final=False, step=5), point("dpo", 1.5, 4.0)])
    spec = CompareSpec(
        prompts={"generator": "review_prompts"}, true_reward={"kind": "rule", "name": "review_sentiment"}
    )
    write_table(result, base, 64, spec)
    table = (tmp_path / "summary.md").read_text()
    assert "| sft | +0.250 ± 0.100 | – | 0.00 |" in table
    assert "| dpo | +1.500 ± 0.100 | +1.250 | 4.00 | 0.50 | 12.0 | 30 s | 500 MB |" in table
    assert "64 held-out prompts x 4 samples" in table
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [(r["method"], r["step"], r["final"], float(r["delta_vs_baseline"])) for r in rows] == [
        ("sft", "10", "True", 0.0),
        ("dpo", "5", "False", 0.75),
        ("dpo", "10", "True", 1.25),
    ]
