"""Bandit study reporting: mean/s.e. and the bootstrap interval by hand, CSV round trips, the Markdown table,
figures and their skip rules."""

from __future__ import annotations

import csv
import math

import pytest
from matplotlib.image import imread

from alignkit.bandits.report import (
    gap_ci,
    markdown_table,
    mean_se,
    plot_gap_vs_n,
    plot_gap_vs_ratio,
    summary_table,
    write_csv,
    write_report,
    write_seed_csv,
)

SEEDS = [2021, 2022, 2023]
BASE_GAP = {"dpo": 0.5, "rmb_po": 0.3, "rmb_po_plus": 0.2}


def row(budget: str, method: str, n: int, m: int = 0, linear: bool = True, gap: list[float] | None = None) -> dict:
    """A synthetic result row; the gap shrinks with n and, for RMB-PO+, with m."""
    ratio = m / n if method == "rmb_po_plus" else 0.0
    base = BASE_GAP[method] * 20 / n / (1 + ratio)
    gap = gap or [base + 0.01 * i for i in range(len(SEEDS))]
    return {
        "budget": budget, "method": method, "n": n, "m": m, "ratio": ratio, "seeds": list(SEEDS),
        "gap": gap, "value": [1.8634 - g for g in gap], "objective": [1.8 - g for g in gap],
        "kl_ref": [1.0, 1.1, 1.2], "best_in_class_gap": [0.08, 0.081, 0.0815] if linear else None,
        "steps": 200 if method == "dpo" else 1000, "wall_s": 0.5,
    }  # fmt: skip


def study(budgets=("released",), ns=(20,), ratios=(0.5,), linear: bool = True) -> list[dict]:
    """Rows as a study over budgets x n x m/n gives them: DPO and RMB-PO once per (budget, n, m)."""
    out = []
    for budget in budgets:
        for n in ns:
            for ratio in ratios:
                m = round(ratio * n)
                out += [row(budget, method, n, m, linear) for method in ("rmb_po_plus", "rmb_po", "dpo")]
    return out


