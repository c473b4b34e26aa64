"""The figures of `alignkit compare`: frontier, training curves, probability of improvement, reward vs time, and
with pass@k, pass@k curves and pass@1 vs KL.

Each figure shows the seed mean with its 95% bootstrap interval (seeds resampled, then prompts; prompts only
with one seed) from the `Row`s of a `CompareResult`, and where it helps each seed's own value, faint. A trained
method has one colour in every figure (tab10, then Dark2, in the order of the table); the baseline is black, best-of-n a
dashed black line. Drawn on `Figure` objects with the Agg canvas: no pyplot state, nothing left open.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import ScaledTranslation

from alignkit.compare import ALL, BEST_OF, GREEDY, CompareResult, Row, final_scores
from alignkit.pipeline import PassAtKSpec
from alignkit.stats import Summary, improvement_matrix

DPI = 130
FAINT = 0.3  # alpha of each seed's own points and curves
REWARD_LABEL = "true reward (held-out prompts)"
STEP_LABEL = "step (optimizer steps; iterations for online methods)"


@dataclass
class _View:
    """What every figure reads from a result: the baseline, best-of-n and trained methods' rows, the colours."""

    result: CompareResult
    base: Row
    best_of: list[Row]  # by n
    methods: list[str]  # trained methods, in the table's order
    colors: dict[str, Any]
    n_seeds: int

    @classmethod
    def of(cls, result: CompareResult) -> _View:
        base = next((r for r in result.rows if r.method == result.baseline and r.final), None)
        if base is None:
            found = sorted({r.method for r in result.rows})
            raise ValueError(f"plot_all: no final row of the baseline {result.baseline!r}; rows: {found}")
        best_of = sorted((r for r in result.rows if r.algorithm == BEST_OF), key=lambda r: r.step)
        methods = list(
            dict.fromkeys(r.method for r in result.rows if r.method != result.baseline and r.algorithm != BEST_OF)
        )
        # tab10, then Dark2's 8 for methods 11-18: tab20's second half repeats tab10's hues in light shades,
        # which read as the same method at a glance
        palette = [colormaps["tab10"](i) for i in range(10)] + [colormaps["Dark2"](i) for i in range(8)]
        seeds = {s for r in result.rows for s in r.seeds}
        colors = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
        return cls(result, base, best_of, methods, colors, len(seeds))

    def rows(self, method: str) -> list[Row]:
        """The method's rows by step, after the baseline's as step 0: every curve starts there."""
        return [self.base, *sorted((r for r in self.result.rows if r.method == method), key=lambda r: r.step)]

    def final(self, method: str) -> Row | None:
        # one final row per method unless seeds ended at different steps: then the one most seeds reached
        finals = [r for r in self.result.rows if r.method == method and r.final]
        return max(finals, key=lambda r: (r.reward.n_seeds, r.step)) if finals else None

    def label(self, method: str) -> str:
        row = self.final(method)
        n = row.reward.n_seeds if row is not None else 0
        return method if n >= self.n_seeds else f"{method} ({n} of {self.n_seeds} seeds)"

    def intervals(self) -> str:
        if self.n_seeds > 1:
            return f"mean over {self.n_seeds} seeds, 95% bootstrap CI (seeds, then prompts)"
        return "one seed: 95% bootstrap CI over prompts only"


