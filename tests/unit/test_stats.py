"""alignkit.stats: IQM and probability of improvement by hand and against brute force (rliable's definitions),
the two-level bootstrap pinned and by its properties, summaries, and the separable ranking on built intervals."""

from __future__ import annotations

import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from alignkit.stats import (
    bootstrap_ci,
    bootstrap_replicates,
    improvement_matrix,
    iqm,
    probability_of_improvement,
    probability_of_improvement_ci,
    separable_order,
    separable_ranking,
    summarize,
)


class Est(NamedTuple):
    mean: float
    ci: tuple[float, float]


def test_imports_without_torch():
    code = "import sys, alignkit.stats; assert 'torch' not in sys.modules, 'alignkit.stats imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- IQM -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1, 2, 3, 4, 100, 5, 6, 7], 4.5),  # n 8: cut 2 each end of 1..7,100 -> 3,4,5,6 -> 18 / 4
        ([10, 1, 2, 3, 4], 3.0),  # n 5: cut int(1.25) = 1 each end of 1,2,3,4,10 -> 2,3,4 -> 9 / 3
        ([0, 1, 2, 3, 4, 50], 2.5),  # n 6: cut int(1.5) = 1 -> 1,2,3,4 -> 10 / 4
        ([1, 2, 9], 4.0),  # n 3: cut int(0.75) = 0, the mean 12 / 3
        ([7.5], 7.5),
    ],
)
def test_iqm_by_hand(values, expected):
    assert iqm(values) == pytest.approx(expected)


def test_iqm_needs_1d():
    with pytest.raises(ValueError, match="1-D"):
        iqm(np.ones((2, 2)))


# --- probability of improvement ------------------------------------------------------------------------------


def test_probability_of_improvement_by_hand():
    """One prompt, x seeds {1, 3}, y seeds {2, 2, 0}: the 6 pairs (1,2) (1,2) (1,0) (3,2) (3,2) (3,0) have x > y
    in 4 -> 4/6. Ties count a half: x {1, 2}, y {2, 3}: only (2,2) ties, nothing greater -> 0.5/4 = 0.125.
    Identical columns -> 0.5 (rliable's special case; here 3 pairs greater, 3 less, 3 tied of 9)."""
    assert probability_of_improvement([[1], [3]], [[2], [2], [0]]) == pytest.approx(4 / 6)
    assert probability_of_improvement([[1], [2]], [[2], [3]]) == pytest.approx(0.125)
    assert probability_of_improvement([[1], [1], [5]], [[1], [1], [5]]) == 0.5
    assert probability_of_improvement([[1, 2, 3]], [[1, 2, 3]]) == 0.5


def test_probability_of_improvement_averages_prompts():
    """Prompts (columns) averaged: prompt 0 is the 4/6 case above, prompt 1 all tied (1/2), prompt 2 x above y
    in all 6 pairs (1): (4/6 + 3/6 + 6/6) / 3 = 13/18; and P(Y > X) = 1 - 13/18 = 5/18."""
    x = [[1, 0, 7], [3, 0, 7]]
    y = [[2, 0, 1], [2, 0, 1], [0, 0, 1]]
    assert probability_of_improvement(x, y) == pytest.approx(13 / 18)
    assert probability_of_improvement(y, x) == pytest.approx(5 / 18)


def rliable_loop(x: np.ndarray, y: np.ndarray) -> float:
    """rliable's probability_of_improvement, written out: a double loop over pairs of seeds for each prompt."""
    per_prompt = []
    for p in range(x.shape[1]):
        if np.array_equal(x[:, p], y[:, p]):
            per_prompt.append(0.5)
            continue
        wins = sum((a > b) + 0.5 * (a == b) for a in x[:, p] for b in y[:, p])
        per_prompt.append(wins / (x.shape[0] * y.shape[0]))
    return float(np.mean(per_prompt))


