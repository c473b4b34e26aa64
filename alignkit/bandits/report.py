"""Reporting for the bandit studies: summary tables (CSV, Markdown) and the paper's figures from result rows.

A result row is a plain dict, one per (budget, method, n, m), as the study runner produces it:
``{"budget", "method", "n", "m", "ratio", "seeds", "gap", "value", "objective", "kl_ref", "best_in_class_gap",
"steps", "wall_s"}``, where gap .. kl_ref (and best_in_class_gap, or None for the neural bandit) are per-seed
lists of floats. ratio is m / n for RMB-PO+ and 0 for DPO and RMB-PO, which do not use the extra states.
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter
from PIL import Image

from alignkit.bandits.spec import METHODS
from alignkit.stats import bootstrap_ci, mean_se

Row = Mapping[str, Any]

DISPLAY = {"dpo": "DPO", "rmb_po": "RMB-PO", "rmb_po_plus": "RMB-PO+"}
BUDGET_ORDER = ("released", "converged")  # then any optimizer name, alphabetically
METRICS = ("gap", "objective", "kl_ref", "value")
SUMMARY_COLUMNS = (
    "budget", "method", "n", "m", "ratio", "seeds",
    "gap_mean", "gap_se", "gap_ci_low", "gap_ci_high",
    "objective_mean", "objective_se", "kl_ref_mean", "kl_ref_se", "value_mean", "value_se",
    "best_in_class_gap", "steps", "wall_s",
)  # fmt: skip
SEED_COLUMNS = (
    "budget", "method", "n", "m", "ratio", "seed", "gap", "objective", "kl_ref", "value", "best_in_class_gap",
    "steps", "wall_s",
)  # fmt: skip
GAP_LABEL = "optimality gap  V(π*) − V(π̂)"
N_LABEL = "n (preference pairs)"
RATIO_LABEL = "m / n (preference-free states per pair)"
COLORS = {"dpo": "#d62728", "rmb_po": "#1f77b4"}
MARKERS = {"dpo": "o", "rmb_po": "s", "rmb_po_plus": "^"}
DPI = 120
MAX_PANELS = 6
CI_SEED = 0  # the gap intervals' bootstrap seed: a table is the same every time it is written


def gap_ci(gaps: Sequence[float]) -> tuple[float, float]:
    """95% percentile bootstrap interval over seeds of the mean gap: the per-seed gaps as a [seeds, 1] score
    matrix (alignkit.stats.bootstrap_ci, 2000 replicates, seed `CI_SEED`). Over few seeds it is too narrow:
    with 3 seeds it is the range of the gaps (each all-one-seed replicate has probability 1/27 > 2.5%)."""
    return bootstrap_ci(np.reshape(np.asarray(gaps, dtype=np.float64), (-1, 1)), seed=CI_SEED)


def _budget_key(budget: str) -> tuple[int, str]:
    return (BUDGET_ORDER.index(budget), "") if budget in BUDGET_ORDER else (len(BUDGET_ORDER), budget)


def _row_key(row: Row) -> tuple:
    return (_budget_key(row["budget"]), row["n"], row["ratio"], METHODS.index(row["method"]), row["m"])


def _sorted(rows: Iterable[Row]) -> list[Row]:
    return sorted(rows, key=_row_key)


def _budgets(rows: Sequence[Row], budget: str | None) -> list[str]:
    present = sorted({r["budget"] for r in rows}, key=_budget_key)
    return present if budget is None else [b for b in present if b == budget]


def summary_table(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """One line per row: mean and s.e. over seeds of gap, objective, kl_ref and value, the gap's 95% bootstrap
    interval over seeds (gap_ci_low, gap_ci_high; `gap_ci`), the mean best-in-class gap (None where absent); seeds
    is the seed count. Sorted by budget, n, ratio, method (DPO, RMB-PO, RMB-PO+).
    """
    lines = []
    for row in _sorted(rows):
        line: dict[str, Any] = {k: row[k] for k in ("budget", "method", "n", "m", "ratio")}
        line["seeds"] = len(row["seeds"])
        for metric in METRICS:
            line[f"{metric}_mean"], line[f"{metric}_se"] = mean_se(row[metric])
        line["gap_ci_low"], line["gap_ci_high"] = gap_ci(row["gap"])
        bic = row.get("best_in_class_gap")
        line["best_in_class_gap"] = mean_se(bic)[0] if bic else None
        line["steps"], line["wall_s"] = row["steps"], row["wall_s"]
        lines.append(line)
    return lines


def _write(lines: Iterable[Mapping[str, Any]], columns: Sequence[str], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in line.items()} for line in lines)
    return path


def write_csv(rows: Iterable[Row], path: str | Path) -> Path:
    """The summary table as CSV (columns `SUMMARY_COLUMNS`; an absent best-in-class gap is left empty)."""
    return _write(summary_table(rows), SUMMARY_COLUMNS, path)


def write_seed_csv(rows: Iterable[Row], path: str | Path) -> Path:
    """The raw numbers: one line per row and seed (columns `SEED_COLUMNS`), in summary order."""
    lines = []
    for row in _sorted(rows):
        bic = row.get("best_in_class_gap")
        for i, seed in enumerate(row["seeds"]):
            line = {k: row[k] for k in ("budget", "method", "n", "m", "ratio", "steps", "wall_s")}
            line.update({metric: row[metric][i] for metric in METRICS})
            line.update(seed=seed, best_in_class_gap=bic[i] if bic else None)
            lines.append(line)
    return _write(lines, SEED_COLUMNS, path)


def _pick(rows: Sequence[Row], budget: str, method: str, n: int, m: int | None = None) -> Row | None:
    """The row of a method at (budget, n): the one with this m if any, else the first. DPO and RMB-PO do not
    use the extra states (and D_pref does not change with m), so any m serves as their baseline."""
    found = [r for r in rows if r["budget"] == budget and r["method"] == method and r["n"] == n]
    return next((r for r in found if r["m"] == m), found[0] if found else None)


def _plus_rows(rows: Sequence[Row], budget: str, n: int) -> list[Row]:
    found = [r for r in rows if r["budget"] == budget and r["n"] == n and r["method"] == "rmb_po_plus"]
    return sorted(found, key=lambda r: (r["ratio"], r["m"]))


def _cell(row: Row | None) -> str:
    if row is None:
        return "–"
    mean, se = mean_se(row["gap"])
    low, high = gap_ci(row["gap"])
    # the interval to 3 decimals: its ends move by about 0.06 s.e. between bootstrap seeds, and the cell stays
    # narrow enough for three methods side by side
    return f"{mean:.4f} ± {se:.4f} [{low:.3f}, {high:.3f}]"


def _best_in_class(rows: Iterable[Row]) -> float | None:
    values = [v for r in rows if r.get("best_in_class_gap") for v in r["best_in_class_gap"]]
    return mean_se(values)[0] if values else None


def _aligned(table: list[list[str]]) -> list[str]:
    """A Markdown table padded to equal column widths, so it reads as plain text too (numbers right-aligned)."""
    widths = [max(len(line[j]) for line in table) for j in range(len(table[0]))]
    header = "| " + " | ".join(h.ljust(w) for h, w in zip(table[0], widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in table[1:]]
    return [header, rule, *body]


def markdown_table(rows: Iterable[Row]) -> str:
    """The optimality gap (mean ± s.e. over seeds, 4 decimals, then its 95% bootstrap interval over seeds,
    `gap_ci`, 3 decimals) as Markdown: one table per budget, a line per
    (n, m/n) setting, a column per method; DPO and RMB-PO fill every m/n line of their n. Under each table,
    the best-in-class gap where the rows carry one (linear bandit)."""
    rows = _sorted(rows)
    blocks = []
    for budget in _budgets(rows, None):
        here = [r for r in rows if r["budget"] == budget]
        seeds = sorted({len(r["seeds"]) for r in here})
        table = [["n", "m/n", *DISPLAY.values()]]
        for n in sorted({r["n"] for r in here}):
            settings = [(p["m"], f"{p['ratio']:g}", p) for p in _plus_rows(here, budget, n)] or [(None, "–", None)]
            for m, ratio, plus in settings:
                base = [_cell(_pick(here, budget, method, n, m)) for method in ("dpo", "rmb_po")]
                table.append([str(n), ratio, *base, _cell(plus)])
        counts = " / ".join(map(str, seeds))
        caption = f"optimality gap V(π*) − V(π̂), mean ± s.e. [95% bootstrap CI] over {counts} seeds"
        lines = [f"### budget: {budget}", "", caption, ""]
        lines += _aligned(table)
        bic = _best_in_class(here)
        if bic is not None:
            lines += ["", f"best policy in the class: gap {bic:.4f} (irreducible with these features)"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _figure(nrows: int, ncols: int, sharey: bool = True) -> tuple[Figure, list[Axes]]:
    width, height = (4.0, 3.2) if nrows == 1 else (3.4, 2.6)
    fig = Figure(figsize=(width * ncols, height * nrows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharey=sharey, squeeze=False)
    return fig, [ax for line in axes for ax in line]


def _finish(fig: Figure, axes: Sequence[Axes], xlabel: str, title: str, path: str | Path) -> Path:
    """Axis labels on the outer panels, one legend under them (labels deduplicated across panels, "best in
    class" last), PNG at DPI."""
    handles: dict[str, Any] = {}
    places = [(ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start) for ax in axes]
    for ax, (i, j) in zip(axes, places, strict=True):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, lw=0.5)
        if not any(jj == j and ii > i for ii, jj in places):  # the lowest panel of its column
            ax.set_xlabel(xlabel)
        if j == 0:
            ax.set_ylabel(GAP_LABEL)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if "best in class" in handles:
        handles["best in class"] = handles.pop("best in class")
    if title:
        # about 9 characters per inch at fontsize 11: wrap so a one-panel figure keeps its whole title
        fig.suptitle(textwrap.fill(title, max(30, int(9 * fig.get_figwidth()))), fontsize=11)
    entry_in = 0.55 + 0.07 * max(map(len, handles))  # a legend entry's width in inches at fontsize 9
    rows = math.ceil(len(handles) / max(1, int(0.95 * fig.get_figwidth() / entry_in)))
    ncol = math.ceil(len(handles) / rows)  # balanced rows; entries fill column by column
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=ncol, frameon=False, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    # a few flat colours: a 256-colour palette loses nothing visible and makes the file 2-3x smaller
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)
    return path