def plot_all(
    result: CompareResult,
    out: Path,
    *,
    reps: int = 2000,
    prompts: str = "crossed",
    pass_at_k: PassAtKSpec | None = None,
) -> None:
    """frontier.png, curves.png, improvement.png and reward_vs_time.png in `out`, and pass_at_k.png,
    pass_at_k_change.png and pass1_vs_kl.png when the result has pass@k (`pass_at_k`, compare.pass_at_k, only words
    the titles). `reps`: bootstrap replicates of the probability-of-improvement intervals (the table's
    `compare.bootstrap_reps` gives the same numbers)."""
    view = _View.of(result)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frontier(view).savefig(out / "frontier.png", dpi=DPI)
    curves(view).savefig(out / "curves.png", dpi=DPI)
    improvement(view, reps, prompts).savefig(out / "improvement.png", dpi=DPI)
    reward_vs_time(view).savefig(out / "reward_vs_time.png", dpi=DPI)
    if view.base.pass_at_k:
        pass_at_k_curves(view, pass_at_k).savefig(out / "pass_at_k.png", dpi=DPI)
        pass1_vs_kl(view, pass_at_k).savefig(out / "pass1_vs_kl.png", dpi=DPI)
        if any(view.final(m) is not None and view.final(m).pass_at_k_change for m in view.methods):
            pass_at_k_change(view, pass_at_k).savefig(out / "pass_at_k_change.png", dpi=DPI)


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(np.atleast_1d(fig.subplots(1, ncols)))


def _err(s: Summary) -> list[list[float]]:
    """Asymmetric error bar lengths [[below], [above]] of a summary's interval (never negative)."""
    return [[max(s.mean - s.ci[0], 0.0)], [max(s.ci[1] - s.mean, 0.0)]]


def _legend(ax: Axes, source: Axes | None = None) -> None:
    """The legend of `source` (default `ax`) to the right of `ax`, from its top: it hides no data, and sits under
    a title that is wider than the axes."""
    handles, labels = (source or ax).get_legend_handles_labels()
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)


def _signed_sqrt(x: Any) -> Any:
    return np.sign(x) * np.sqrt(np.abs(x))


def _signed_square(y: Any) -> Any:
    return np.sign(y) * np.square(y)


def _sqrt_axis(ax: Axes, values: list[float], axis: str = "x") -> None:
    """A square-root KL axis over `values` (Gao et al. 2022 plot reward against sqrt(KL)): best-of-n's small KLs
    spread out, and a run that drifted to tens of nats does not squeeze the rest against zero. Signed, so a Monte
    Carlo KL a little below zero stays on the figure."""
    low, high = min(0.0, *values), max(1.0, *values)
    scale, set_ticks, set_lim = (
        (ax.set_xscale, ax.set_xticks, ax.set_xlim) if axis == "x" else (ax.set_yscale, ax.set_yticks, ax.set_ylim)
    )
    scale("function", functions=(_signed_sqrt, _signed_square))
    pad = 0.04 * (_signed_sqrt(high) - _signed_sqrt(low))
    set_lim(_signed_square(_signed_sqrt(low) - pad), _signed_square(_signed_sqrt(high) + pad))
    # round numbers first, then in-between ones where they do not crowd those already placed
    room, ticks = 0.06 * np.sqrt(high), []
    for t in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 0.5, 3, 7, 15, 30, 70, 150, 300, 700, 0.2, 0.1):
        if t <= high * 1.02 and all(abs(np.sqrt(t) - np.sqrt(k)) >= room for k in ticks):
            ticks.append(t)
    set_ticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])