@pytest.mark.parametrize("trial", range(5))
def test_probability_of_improvement_equals_brute_force_and_mann_whitney(trial):
    rng = np.random.default_rng(trial)
    x = rng.integers(0, 4, size=(rng.integers(1, 6), 7)).astype(float)  # few values: many ties
    y = rng.integers(0, 4, size=(rng.integers(1, 6), 7)).astype(float)
    y[:, 0] = x[0, 0]
    if x.shape[0] == y.shape[0]:
        y[:, 1] = x[:, 1]  # an identical column
    assert probability_of_improvement(x, y) == pytest.approx(rliable_loop(x, y), abs=1e-12)
    u = mannwhitneyu(x, y, axis=0, alternative="greater").statistic / (len(x) * len(y))
    same = [np.array_equal(x[:, p], y[:, p]) for p in range(x.shape[1])]
    assert probability_of_improvement(x, y) == pytest.approx(np.where(same, 0.5, u).mean(), abs=1e-12)


def test_probability_of_improvement_ci():
    """x above y on every seed and prompt: every replicate gives 1. Mixed scores: the interval holds the estimate."""
    high, low = np.full((3, 4), 2.0), np.full((5, 4), 1.0)
    assert probability_of_improvement_ci(high, low, reps=50) == (1.0, 1.0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(0.3, 1, (5, 20)), rng.normal(0, 1, (4, 20))
    lo, hi = probability_of_improvement_ci(x, y, reps=500)
    assert lo < probability_of_improvement(x, y) < hi


def test_probability_of_improvement_needs_same_prompts():
    with pytest.raises(ValueError, match="same prompts"):
        probability_of_improvement(np.ones((2, 3)), np.ones((2, 4)))


# --- the two-level bootstrap ---------------------------------------------------------------------------------

X = np.array([[0.0, 1, 2], [10, 11, 12]])  # score = 10 x seed + prompt, so a resample shows what it drew


def test_bootstrap_pinned():
    """X, reps 4, seed 0. default_rng(0) draws the seeds [1,1] [1,0] [0,0] [0,0], then (crossed) one prompt draw
    per replicate [0,2,1] [2,1,1] [2,2,1] [1,1,2]. Replicate means: (10+12+11) x 2 / 6 = 11;
    (12+11+11 + 2+1+1) / 6 = 38/6; (2+2+1) x 2 / 6 = 5/3; (1+1+2) x 2 / 6 = 4/3. Percentile interval of the
    sorted 4/3, 5/3, 38/6, 11 at 2.5% (position 0.075) and 97.5% (2.925): 4/3 + 0.075/3 = 1.358333 and
    38/6 + 0.925 x (11 - 38/6) = 10.65. (Pins numpy's PCG64 integer streams, stable across numpy versions.)"""
    np.testing.assert_allclose(bootstrap_replicates(X, reps=4, seed=0), [11, 38 / 6, 5 / 3, 4 / 3], rtol=1e-12)
    assert bootstrap_ci(X, reps=4, seed=0) == pytest.approx((1.358333333, 10.65))
    nested = bootstrap_replicates(X, reps=4, seed=0, prompts="nested")
    np.testing.assert_allclose(nested, [67 / 6, 6.5, 7 / 6, 7 / 6], rtol=1e-12)


def loop_reference(mats, reps, seed, prompts, statistic):
    """The bootstrap written as loops over replicates, seed slots and prompt slots, from the same draws."""
    rng = np.random.default_rng(seed)
    seed_idx = [rng.integers(0, m.shape[0], size=(reps, m.shape[0])) for m in mats]
    rows = 1 if prompts == "crossed" else max(m.shape[0] for m in mats)
    prompt_idx = rng.integers(0, mats[0].shape[1], size=(reps, rows, mats[0].shape[1]))
    out = []
    for r in range(reps):
        stacks = []
        for m, s in zip(mats, seed_idx, strict=True):
            resampled = [
                [m[s[r, k], prompt_idx[r, 0 if prompts == "crossed" else k, j]] for j in range(m.shape[1])]
                for k in range(m.shape[0])
            ]
            stacks.append(np.array([resampled]))
        out.append(statistic(*stacks)[0])
    return np.array(out)


@pytest.mark.parametrize("prompts", ["crossed", "nested"])
def test_bootstrap_equals_loops(prompts):
    rng = np.random.default_rng(1)
    mats = [rng.normal(size=(3, 4)), rng.normal(size=(2, 4))]

    def gap(a, b):
        return a.mean(axis=(1, 2)) - b.mean(axis=(1, 2))

    fast = bootstrap_replicates(*mats, statistic=gap, reps=30, seed=5, prompts=prompts)
    np.testing.assert_allclose(fast, loop_reference(mats, 30, 5, prompts, gap), rtol=1e-12)


def test_bootstrap_deterministic_given_seed():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 6))
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci(x, seed=3) != bootstrap_ci(x, seed=4)