def _plus_color(ratio: float, ratios: Sequence[float]) -> Any:
    """Greens, darker for more extra states."""
    k = sorted(ratios).index(ratio)
    return colormaps["Greens"](0.5 + 0.45 * k / max(len(ratios) - 1, 1))


def _draw_best_in_class(ax: Axes, rows: Iterable[Row]) -> None:
    bic = _best_in_class(rows)
    if bic is not None:
        ax.axhline(bic, color="grey", ls=":", lw=1.5, label="best in class")


def plot_gap_vs_n(rows: Iterable[Row], path: str | Path, budget: str | None = None, title: str = "") -> Path | None:
    """Optimality gap against n, a line per method (RMB-PO+ a line per m/n) with s.e. error bars; a panel per
    budget (all, or only `budget`), y shared. Log x when n spans more than 10x. None (nothing written) when
    there is a single n."""
    rows = _sorted(rows)
    budgets = _budgets(rows, budget)
    rows = [r for r in rows if r["budget"] in budgets]
    ns = sorted({r["n"] for r in rows})
    if len(ns) < 2:
        return None
    log_x = ns[-1] / ns[0] > 10
    ratios = sorted({r["ratio"] for r in rows if r["method"] == "rmb_po_plus"})
    fig, axes = _figure(1, len(budgets))
    for ax, b in zip(axes, budgets, strict=True):
        lines: list[tuple[str, Any, str, list[Row]]] = []
        for method in ("dpo", "rmb_po"):
            found = [p for n in ns if (p := _pick(rows, b, method, n)) is not None]
            lines.append((DISPLAY[method], COLORS[method], MARKERS[method], found))
        for ratio in ratios:
            found = [r for r in rows if r["budget"] == b and r["method"] == "rmb_po_plus" and r["ratio"] == ratio]
            lines.append((f"RMB-PO+ (m/n = {ratio:g})", _plus_color(ratio, ratios), MARKERS["rmb_po_plus"], found))
        lines = [line for line in lines if line[3]]
        for k, (label, color, marker, found) in enumerate(lines):
            shift = k - (len(lines) - 1) / 2  # dodge: error bars at one n side by side, not on top of each other
            x = [r["n"] * 1.025**shift if log_x else r["n"] + 0.006 * (ns[-1] - ns[0]) * shift for r in found]
            mean, se = zip(*(mean_se(r["gap"]) for r in found), strict=True)
            ax.errorbar(x, mean, yerr=se, label=label, color=color, marker=marker, ms=4, lw=1.3, capsize=3)
        _draw_best_in_class(ax, [r for r in rows if r["budget"] == b])
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(ns)
        if len(budgets) > 1:
            ax.set_title(f"budget: {b}", fontsize=10)
    return _finish(fig, axes, N_LABEL, title, path)