def frontier(view: _View) -> Figure:
    """True reward vs KL to the baseline: each trained method's final mean with its 95% interval in both
    directions and each seed's final policy faint; best-of-n as a dashed line; the baseline at KL 0."""
    fig, (ax,) = _figure(9.0, 5.6)
    base = view.base
    if view.best_of:
        kls = [r.kl.mean for r in view.best_of]
        means = [r.reward.mean for r in view.best_of]
        yerr = np.hstack([_err(r.reward) for r in view.best_of])
        ax.errorbar(
            kls, means, yerr=yerr, fmt="--", color="k", ecolor="0.6", lw=1, marker=".", ms=6, capsize=2,
            label=f"best-of-n (the reward model's\npick of n {view.result.baseline} samples)",
        )  # fmt: skip
        for r in view.best_of:
            # left of the line, where trained methods (more KL) do not sit; at KL 0 there is no room on the left
            left = r.kl.mean > 0.05
            where = {"xytext": (-5, 3), "ha": "right"} if left else {"xytext": (8, -12), "ha": "left"}
            ax.annotate(f"n={r.step}", (r.kl.mean, r.reward.mean), textcoords="offset points", fontsize=8, **where)
    ax.errorbar(
        [0.0], [base.reward.mean], yerr=_err(base.reward), fmt="s", color="k", ms=7, capsize=3, zorder=5,
        label=f"{view.result.baseline} (start)",
    )  # fmt: skip
    finals = view.result.finals()
    for m in view.methods:
        seeds = [p for p in finals if p.method == m]
        ax.scatter([p.kl for p in seeds], [p.true_reward for p in seeds], color=view.colors[m], alpha=FAINT, s=22, lw=0)
        row = view.final(m)
        if row is not None:
            ax.errorbar(
                [row.kl.mean], [row.reward.mean], xerr=_err(row.kl), yerr=_err(row.reward), fmt="o",
                color=view.colors[m], ms=7, lw=1.5, capsize=3, zorder=4, label=view.label(m),
            )  # fmt: skip
    _sqrt_axis(ax, [p.kl for p in finals] + [x for r in view.result.final_rows() for x in r.kl.ci])
    ax.set_xlabel(f"KL(policy ‖ {view.result.baseline}) per response, nats (square-root scale)")
    ax.set_ylabel(REWARD_LABEL)
    faint = "; faint dots: each seed" if view.n_seeds > 1 else ""
    ax.set_title(f"True reward vs KL, final policies\n{view.intervals()}{faint}", fontsize=11)
    ax.grid(alpha=0.3, lw=0.5)
    _legend(ax)
    return fig


def curves(view: _View) -> Figure:
    """True reward and KL against the training step: seed mean per (method, step) and its 95% band."""
    fig, axes = _figure(12.5, 4.8, ncols=2)
    for ax, key, ylabel in zip(
        axes, ("reward", "kl"), (REWARD_LABEL, f"KL(policy ‖ {view.result.baseline}), nats"), strict=True
    ):
        base: Summary = getattr(view.base, key)
        ax.axhline(base.mean, color="k", ls=":", lw=1, label=f"{view.result.baseline} (start)")
        for m in view.methods:
            rows = view.rows(m)
            steps = [0] + [r.step for r in rows[1:]]
            stats: list[Summary] = [getattr(r, key) for r in rows]
            color = view.colors[m]
            ax.fill_between(steps, [s.ci[0] for s in stats], [s.ci[1] for s in stats], color=color, alpha=0.2, lw=0)
            ax.plot(steps, [s.mean for s in stats], "-o", color=color, ms=3, lw=1.5, label=view.label(m))
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, lw=0.5)
        ax.set_xlim(left=0)
    _sqrt_axis(axes[1], [x for m in view.methods for r in view.rows(m) for x in r.kl.ci], axis="y")
    axes[0].set_title("True reward", fontsize=11)
    axes[1].set_title("KL to the start (square-root scale, as in the frontier)", fontsize=11)
    how = f"mean over {view.n_seeds} seeds (lines), 95% bootstrap CI (bands; seeds, then prompts)"
    if view.n_seeds < 2:
        how = "one seed (lines), 95% bootstrap CI over prompts (bands)"
    fig.suptitle(f"Training curves, from the start through each checkpoint to the final policy: {how}", fontsize=11)
    _legend(axes[1], axes[0])
    return fig