def test_bootstrap_chunks_do_not_change_replicates(monkeypatch):
    import alignkit.stats

    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 5))
    whole = bootstrap_replicates(x, reps=100)
    monkeypatch.setattr(alignkit.stats, "_CHUNK_ELEMENTS", 40)  # chunks of 2 replicates
    np.testing.assert_array_equal(bootstrap_replicates(x, reps=100), whole)


@pytest.mark.parametrize("prompts", ["crossed", "nested"])
def test_constant_matrix_collapses(prompts):
    x = np.full((4, 7), 0.3)
    for low_high in (bootstrap_ci(x, prompts=prompts), summarize({"a": x}, prompts=prompts)["a"].iqm_ci):
        assert low_high == pytest.approx((0.3, 0.3), abs=1e-12)


def test_one_seed_varies_over_prompts_only():
    """With one seed every replicate holds that seed's scores at the drawn prompts: a one-level bootstrap over
    prompts. The draws are read off a matrix whose scores are the prompt indices."""
    values = np.array([[3.0, -1.0, 4.0, 1.5, 9.0]])
    drawn: list[np.ndarray] = []
    bootstrap_replicates(np.arange(5.0)[None], statistic=lambda a: drawn.append(a) or a.mean(axis=(1, 2)), reps=20)
    idx = drawn[0][:, 0, :].astype(int)  # [reps, prompts]
    assert len({tuple(i) for i in idx}) > 1
    np.testing.assert_allclose(bootstrap_replicates(values, reps=20), values[0][idx].mean(axis=1), rtol=1e-12)


def test_one_prompt_varies_over_seeds_only():
    """Per-seed values as a [seeds, 1] matrix: replicates are the means of seeds drawn with replacement (the
    first draw of default_rng(seed)), whatever the prompt mode."""
    gaps = np.array([0.5, 0.2, 0.9, 0.4])[:, None]
    idx = np.random.default_rng(7).integers(0, 4, size=(50, 4))
    expected = gaps[idx, 0].mean(axis=1)
    for prompts in ("crossed", "nested"):
        np.testing.assert_allclose(bootstrap_replicates(gaps, reps=50, seed=7, prompts=prompts), expected)


@pytest.mark.parametrize("shape", [(400, 1), (1, 400)])
def test_ci_of_iid_mean_is_about_mean_pm_196_se(shape):
    """One level (many seeds of one prompt, or one seed over many prompts): the percentile interval is close to
    mean ± 1.96 s.e."""
    x = np.random.default_rng(4).normal(2.0, 3.0, size=shape)
    mean, se = x.mean(), x.std(ddof=1) / np.sqrt(x.size)
    low, high = bootstrap_ci(x)
    assert low == pytest.approx(mean - 1.96 * se, abs=0.15 * se)
    assert high == pytest.approx(mean + 1.96 * se, abs=0.15 * se)


def test_two_levels_on_noise_and_on_a_prompt_effect():
    """Scores with neither a seed nor a prompt effect (iid noise, s.d. 1, 30 x 30): the crossed bootstrap's
    variance is about ((2 - 1/S)(2 - 1/P) - 1) / (S P) = 2.87 / 900 (cells drawn N_s M_p times, E N^2 = 2 - 1/S),
    the nested one's about (2 - 1/S - 1/P) / (S P) = 1.93 / 900: both wider than the 1 / 900 of the mean.
    With a prompt effect shared by all seeds (s.d. 1 per prompt, noise 0.1), the mean's variance is about
    1 / P = 1/30; the crossed bootstrap sees it, the nested one sees about 1 / (S P)."""
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(30, 30))
    assert bootstrap_replicates(noise).var() * 900 == pytest.approx(2.87, rel=0.2)
    assert bootstrap_replicates(noise, prompts="nested").var() * 900 == pytest.approx(1.93, rel=0.2)
    shared = rng.normal(size=(1, 30)) + 0.1 * noise
    prompt_var = shared.mean(axis=0).var(ddof=1) / 30
    assert bootstrap_replicates(shared).var() == pytest.approx(prompt_var, rel=0.25)
    assert bootstrap_replicates(shared, prompts="nested").var() < prompt_var / 10


