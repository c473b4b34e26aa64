"""The comparison's arithmetic: best-of-n selection and its KL, standard errors, and the summary table."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from alignkit.compare import CompareResult, Point, aggregate, best_of_n, write_table
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


def test_table_gives_seeds_intervals_and_claims_only_separable_orders(tmp_path: Path) -> None:
    """Three seeds x two prompts. sft's per-prompt true rewards are 0 everywhere; dpo's are (1, 2), (2, 3),
    (3, 4) per seed, so its per-seed means are 1.5, 2.5, 3.5: mean 2.5, IQM 2.5, s.e. 1 / sqrt(3) = 0.577;
    every bootstrap replicate of dpo is at least 1 > 0, so its interval lies above sft's [0, 0] and the ranking
    says so; P(dpo > sft) = 1 on both prompts."""

    def point(method: str, seed: int, rewards: list[float], step: int = 10, final: bool = True) -> Point:
        return Point(
            method,
            method,
            method,
            step,
            sum(rewards) / 2,
            0.0,
            1.0,
            0.0,
            0.5,
            12.0,
            30.0,
            500.0,
            final,
            seed,
            per_prompt={"true": rewards, "kl": [1.0, 1.0]},
        )

    points = [point("sft", k, [0.0, 0.0], step=0) for k in range(3)]
    points += [point("dpo", k, [1.0 + k, 2.0 + k]) for k in range(3)]
    points += [point("dpo", k, [0.5, 0.5], step=5, final=False) for k in range(3)]
    spec = CompareSpec(
        prompts={"generator": "review_prompts"},
        true_reward={"kind": "rule", "name": "review_sentiment"},
        bootstrap_reps=200,
    )
    result = CompareResult(tmp_path, points, aggregate(points, spec))
    write_table(result, 2, spec)
    table = (tmp_path / "summary.md").read_text()
    assert "3 seeds (0, 1, 2); every stage ran once per seed" in table
    assert "| sft | 3 | +0.000 [+0.000, +0.000] | +0.000 | – | 1.00 [1.00, 1.00] |" in table
    assert (
        "| dpo | 3 | +2.500 [+" in table
        and "| +2.500 | +2.500 | 1.00 [1.00, 1.00] | 0.50 | 12.0 | 30 s | 500 MB |" in table
    )
    assert "    dpo > sft\n" in table and "- dpo: above sft" in table
    assert "| dpo | 1.00 [1.00, 1.00] | – |" in table
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    got = {(r["method"], r["step"]): r for r in rows}
    assert set(got) == {("sft", "0"), ("dpo", "10"), ("dpo", "5")}
    dpo = got[("dpo", "10")]
    assert float(dpo["true_reward_se"]) == pytest.approx(1 / math.sqrt(3))
    assert float(dpo["delta_vs_baseline"]) == 2.5 and float(got[("dpo", "5")]["true_reward"]) == 0.5