def improvement(view: _View, reps: int = 2000, prompts: str = "crossed") -> Figure:
    """Heatmap of P(row beats column) over the final policies (baseline, largest best-of-n, trained methods),
    best mean first, each cell with its 95% bootstrap interval."""
    scores = final_scores(view.result)
    means = {m: float(np.mean(s)) for m, s in scores.items()}
    order = sorted(scores, key=lambda m: -means[m])
    k = len(order)
    cell = 0.9  # inches: room for "[0.00, 0.00]" at 8 points
    fig, (ax,) = _figure(max(7.0, cell * k + 3.6), max(4.5, cell * k + 2.3))
    if k < 2:
        ax.text(0.5, 0.5, "one method only: nothing to compare", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    if view.result.improvement is not None:  # the table's matrix, best mean first: the same numbers in both
        names, *arrays = view.result.improvement
        perm = [names.index(m) for m in order]
        p, low, high = (a[np.ix_(perm, perm)] for a in arrays)
        methods = order
    else:
        methods, p, low, high = improvement_matrix({m: scores[m] for m in order}, reps=reps, prompts=prompts)
    shown = np.ma.masked_array(p, mask=np.eye(k, dtype=bool))
    cmap = colormaps["RdBu"].with_extremes(bad="0.93")
    image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            if i == j:
                continue
            color = "white" if abs(p[i, j] - 0.5) > 0.3 else "black"
            weight = "bold" if low[i, j] > 0.5 or high[i, j] < 0.5 else "normal"
            ax.text(j, i - 0.12, f"{p[i, j]:.2f}", ha="center", va="center", fontsize=11, color=color, weight=weight)
            interval = f"[{low[i, j]:.2f}, {high[i, j]:.2f}]"
            ax.text(j, i + 0.22, interval, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(k), methods, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), methods)
    ax.set_xlabel("column: the method it is compared with")
    ax.set_ylabel("row: the method that beats it with probability P")
    ax.tick_params(length=0)
    for edge in ax.spines.values():
        edge.set_visible(False)
    fig.colorbar(image, ax=ax, shrink=0.8, label="P(row > column); 0.5: no difference")
    seeds = f"{view.n_seeds} seeds" if view.n_seeds > 1 else "one seed"
    ax.set_title(
        f"Probability of improvement, final policies ({seeds}; best mean first)\n"
        "P(row > column) on a random prompt and seed, its 95% bootstrap CI below;\n"
        "bold: the interval excludes 0.5 (the two differ)",
        fontsize=11,
    )
    return fig


def reward_vs_time(view: _View) -> Figure:
    """True reward against the stage's training wall time: the seed-mean curve, each seed's curve faint, and the
    final policy with the spread of wall times across seeds and its reward interval."""
    fig, (ax,) = _figure(9.0, 5.6)
    base = view.base
    ax.axhspan(*base.reward.ci, color="k", alpha=0.06, lw=0)
    ax.axhline(base.reward.mean, color="k", ls=":", lw=1.2, label=f"{view.result.baseline} (start; grey: CI)")
    start = {p.seed: p.true_reward for p in view.result.finals() if p.method == view.result.baseline}
    for m in view.methods:
        color = view.colors[m]
        mine = sorted((p for p in view.result.points if p.method == m), key=lambda p: p.step)
        for seed in dict.fromkeys(p.seed for p in mine):
            timed = [p for p in mine if p.seed == seed and p.train_time_s is not None]
            if timed and view.n_seeds > 1:
                xs = [0.0, *(p.train_time_s for p in timed)]
                ys = [start.get(seed, base.reward.mean), *(p.true_reward for p in timed)]
                ax.plot(xs, ys, "-", color=color, alpha=FAINT, lw=0.8)
        rows = [r for r in view.rows(m)[1:] if r.train_time_s is not None]
        if not rows:
            continue
        xs = [0.0, *(r.train_time_s for r in rows)]
        ax.plot(xs, [base.reward.mean, *(r.reward.mean for r in rows)], "-", color=color, lw=1.8, label=view.label(m))
        checkpoints = [r for r in rows if not r.final]
        ax.plot([r.train_time_s for r in checkpoints], [r.reward.mean for r in checkpoints], "o", color=color, ms=3)
        final = view.final(m)
        if final is not None and final.train_time_s is not None:
            t = final.train_time_s
            lo, hi = final.train_time_range or (t, t)
            ax.errorbar(
                [t], [final.reward.mean], xerr=[[max(t - lo, 0.0)], [max(hi - t, 0.0)]], yerr=_err(final.reward),
                fmt="o", color=color, ms=7, lw=1.5, capsize=3, zorder=4,
            )  # fmt: skip
    ax.set_xlim(left=0)
    ax.set_xlabel("training wall time of the stage, s (checkpoints: saved at, since the run started)")
    ax.set_ylabel(REWARD_LABEL)
    if view.n_seeds > 1:
        how = f"lines: mean over {view.n_seeds} seeds, faint: each seed\nfinal policy: 95% bootstrap CI (vertical), "
        how += "fastest to slowest seed (horizontal)"
    else:
        how = "one seed; final policy: 95% bootstrap CI over prompts"
    ax.set_title(f"True reward vs training time\n{how}", fontsize=11)
    ax.grid(alpha=0.3, lw=0.5)
    _legend(ax)
    return fig