def test_mean_se_by_hand():
    """[1, 2, 3]: mean 2; sample std 1, so s.e. 1/sqrt(3) = 0.57735. One seed: s.e. 0."""
    mean, se = mean_se([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert se == pytest.approx(1 / math.sqrt(3))
    assert mean_se([0.25]) == (pytest.approx(0.25), 0.0)


def test_gap_ci_by_hand():
    """Gaps 0.4, 0.5 over 2 seeds: a replicate's mean is 0.4, 0.45 or 0.5 with probability 1/4, 1/2, 1/4, so the
    2.5% and 97.5% quantiles of 2000 replicates are 0.4 and 0.5. With 3 seeds each all-one-seed replicate has
    probability 1/27 = 3.7% > 2.5%: the interval is the range. One seed, or equal gaps: no spread."""
    assert gap_ci([0.4, 0.5]) == pytest.approx((0.4, 0.5))
    assert gap_ci([0.2, 0.9, 0.3]) == pytest.approx((0.2, 0.9))
    assert gap_ci([0.25]) == (0.25, 0.25)
    assert gap_ci([0.1] * 4) == pytest.approx((0.1, 0.1))
    ten = [0.5, 0.2, 0.9, 0.4, 0.45, 0.33, 0.61, 0.28, 0.52, 0.47]
    low, high = gap_ci(ten)
    assert min(ten) < low < sum(ten) / 10 < high < max(ten)
    assert gap_ci(ten) == (low, high)  # a fixed bootstrap seed: tables are reproducible


def test_summary_sorted_by_budget_n_ratio_method():
    rows = study(budgets=("converged", "released"), ns=(50, 20), ratios=(2.0, 0.5))
    lines = summary_table(rows)
    assert len(lines) == len(rows)
    keys = [(x["budget"], x["n"], x["ratio"], x["method"]) for x in lines]
    assert keys[:4] == [
        ("released", 20, 0.0, "dpo"), ("released", 20, 0.0, "dpo"),
        ("released", 20, 0.0, "rmb_po"), ("released", 20, 0.0, "rmb_po"),
    ]  # fmt: skip
    assert keys[4:6] == [("released", 20, 0.5, "rmb_po_plus"), ("released", 20, 2.0, "rmb_po_plus")]
    assert lines[-1]["budget"] == "converged"


NUMBERS = ("gap_mean", "gap_se", "gap_ci_low", "gap_ci_high", "objective_mean", "kl_ref_se", "value_mean", "wall_s")


def test_csv_round_trip(tmp_path):
    rows = [*study(ns=(20, 40), ratios=(0.5, 2.0)), row("released", "dpo", 10, linear=False, gap=[0.4, 0.5])]
    rows[-1].update(seeds=[1, 2], value=[0.0, 1.0], objective=[0.0, 1.0], kl_ref=[0.0, 1.0])
    with write_csv(rows, tmp_path / "results.csv").open() as f:
        read = list(csv.DictReader(f))
    assert len(read) == len(rows)
    for line, expected in zip(read, summary_table(rows), strict=True):
        assert line["method"] == expected["method"]
        assert int(line["n"]) == expected["n"] and int(line["seeds"]) == expected["seeds"]
        for key in NUMBERS:
            assert float(line[key]) == expected[key], key
        bic = expected["best_in_class_gap"]
        assert line["best_in_class_gap"] == ("" if bic is None else str(bic))
    assert read[0]["n"] == "10" and float(read[0]["gap_mean"]) == pytest.approx(0.45)
    assert (float(read[0]["gap_ci_low"]), float(read[0]["gap_ci_high"])) == pytest.approx((0.4, 0.5))

    with write_seed_csv(rows, tmp_path / "seeds.csv").open() as f:
        per_seed = list(csv.DictReader(f))
    assert len(per_seed) == sum(len(r["seeds"]) for r in rows)
    assert [(x["seed"], float(x["gap"])) for x in per_seed[:2]] == [("1", 0.4), ("2", 0.5)]


def test_markdown_table():
    rows = study(budgets=("released", "converged"), ns=(20,), ratios=(0.5, 2.0))
    spread = 0.0454 * math.sqrt(3)
    rows.append(row("released", "dpo", 50, m=25, gap=[0.4951 + spread, 0.4951, 0.4951 - spread]))
    text = markdown_table(rows)
    assert text.index("budget: released") < text.index("budget: converged")
    for name in ("DPO", "RMB-PO", "RMB-PO+"):
        assert f"| {name} " in text
    # gaps a + d sqrt(3), a, a - d sqrt(3): mean a; sample variance (3 d^2 + 0 + 3 d^2) / 2 = 3 d^2; s.e. d;
    # 3 seeds: the 95% bootstrap interval is the range, a ± d sqrt(3) = 0.4951 ± 0.078635 = [0.416465, 0.573735]
    assert "mean ± s.e. [95% bootstrap CI] over 3 seeds" in text
    dpo_line = next(line for line in text.splitlines() if "0.4951 ± 0.0454" in line)
    cells = [c.strip() for c in dpo_line.strip("|").split("|")]
    assert cells == ["50", "–", "0.4951 ± 0.0454 [0.416, 0.574]", "–", "–"]
    # DPO and RMB-PO fill both m/n lines of n = 20
    ratio_lines = [line for line in text.splitlines() if line.startswith("| 20 ")]
    assert len(ratio_lines) == 4 and all(line.count("±") == 3 and line.count("[") == 3 for line in ratio_lines)
    assert text.count("best policy in the class: gap 0.0808 (irreducible with these features)") == 2
    assert "best policy in the class" not in markdown_table(study(linear=False))


def check_png(path) -> None:
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert path.stat().st_size < 100_000


def test_figures_written_and_skipped(tmp_path):
    rows = study(budgets=("released", "converged"), ns=(20, 50, 500), ratios=(0.5, 2.0))
    check_png(plot_gap_vs_n(rows, tmp_path / "n.png", title="linear, flip"))
    check_png(plot_gap_vs_n(rows, tmp_path / "n1.png", budget="converged"))
    check_png(plot_gap_vs_ratio(rows, tmp_path / "ratio.png", title="linear, flip"))
    neural = study(ns=(50,), ratios=(2.0, 5.0, 10.0), linear=False)
    check_png(plot_gap_vs_ratio(neural, tmp_path / "neural.png", title="neural"))

    assert plot_gap_vs_n(neural, tmp_path / "skip.png") is None  # a single n
    no_plus = [r for r in rows if r["method"] != "rmb_po_plus"]
    assert plot_gap_vs_ratio(no_plus, tmp_path / "skip.png") is None
    assert plot_gap_vs_ratio(rows, tmp_path / "skip.png", budget="adam") is None
    assert not (tmp_path / "skip.png").exists()


def test_write_report(tmp_path):
    paths = write_report(study(linear=False, ratios=(0.5, 2.0)), tmp_path / "out", "neural bandit, n = 20")
    assert set(paths) == {"results.csv", "results_per_seed.csv", "results.md", "gap_vs_ratio.png"}
    assert all(p.exists() for p in paths.values())
    assert paths["results.md"].read_text().startswith("# neural bandit, n = 20\n")