def _spread(values: Sequence[int], k: int) -> list[int]:
    """At most k of the sorted values, evenly spaced, ends included."""
    if len(values) <= k:
        return list(values)
    return sorted({values[round(i * (len(values) - 1) / (k - 1))] for i in range(k)})


def plot_gap_vs_ratio(rows: Iterable[Row], path: str | Path, budget: str | None = None, title: str = "") -> Path | None:
    """The paper's neural-bandit figure: RMB-PO+'s gap against m/n (with RMB-PO at m/n = 0), DPO and RMB-PO as
    horizontal lines with shaded s.e. bands; a panel per (budget, n), at most `MAX_PANELS` (n values evenly
    spread when there are more). None (nothing written) when no RMB-PO+ row has m/n > 0."""
    rows = _sorted(rows)
    budgets = _budgets(rows, budget)
    rows = [r for r in rows if r["budget"] in budgets]
    plus = [r for r in rows if r["method"] == "rmb_po_plus" and r["ratio"] > 0]
    if not plus:
        return None
    per_budget = max(1, MAX_PANELS // len(budgets))
    panels = [(b, n) for b in budgets for n in _spread(sorted({r["n"] for r in plus if r["budget"] == b}), per_budget)]
    if len(budgets) == 1:
        ncols = min(3, len(panels))
        nrows = math.ceil(len(panels) / ncols)
    else:
        nrows, ncols = len(budgets), max(sum(b == pb for pb, _ in panels) for b in budgets)
    fig, axes = _figure(nrows, ncols, sharey=False)  # the gaps shrink with n: a shared axis flattens large n
    if len(budgets) == 1:
        used = axes[: len(panels)]
    else:  # a row per budget, its n values from the left
        used = [axes[budgets.index(b) * ncols + [pn for pb, pn in panels if pb == b].index(n)] for b, n in panels]
    for ax, (b, n) in zip(used, panels, strict=True):
        curve = [r for r in _plus_rows(rows, b, n) if r["ratio"] > 0]
        for method in ("dpo", "rmb_po"):
            base = _pick(rows, b, method, n)
            if base is None:
                continue
            mean, se = mean_se(base["gap"])
            ax.axhline(mean, color=COLORS[method], ls="--", lw=1.3, label=DISPLAY[method])
            ax.axhspan(mean - se, mean + se, color=COLORS[method], alpha=0.15, lw=0)
            if method == "rmb_po":
                curve = [base, *curve]  # RMB-PO+ with no extra states is RMB-PO
        mean, se = zip(*(mean_se(r["gap"]) for r in curve), strict=True)
        x = [r["ratio"] for r in curve]
        ax.errorbar(x, mean, yerr=se, label="RMB-PO+", color=colormaps["Greens"](0.8), marker="^", ms=5, capsize=3)
        _draw_best_in_class(ax, [r for r in rows if r["budget"] == b])
        ax.set_title(f"n = {n}" if len(budgets) == 1 else f"n = {n}, budget: {b}", fontsize=10)
    for ax in axes:
        if ax not in used:
            ax.set_visible(False)
    return _finish(fig, used, RATIO_LABEL, title, path)


def write_report(rows: Iterable[Row], out_dir: str | Path, title: str) -> dict[str, Path]:
    """results.csv, results_per_seed.csv, results.md (title + tables) and the figures that apply
    (gap_vs_n.png, gap_vs_ratio.png) under out_dir; returns {file name: path} for what was written."""
    rows = list(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "results.csv": write_csv(rows, out / "results.csv"),
        "results_per_seed.csv": write_seed_csv(rows, out / "results_per_seed.csv"),
    }
    md = out / "results.md"
    md.write_text(f"# {title}\n\n{markdown_table(rows)}")
    paths["results.md"] = md
    for name, plot in (("gap_vs_n.png", plot_gap_vs_n), ("gap_vs_ratio.png", plot_gap_vs_ratio)):
        written = plot(rows, out / name, title=title)
        if written is not None:
            paths[name] = written
    return paths
