"""Statistics over seeds and samples shared by the bandit studies and `alignkit compare` (NumPy and scipy, no torch).

Multi-seed comparisons follow Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical
Precipice" (NeurIPS), and the definitions of their library rliable (rliable/metrics.py): the interquartile mean
(IQM) is `scipy.stats.trim_mean(x, 0.25)`, and the probability of improvement P(X > Y) is, averaged over tasks,
the Mann-Whitney U statistic over the pairs of runs divided by n_x n_y. Here a score matrix has shape
[seeds, prompts]: one run per seed (rliable's runs), one column per prompt (rliable's tasks), e.g. each prompt's
mean true reward in one seed's run, or a bandit's gap per seed as a [seeds, 1] matrix.

Intervals come from a two-level bootstrap over seeds and prompts (`bootstrap_replicates`); `summarize`,
`improvement_matrix`, `separable_ranking` and `separable_order` build the tables a comparison prints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from scipy.stats import trim_mean

Prompts = Literal["crossed", "nested"]
# elements of the resampled matrices per chunk of replicates (float64: 32 MiB), so memory stays flat in reps
_CHUNK_ELEMENTS = 1 << 22


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one problem from n samples of which c are correct: 1 - C(n - c, k) / C(n, k).

    Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1 and its numerically stable form:
    1 - prod_{i = n - c + 1}^{n} (1 - k / i). The chance that k samples drawn without replacement from the n
    include a correct one; 1 when fewer than k are wrong.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_se(values: Any) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0 for one value), in float64, of a 1-D sequence or tensor."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0
    return float(x.mean()), se


def iqm(values: Any) -> float:
    """Interquartile mean of a 1-D array: the mean of what is left after cutting int(n / 4) values off each end
    (rliable's `aggregate_iqm`, `scipy.stats.trim_mean(x, proportiontocut=0.25)`). Robust to a run that diverged,
    yet uses half the runs where the median uses one or two; with fewer than 4 values nothing is cut (the mean)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"iqm: expected a non-empty 1-D array, got shape {x.shape}")
    return float(trim_mean(x, 0.25))