def _sampled(stats: dict[str, Summary]) -> list[int]:
    """The k of a row's pass@k summaries of one group, ascending (greedy left out)."""
    return sorted(int(key) for key in stats if key != GREEDY)


def _how_sampled(spec: PassAtKSpec | None, view: _View) -> str:
    if spec is None:
        return view.intervals()
    return f"n = {spec.samples} samples per prompt, correct: true reward >= {spec.threshold:g}\n{view.intervals()}"


def pass_at_k_curves(view: _View, spec: PassAtKSpec | None = None) -> Figure:
    """Pass@k against k on a log2 axis, a panel per prompt group (all prompts first): each method's final policy
    with its 95% band, the baseline black and dashed. A method above the baseline at k = 1 but not at the largest
    k sharpened what the baseline could already sample rather than widening it (Yue et al. 2025)."""
    return _pass_panels(view, spec, change=False)


def pass_at_k_change(view: _View, spec: PassAtKSpec | None = None) -> Figure:
    """The change of each method's pass@k from the baseline's against k, paired by seed and prompt, a panel per
    prompt group: where pass@k_curves' bands overlap because prompts differ in difficulty, these say on which side
    of 0 each method's change lies, at each k."""
    return _pass_panels(view, spec, change=True)


def _pass_panels(view: _View, spec: PassAtKSpec | None, *, change: bool) -> Figure:
    base = view.base
    groups = list(base.pass_at_k)
    ncols = min(len(groups), 3)
    nrows = -(-len(groups) // ncols)
    fig = Figure(figsize=(4.3 * ncols + 2.4, 3.7 * nrows + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel()))
    for ax in axes[len(groups) :]:
        ax.set_axis_off()

    def draw(ax: Axes, stats: dict[str, Summary], color: Any, style: str, label: str) -> None:
        ks = _sampled(stats)
        rows = [stats[str(k)] for k in ks]
        ax.fill_between(ks, [s.ci[0] for s in rows], [s.ci[1] for s in rows], color=color, alpha=0.15, lw=0)
        ax.plot(ks, [s.mean for s in rows], style, color=color, ms=3, lw=1.5, label=label)

    start = f"{view.result.baseline} (start)"
    for ax, group in zip(axes, groups, strict=False):
        if change:
            ax.axhline(0.0, color="k", ls="--", lw=1, label=start)
        else:
            draw(ax, base.pass_at_k[group], "k", "--o", start)
            ax.set_ylim(-0.02, 1.02)
        for m in view.methods:
            row = view.final(m)
            stats = (row.pass_at_k_change if change else row.pass_at_k) if row is not None else {}
            if group in stats:
                draw(ax, stats[group], view.colors[m], "-o", view.label(m))
        ks = _sampled(base.pass_at_k[group])
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.grid(alpha=0.3, lw=0.5)
        size = base.pass_at_k[group][str(ks[0])].n_prompts
        by = f"{spec.by} = " if spec is not None and spec.by is not None else ""
        ax.set_title(("all prompts" if group == ALL else f"{by}{group}") + f" ({size} prompts)", fontsize=10)
        ax.set_xlabel("k (log scale)")
        ax.set_ylabel(f"pass@k - {view.result.baseline}'s (paired)" if change else "pass@k")
    title = "Pass@k of the final policies"
    title += f" minus {view.result.baseline}'s, paired by seed and prompt" if change else ""
    fig.suptitle(f"{title}\n{_how_sampled(spec, view)}", fontsize=11)
    _legend(axes[ncols - 1], axes[0])
    return fig


def pass1_vs_kl(view: _View, spec: PassAtKSpec | None = None) -> Figure:
    """Pass@1 against KL to the baseline, final policies over all prompts: sampled pass@1 (filled) and greedy
    pass@1 (open, same colour, just right of it) with their 95% intervals, KL with its interval; the baseline black
    at KL 0."""
    fig, (ax,) = _figure(9.0, 5.6)
    base = view.base
    one = str(_sampled(base.pass_at_k[ALL])[0])  # pass@1 unless compare.pass_at_k.k leaves 1 out
    rows = [(base, "k", f"{view.result.baseline} (start)", "s")]
    rows += [(r, view.colors[m], view.label(m), "o") for m in view.methods if (r := view.final(m)) and r.pass_at_k]
    beside = ScaledTranslation(6 / 72, 0, fig.dpi_scale_trans)
    for row, color, label, marker in rows:
        kl = 0.0 if row is base else row.kl.mean
        xerr = None if row is base else _err(row.kl)
        stats = row.pass_at_k[ALL]
        ax.errorbar(
            [kl], [stats[one].mean], xerr=xerr, yerr=_err(stats[one]), fmt=marker, color=color, ms=7, lw=1.5,
            capsize=3, zorder=4, label=label,
        )  # fmt: skip
        if GREEDY in stats:  # 6 points to the right, so that its interval does not hide the sampled one's
            ax.errorbar(
                [kl], [stats[GREEDY].mean], yerr=_err(stats[GREEDY]), fmt=marker, color=color, mfc="white", ms=7,
                lw=1, capsize=2, zorder=3, transform=ax.transData + beside,
            )  # fmt: skip
    _sqrt_axis(ax, [0.0, *(x for r, *_ in rows[1:] for x in r.kl.ci)])
    # the shifted markers do not widen the autoscaled limits: set them from every interval shown
    ends = [x for r, *_ in rows for key in (one, GREEDY) if key in r.pass_at_k[ALL] for x in r.pass_at_k[ALL][key].ci]
    pad = max(0.02, 0.06 * (max(ends) - min(ends)))
    ax.set_ylim(min(ends) - pad, max(ends) + pad)
    ax.set_xlabel(f"KL(policy ‖ {view.result.baseline}) per response, nats (square-root scale)")
    ax.set_ylabel(f"pass@{one} (all held-out prompts)")
    ax.grid(alpha=0.3, lw=0.5)
    handles, labels = ax.get_legend_handles_labels()
    kinds = [Line2D([], [], marker="o", color="0.4", ls="", ms=7, label=f"filled: sampled pass@{one}")]
    if GREEDY in base.pass_at_k[ALL]:
        kinds.append(Line2D([], [], marker="o", color="0.4", mfc="white", ls="", ms=7, label="open: greedy pass@1"))
    ax.legend(
        [*handles, *kinds], [*labels, *(h.get_label() for h in kinds)], loc="upper left", bbox_to_anchor=(1.01, 1.0),
        fontsize=9, frameon=False,
    )  # fmt: skip
    ax.set_title(f"Pass@{one} vs KL, final policies\n{_how_sampled(spec, view)}", fontsize=11)
    return fig
