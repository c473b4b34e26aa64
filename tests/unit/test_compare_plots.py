"""The comparison's four figures are drawn from a synthetic multi-seed result (and a one-seed one) without error."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alignkit.compare import BEST_OF, CompareResult, Point, aggregate
from alignkit.compare_plots import plot_all
from alignkit.pipeline import CompareSpec

FIGURES = ("frontier.png", "curves.png", "improvement.png", "reward_vs_time.png")
SPEC = CompareSpec(
    prompts={"generator": "review_prompts"},
    true_reward={"kind": "rule", "name": "review_sentiment"},
    bootstrap_reps=200,
)


def synthetic(
    tmp: Path,
    seeds: list[int | None],
    methods: dict[str, tuple[list[int], float, float, float]] | None = None,
    best_of: tuple[int, ...] = (1, 2, 4),
    prompts: int = 24,
) -> CompareResult:
    """A comparison as `run_compare` would leave it: per seed, the baseline (sft, step 0), best-of-n and each
    method's checkpoints then its final policy, with per-prompt scores = prompt effect + seed effect + noise.
    methods: name -> (steps, final true reward, final KL, seconds per step)."""
    methods = methods or {"dpo": ([50, 100, 150], 1.2, 6.0, 0.04), "grpo": ([25, 50, 100], 1.5, 4.5, 0.22)}
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 0.3, prompts)
    points: list[Point] = []

    def point(method: str, algorithm: str, step: int, true: np.ndarray, kl: np.ndarray, **kw: object) -> Point:
        return Point(
            method=method,
            stage=kw.pop("stage", method),  # type: ignore[arg-type]
            algorithm=algorithm,
            step=step,
            true_reward=float(true.mean()),
            true_reward_se=float(true.std() / math.sqrt(prompts)),
            kl=float(kl.mean()),
            kl_se=float(kl.std() / math.sqrt(prompts)),
            rm_score=float(true.mean()) * 0.8,
            length=20.0,
            per_prompt={"true": true.tolist(), "kl": kl.tolist()},
            **kw,  # type: ignore[arg-type]
        )

    for seed in seeds:
        noise = lambda scale: rng.normal(0, scale, prompts)  # noqa: E731
        base = 0.05 + difficulty + rng.normal(0, 0.05) + noise(0.2)
        points.append(point("sft", "sft", 0, base, np.zeros(prompts), train_time_s=17.0, seed=seed))
        for n in best_of:
            kl = np.full(prompts, math.log(n) - (n - 1) / n)
            true = base + 0.45 * math.log(n) + noise(0.15)
            points.append(
                point(
                    f"best-of-{n}",
                    BEST_OF,
                    n,
                    true,
                    kl,
                    stage="sft",
                    train_time_s=None,
                    seed=seed,
                    final=n == max(best_of),
                )
            )
        for name, (steps, reward, kl_end, per_step) in methods.items():
            shift, pace = rng.normal(0, 0.12), rng.uniform(0.85, 1.15)
            for step in steps:
                frac = step / steps[-1]
                true = base + (reward - 0.05) * frac**0.6 + shift + noise(0.25)
                kl = np.abs(kl_end * frac * (1 + rng.normal(0, 0.15)) + noise(0.8))
                time = per_step * step * pace * (1 + 0.02 * rng.normal())
                points.append(point(name, name, step, true, kl, train_time_s=time, seed=seed, final=step == steps[-1]))
    return CompareResult(tmp, points, aggregate(points, SPEC), baseline="sft")


@pytest.mark.parametrize("seeds", [[0, 1, 2], [None]], ids=["three_seeds", "one_seed"])
def test_plot_all_writes_four_readable_figures(tmp_path: Path, seeds: list[int | None]) -> None:
    result = synthetic(tmp_path, seeds)
    plot_all(result, tmp_path, reps=200)
    for name in FIGURES:
        path = tmp_path / name
        assert path.stat().st_size > 20_000, name  # a drawn figure, not an empty canvas
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 400, (name, image.size)


def test_plot_all_copes_with_a_missing_run_no_best_of_n_and_no_times(tmp_path: Path) -> None:
    """grpo did not finish in seed 2 (its legend entry says 2 of 3 seeds), no reward model (no best-of-n), and
    dpo's checkpoints have no time (a run record without `started`): every figure is still drawn."""
    full = synthetic(tmp_path, [0, 1, 2], best_of=())
    points = [p for p in full.points if not (p.method == "grpo" and p.seed == 2)]
    for p in points:
        if p.method == "dpo" and not p.final:
            p.train_time_s = None
    result = CompareResult(tmp_path, points, aggregate(points, SPEC), baseline="sft")
    plot_all(result, tmp_path, reps=50)
    assert all((tmp_path / name).stat().st_size > 20_000 for name in FIGURES)


def test_up_to_eighteen_methods_get_a_colour_each(tmp_path: Path) -> None:
    """The issue-16 comparison has 16 methods: tab10 alone gave six pairs of them one colour."""
    from alignkit.compare_plots import _View

    methods = {f"m{i}": ([10], 1.0, 2.0, 0.1) for i in range(18)}
    view = _View.of(synthetic(tmp_path, [0], methods, best_of=()))
    assert len(view.methods) == 18 and len(set(view.colors.values())) == 18


def test_pass_at_k_figures_are_drawn_when_the_result_has_pass_at_k(tmp_path: Path) -> None:
    """The final policies get per-prompt pass@k (greedy, k = 1, 2, 4, 8) that rises with k, 4 prompt groups of 6:
    pass_at_k.png and pass_at_k_change.png (a panel per group and one for all prompts) and pass1_vs_kl.png are
    written, readable; without pass@k (the other tests) none is."""
    from alignkit.pipeline import PassAtKSpec

    full = synthetic(tmp_path, [0, 1, 2], best_of=())
    groups = [f"terms={2 + i % 4}" for i in range(24)]
    rng = np.random.default_rng(1)
    skill = {"sft": 0.2, "dpo": 0.3, "grpo": 0.45}
    for p in full.finals():
        solve = np.clip(skill[p.method] - 0.08 * (np.arange(24) % 4) + rng.normal(0, 0.05, 24), 0.0, 1.0)
        p.pass_at_k = {"greedy": (solve > 0.3).astype(float).tolist()}
        p.pass_at_k |= {str(k): (1 - (1 - solve) ** k).tolist() for k in (1, 2, 4, 8)}
    result = CompareResult(tmp_path, full.points, aggregate(full.points, SPEC, groups), prompt_groups=groups)
    assert list(result.final_rows()[0].pass_at_k) == ["all", "terms=2", "terms=3", "terms=4", "terms=5"]
    plot_all(result, tmp_path, reps=50, pass_at_k=PassAtKSpec(k=[1, 2, 4, 8], samples=8))
    for name in ("pass_at_k.png", "pass_at_k_change.png", "pass1_vs_kl.png"):
        path = tmp_path / name
        assert path.stat().st_size > 20_000, name
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 400, (name, image.size)
    no_pass = tmp_path / "plain"
    plot_all(synthetic(no_pass, [0], best_of=()), no_pass, reps=50)
    assert not any((no_pass / name).exists() for name in ("pass_at_k.png", "pass_at_k_change.png", "pass1_vs_kl.png"))