def _matrix(scores: Any, name: str) -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(
            f"{name}: expected a non-empty [seeds, prompts] score matrix, got shape {x.shape}; per-seed values "
            "(one number per seed) are x.reshape(-1, 1), one seed's per-prompt values x.reshape(1, -1)"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: {int((~np.isfinite(x)).sum())} of {x.size} scores are NaN or infinite")
    return x


def grand_mean(scores: np.ndarray) -> np.ndarray:
    """The mean over seeds and prompts of each matrix in a stack [..., seeds, prompts] (the default statistic)."""
    return scores.mean(axis=(-2, -1))


def bootstrap_replicates(
    *scores: Any,
    statistic: Callable[..., np.ndarray] = grand_mean,
    reps: int = 2000,
    seed: int = 0,
    prompts: Prompts = "crossed",
    share_prompts: bool = True,
) -> np.ndarray:
    """`statistic` on `reps` two-level bootstrap resamples of one or more [seeds, prompts] score matrices: [reps].

    A replicate draws each matrix's seeds with replacement (independently per matrix: different methods' runs
    are independent), then prompts with replacement. `statistic` receives one stack [r, seeds, prompts] per
    matrix, in the order given, and returns [r] (r may be less than reps: replicates are evaluated in chunks).

    prompts="crossed" (default) draws one set of prompt indices per replicate, used by every chosen seed: the
    same prompts are answered in every seed, so a prompt's difficulty is shared by all its seeds' scores, and
    redrawing the prompts independently for each seed would average that shared effect away, as resampling
    runs within tasks averages away the seed effect (the crossed, "pigeonhole" bootstrap of Owen 2007, Ann.
    Appl. Stat. 1(2); conservative, see below). prompts="nested" draws the prompts again within each chosen seed,
    the plain two-level bootstrap of a nested design (a fresh prompt set per seed); on a crossed design its
    interval is about sqrt(seeds) times too narrow in the prompt component. On scores with neither a seed nor a
    prompt effect (pure noise) both are wider than needed, crossed about sqrt(3) and nested about sqrt(2) times;
    only that seed x prompt noise term is overcounted, and failing to separate two methods is the safer error.

    With share_prompts (default), all matrices use the same prompt indices in a replicate (they must have the
    same prompts, in the same column order): all methods answer the same prompts, so a paired comparison
    resamples the same prompts for each. A matrix with one seed varies over prompts only; one with one prompt
    column (per-seed values, [seeds, 1]) over seeds only. Deterministic given `seed`.

    Ours because neither library resamples both levels: rliable's StratifiedBootstrap resamples runs
    independently within each task, which averages away the seed effect shared by all of a seed's prompts, and
    scipy.stats.bootstrap resamples one level (the items of each sample) only.
    """
    if not scores:
        raise ValueError("bootstrap_replicates: give at least one [seeds, prompts] score matrix")
    if prompts not in ("crossed", "nested"):
        raise ValueError(f"prompts: got {prompts!r}; allowed: 'crossed', 'nested'")
    if reps < 1:
        raise ValueError(f"reps: the number of bootstrap replicates must be at least 1 (got {reps})")
    mats = [_matrix(s, f"scores[{i}]") for i, s in enumerate(scores)]
    n_prompts = {m.shape[1] for m in mats}
    if share_prompts and len(n_prompts) > 1:
        shapes = ", ".join(str(m.shape) for m in mats)
        raise ValueError(
            f"share_prompts: shared prompt resampling needs the same prompts in every matrix, got shapes {shapes}; "
            "pass share_prompts=False for matrices over different prompts"
        )
    rng = np.random.default_rng(seed)
    seed_idx = [rng.integers(0, m.shape[0], size=(reps, m.shape[0])) for m in mats]

    def draw(rows: int, n: int) -> np.ndarray:  # [reps, rows, n]: rows 1 (crossed) broadcasts over the seeds
        return rng.integers(0, n, size=(reps, rows, n))

    def rows(n_seeds: int) -> int:
        return 1 if prompts == "crossed" else n_seeds

    if share_prompts:
        shared = draw(max(rows(m.shape[0]) for m in mats), mats[0].shape[1])
        prompt_idx = [shared[:, : rows(m.shape[0])] for m in mats]
    else:
        prompt_idx = [draw(rows(m.shape[0]), m.shape[1]) for m in mats]

    chunk = max(1, _CHUNK_ELEMENTS // sum(m.size for m in mats))
    out = np.empty(reps)
    for start in range(0, reps, chunk):
        part = slice(start, min(start + chunk, reps))
        stacks = [m[s[part][:, :, None], p[part]] for m, s, p in zip(mats, seed_idx, prompt_idx, strict=True)]
        out[part] = statistic(*stacks)
    return out


def bootstrap_ci(
    *scores: Any,
    statistic: Callable[..., np.ndarray] = grand_mean,
    reps: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    prompts: Prompts = "crossed",
    share_prompts: bool = True,
) -> tuple[float, float]:
    """Percentile interval (alpha / 2 and 1 - alpha / 2 quantiles, 95% by default) of `statistic` over the
    replicates of `bootstrap_replicates` (same arguments). Over few seeds it is too narrow: on per-seed values it
    is about mean ± z s / sqrt(n) with the n-divisor s.d. s, so for normal values a nominal 95% interval covers
    about 75% with 3 seeds, 85% with 5 and 90% with 10, where a t interval would cover 95%."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: the interval covers 1 - alpha, so alpha must lie in (0, 1) (got {alpha})")
    values = bootstrap_replicates(
        *scores, statistic=statistic, reps=reps, seed=seed, prompts=prompts, share_prompts=share_prompts
    )
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) of stacks [..., seeds_x, prompts] and [..., seeds_y, prompts]: [...]. Counts pairs exactly, in
    integers, so identical columns give exactly 0.5 (rliable special-cases them; counting gets there anyway)."""
    twice = np.zeros(np.broadcast_shapes(x.shape[:-2], y.shape[:-2]) + x.shape[-1:], dtype=np.int64)
    for i in range(x.shape[-2]):  # a loop over x's seeds keeps memory at [..., seeds_y, prompts]
        xi = x[..., i : i + 1, :]
        twice += 2 * (xi > y).sum(axis=-2) + (xi == y).sum(axis=-2)
    return (twice / (2 * x.shape[-2] * y.shape[-2])).mean(axis=-1)


def probability_of_improvement(x: Any, y: Any) -> float:
    """P(X > Y) for score matrices x [seeds_x, prompts] and y [seeds_y, prompts] (rliable's
    `probability_of_improvement`, runs = seeds, tasks = prompts): for each prompt, the Mann-Whitney U statistic
    of x's seeds against y's divided by n_x n_y, i.e. P(x > y) + 0.5 P(x = y) over all pairs of a seed of X and
    a seed of Y (0.5 when the columns are identical); then the mean over prompts. P(Y > X) = 1 - P(X > Y)."""
    x, y = _matrix(x, "x"), _matrix(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"probability_of_improvement: x and y need the same prompts, got shapes {x.shape}, {y.shape}")
    return float(_improvement(x, y))


def probability_of_improvement_ci(
    x: Any, y: Any, *, reps: int = 2000, seed: int = 0, alpha: float = 0.05, prompts: Prompts = "crossed"
) -> tuple[float, float]:
    """Bootstrap percentile interval of `probability_of_improvement(x, y)`: x's and y's seeds resampled
    independently, the prompts shared (the same prompt indices for both in a replicate)."""
    x, y = _matrix(x, "x"), _matrix(y, "y")
    return bootstrap_ci(x, y, statistic=_improvement, reps=reps, seed=seed, alpha=alpha, prompts=prompts)


def _iqm_of_seed_means(scores: np.ndarray) -> np.ndarray:
    return trim_mean(scores.mean(axis=-1), 0.25, axis=-1)


@dataclass(frozen=True)
class Summary:
    """One method's scores over seeds and prompts. mean: over all scores (= the mean of `per_seed`, the
    per-seed means over prompts); se: standard error over seeds of `per_seed` (0 for one seed: a single run
    says nothing about seed-to-seed spread, see `ci` for the prompts' part); ci: two-level bootstrap interval of
    the mean; iqm: IQM of `per_seed` (rliable's IQM across runs with one task) and iqm_ci its bootstrap
    interval."""

    n_seeds: int
    n_prompts: int
    mean: float
    se: float
    ci: tuple[float, float]
    iqm: float
    iqm_ci: tuple[float, float]
    per_seed: tuple[float, ...]


def summarize(
    scores: Mapping[str, Any], *, reps: int = 2000, seed: int = 0, alpha: float = 0.05, prompts: Prompts = "crossed"
) -> dict[str, Summary]:
    """A `Summary` per method of {method: [seeds, prompts] score matrix}, in the order given. Each method's
    intervals are bootstrapped on their own with the same `seed`, so a method's summary does not depend on which
    other methods are summarized with it."""
    out = {}
    for name, raw in scores.items():
        x = _matrix(raw, f"scores[{name!r}]")
        per_seed = x.mean(axis=1)
        kw: dict[str, Any] = {"reps": reps, "seed": seed, "alpha": alpha, "prompts": prompts}
        out[name] = Summary(
            n_seeds=x.shape[0],
            n_prompts=x.shape[1],
            mean=float(x.mean()),
            se=mean_se(per_seed)[1],
            ci=bootstrap_ci(x, **kw),
            iqm=iqm(per_seed),
            iqm_ci=bootstrap_ci(x, statistic=_iqm_of_seed_means, **kw),
            per_seed=tuple(per_seed.tolist()),
        )
    return out


def improvement_matrix(
    scores: Mapping[str, Any], *, reps: int = 2000, seed: int = 0, alpha: float = 0.05, prompts: Prompts = "crossed"
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(methods in the order given, P, low, high), each array [k, k]: P[i, j] = P(method i > method j) and its
    bootstrap interval [low, high] (`probability_of_improvement_ci`, the same `seed` for every pair). The diagonal
    is 0.5 with a zero-width interval. Each pair is resampled once: P[j, i] = 1 - P[i, j], and its interval is
    the mirror image, [1 - high[i, j], 1 - low[i, j]]."""
    names = list(scores)
    mats = [_matrix(scores[n], f"scores[{n!r}]") for n in names]
    if len({m.shape[1] for m in mats}) > 1:
        shapes = ", ".join(f"{n}: {m.shape}" for n, m in zip(names, mats, strict=True))
        raise ValueError(f"improvement_matrix: every method needs the same prompts, got {shapes}")
    k = len(names)
    p, low, high = np.full((k, k), 0.5), np.full((k, k), 0.5), np.full((k, k), 0.5)
    for i in range(k):
        for j in range(i + 1, k):
            p[i, j] = float(_improvement(mats[i], mats[j]))
            low[i, j], high[i, j] = probability_of_improvement_ci(
                mats[i], mats[j], reps=reps, seed=seed, alpha=alpha, prompts=prompts
            )
            p[j, i], low[j, i], high[j, i] = 1 - p[i, j], 1 - high[i, j], 1 - low[i, j]
    return names, p, low, high


class _Estimate(Protocol):
    @property
    def mean(self) -> float: ...
    @property
    def ci(self) -> tuple[float, float]: ...


@dataclass(frozen=True)
class Ranking:
    """What a set of means and intervals supports, best mean first (see `separable_ranking`).

    order: the methods by mean, best first (ties in input order). tiers: consecutive runs of `order`; every
    method of a tier is separable above every method of every later tier. above / below / not_separable: for
    each method, the methods it is separable above, below, and not separable from (each in `order`).
    """

    order: tuple[str, ...]
    tiers: tuple[tuple[str, ...], ...]
    above: Mapping[str, tuple[str, ...]]
    below: Mapping[str, tuple[str, ...]]
    not_separable: Mapping[str, tuple[str, ...]]

    def __str__(self) -> str:
        """One line: tiers joined by " > ", a tier of several in braces (no order claimed among them), e.g.
        `grpo > {dpo, ppo} > remax`. Pairs inside a tier that are separable follow a semicolon:
        `{a, b, c; a > c}` where a ~ b and b ~ c but a > c."""
        parts = []
        for tier in self.tiers:
            if len(tier) == 1:
                parts.append(tier[0])
                continue
            inside = [f"{a} > {b}" for a in tier for b in self.above[a] if b in tier]
            parts.append("{" + ", ".join(tier) + ("; " + ", ".join(inside) if inside else "") + "}")
        return " > ".join(parts)

    def lines(self) -> list[str]:
        """A line per method, best mean first, e.g. `ppo: above remax; below grpo; not separable from dpo`
        (empty parts left out)."""
        out = []
        for name in self.order:
            claims = (("above", self.above), ("below", self.below), ("not separable from", self.not_separable))
            parts = [f"{word} {', '.join(names[name])}" for word, names in claims if names[name]]
            out.append(f"{name}: {'; '.join(parts) or 'the only method'}")
        return out


def separable_ranking(summaries: Mapping[str, _Estimate]) -> Ranking:
    """The ranking the intervals support, from each method's mean and `ci` (a `Summary` or anything with `mean`
    and `ci`); a pure function of those numbers.

    A is separable above B when A's interval lies wholly above B's (A's low > B's high). That relation is
    transitive, but "not separable" is not: A ~ B and B ~ C can hold with A > C. So the one-line form is a chain
    of tiers cut only where every method before the cut is separable above every method after it (the finest
    such chain; a cut needs the smallest low before it above the largest high after it). A chain never claims
    an order the intervals do not support; it can leave out one they do (A > C inside {A, B, C}), which
    `str(ranking)` lists after a semicolon in the braces and `lines()` spells out per method.

    Non-overlap of two 95% intervals is a conservative test of a difference (Schenker and Gentleman 2001); for
    a paired comparison over shared prompts, see `improvement_matrix`.
    """
    mean = {n: float(s.mean) for n, s in summaries.items()}
    low = {n: float(s.ci[0]) for n, s in summaries.items()}
    high = {n: float(s.ci[1]) for n, s in summaries.items()}
    order = tuple(sorted(mean, key=lambda n: -mean[n]))  # stable: equal means keep the input order
    above = {a: tuple(b for b in order if low[a] > high[b]) for a in order}
    below = {a: tuple(b for b in order if low[b] > high[a]) for a in order}
    not_separable = {a: tuple(b for b in order if b != a and b not in above[a] and b not in below[a]) for a in order}
    tiers: list[tuple[str, ...]] = []
    start = 0
    for cut in range(1, len(order) + 1):
        if cut == len(order) or min(low[n] for n in order[:cut]) > max(high[n] for n in order[cut:]):
            tiers.append(order[start:cut])
            start = cut
    return Ranking(order=order, tiers=tuple(tiers), above=above, below=below, not_separable=not_separable)


def separable_order(summaries: Mapping[str, _Estimate]) -> list[str]:
    """The ranking as lines to print: the chain of tiers, then a line per method, best mean first, e.g.
    `grpo > {dpo, ppo} > remax`, `grpo: above dpo, ppo, remax`, `dpo: above remax; below grpo; not separable
    from ppo`, ... (`separable_ranking` for the structure)."""
    ranking = separable_ranking(summaries)
    return [str(ranking), *ranking.lines()]