def recorded(*mats, **kw) -> list[np.ndarray]:
    """The resampled stacks a statistic receives (one chunk: small inputs)."""
    seen: list[np.ndarray] = []

    def keep(*stacks):
        seen.extend(stacks)
        return stacks[0].mean(axis=(1, 2))

    bootstrap_replicates(*mats, statistic=keep, **kw)
    return seen


def test_shared_prompts_same_indices_for_all_methods_seeds_independent():
    """Scores 100 x seed + prompt: a resampled score shows the seed (// 100) and prompt (% 100) it came from.
    Crossed and shared: in a replicate every seed slot of both methods holds the same prompt indices; the seed
    draws differ between the methods. Nested and shared: seed slot k holds the same prompts in both methods."""
    a = 100 * np.arange(3.0)[:, None] + np.arange(6.0)
    b = 100 * np.arange(4.0)[:, None] + np.arange(6.0)
    ra, rb = recorded(a, b, reps=40)
    pa, pb = ra % 100, rb % 100
    assert (pa == pa[:, :1]).all() and (pb == pb[:, :1]).all() and (pa[:, 0] == pb[:, 0]).all()
    assert (ra // 100 != (rb // 100)[:, :3]).any()
    na, nb = (x % 100 for x in recorded(a, b, reps=40, prompts="nested"))
    assert (na == nb[:, :3]).all() and (na[:, 0] != na[:, 1]).any()
    ua, ub = (x % 100 for x in recorded(a, b, reps=40, share_prompts=False))
    assert (ua[:, 0] != ub[:, 0]).any()


def test_bootstrap_errors():
    with pytest.raises(ValueError, match=r"reshape\(-1, 1\)"):
        bootstrap_ci(np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([[1.0, np.nan]])
    with pytest.raises(ValueError, match="share_prompts"):
        bootstrap_ci(np.ones((2, 3)), np.ones((2, 4)), statistic=lambda a, b: a.mean(axis=(1, 2)))
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(np.ones((2, 3)), alpha=1.5)
    with pytest.raises(ValueError, match="allowed"):
        bootstrap_ci(np.ones((2, 3)), prompts="paired")


# --- summaries -----------------------------------------------------------------------------------------------


def test_summarize_by_hand():
    """[[1, 2, 3], [3, 4, 5]]: per-seed means 2 and 4; mean 3; s.e. = sample s.d. sqrt(2) / sqrt(2) = 1; IQM of
    two values cuts none: 3. One seed: s.e. 0. A method's summary is the same alone or beside others."""
    x = np.array([[1.0, 2, 3], [3, 4, 5]])
    s = summarize({"a": x, "b": x[:1] + 1})
    a = s["a"]
    assert (a.n_seeds, a.n_prompts, a.per_seed) == (2, 3, (2.0, 4.0))
    assert (a.mean, a.se, a.iqm) == (pytest.approx(3.0), pytest.approx(1.0), pytest.approx(3.0))
    assert a.ci == bootstrap_ci(x) and a.ci[0] < 3 < a.ci[1]
    assert a.iqm_ci[0] <= 3 <= a.iqm_ci[1]

    def iqm_loop(stack):
        return np.array([iqm(m.mean(axis=1)) for m in stack])

    assert a.iqm_ci == pytest.approx(bootstrap_ci(x, statistic=iqm_loop), abs=1e-12)
    assert s["b"].se == 0.0 and s["b"].mean == pytest.approx(3.0)
    assert summarize({"a": x})["a"] == a
    assert list(s) == ["a", "b"]


def test_improvement_matrix():
    rng = np.random.default_rng(6)
    scores = {"ppo": rng.normal(0, 1, (3, 8)), "grpo": rng.normal(1, 1, (4, 8)), "dpo": rng.normal(0, 1, (2, 8))}
    names, p, low, high = improvement_matrix(scores, reps=200)
    assert names == ["ppo", "grpo", "dpo"]
    assert (np.diag(p) == 0.5).all() and (np.diag(low) == 0.5).all() and (np.diag(high) == 0.5).all()
    assert p[1, 0] == pytest.approx(probability_of_improvement(scores["grpo"], scores["ppo"]))
    np.testing.assert_allclose(p + p.T, 1.0)
    np.testing.assert_allclose(low + high.T, 1.0)
    assert (low <= p + 1e-12).all() and (p <= high + 1e-12).all()
    assert (low[0, 1], high[0, 1]) == pytest.approx(
        probability_of_improvement_ci(scores["ppo"], scores["grpo"], reps=200)
    )
    with pytest.raises(ValueError, match="same prompts"):
        improvement_matrix({"a": np.ones((2, 3)), "b": np.ones((2, 4))})


# --- the separable ranking -----------------------------------------------------------------------------------


def test_separable_disjoint_chain():
    r = separable_ranking({"c": Est(1, (0.5, 1.4)), "a": Est(3, (2.5, 3.5)), "b": Est(2, (1.5, 2.4))})
    assert r.order == ("a", "b", "c") and r.tiers == (("a",), ("b",), ("c",))
    assert str(r) == "a > b > c"
    assert r.lines() == ["a: above b, c", "b: above c; below a", "c: below a, b"]


def test_separable_overlap_grouped():
    """dpo [1.5, 2.2] and ppo [1.4, 2.3] overlap; grpo's low 2.5 is above both highs, remax's high 1.0 below
    both lows."""
    r = separable_ranking(
        {
            "remax": Est(0.8, (0.5, 1.0)),
            "ppo": Est(1.9, (1.4, 2.3)),
            "grpo": Est(3.0, (2.5, 3.5)),
            "dpo": Est(2.0, (1.5, 2.2)),
        }
    )
    assert str(r) == "grpo > {dpo, ppo} > remax"
    assert r.lines()[1] == "dpo: above remax; below grpo; not separable from ppo"


def test_separable_non_transitive_never_claims_too_much():
    """a [2, 4] ~ b [1, 3] ~ c [0, 1.9], yet a > c (2 > 1.9): no chain a > b > c or a > {b, c} is supported, so
    the three share a tier and the one supported pair is named inside it. d [5, 6] is above all three."""
    r = separable_ranking({"a": Est(3, (2, 4)), "b": Est(2, (1, 3)), "c": Est(1, (0, 1.9)), "d": Est(5.5, (5, 6))})
    assert r.tiers == (("d",), ("a", "b", "c"))
    assert str(r) == "d > {a, b, c; a > c}"
    assert r.lines()[1:] == [
        "a: above c; below d; not separable from b",
        "b: below d; not separable from a, c",
        "c: below d, a; not separable from b",
    ]


def test_separable_edge_cases():
    assert str(separable_ranking({"x": Est(1, (0, 2))})) == "x"
    assert separable_ranking({"x": Est(1, (0, 2))}).lines() == ["x: the only method"]
    tied = separable_ranking({"q": Est(1, (0, 2)), "p": Est(1, (0, 2))})
    assert str(tied) == "{q, p}"  # equal means keep the input order
    touching = separable_ranking({"a": Est(2, (1, 3)), "b": Est(0, (-1, 1))})  # low 1 == high 1: not separable
    assert str(touching) == "{a, b}"


def test_separable_tiers_only_claim_supported_pairs():
    rng = np.random.default_rng(8)
    for _ in range(200):
        k = int(rng.integers(2, 7))
        means = rng.normal(size=k)
        half = rng.uniform(0.05, 1.0, size=k)
        ests = {f"m{i}": Est(means[i], (means[i] - half[i], means[i] + half[i])) for i in range(k)}
        r = separable_ranking(ests)
        assert [n for tier in r.tiers for n in tier] == list(r.order)
        for i, tier in enumerate(r.tiers):
            for later in r.tiers[i + 1 :]:
                assert all(ests[a].ci[0] > ests[b].ci[1] for a in tier for b in later)
        cuts = np.cumsum([len(t) for t in r.tiers])[:-1]
        for cut in set(range(1, k)) - set(cuts.tolist()):  # the finest chain: no further cut is supported
            assert not all(ests[a].ci[0] > ests[b].ci[1] for a in r.order[:cut] for b in r.order[cut:])


def test_separable_order_lines_from_summaries():
    rng = np.random.default_rng(9)
    s = summarize({"low": rng.normal(0, 0.1, (5, 10)), "high": rng.normal(5, 0.1, (5, 10))}, reps=200)
    assert separable_order(s) == ["high > low", "high: above low", "low: below high"]
