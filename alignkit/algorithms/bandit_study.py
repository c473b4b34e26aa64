"""The bandit studies of Li, Xu, Yu 2023 (DPO vs RMB-PO vs RMB-PO+) declared in YAML: settings x seeds.

Every (budget, n, m) setting trains each method's registered BanditPolicy (alignkit.bandits.methods) on
all seeds at once (alignkit.bandits.study.run_study); the study writes one TensorBoard run per method and
setting, a CSV and Markdown table of mean +- standard error over seeds, and the figures (alignkit.bandits.report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from alignkit.algorithms.configs.bandit_study import BANDIT_STUDY_CARD
from alignkit.bandits.report import markdown_table, write_report
from alignkit.bandits.study import run_study
from alignkit.stats import mean_se


class BanditStudy:
    """A study runs many small fits of its own (no single Trainer.fit): run.py calls `launch`."""

    card: ClassVar = BANDIT_STUDY_CARD

    @classmethod
    def launch(cls, cfg: Any, run_dir: Path) -> dict[str, float]:
        """Run the study into run_dir (TensorBoard runs, results.csv/.md, figures); print the table."""
        a = cfg.algorithm
        fits = run_study(
            a.env,
            a.seeds,
            methods=a.methods,
            n=a.n,
            m_ratio=a.m_ratio,
            budgets=a.budgets,
            beta=a.beta,
            log_every=a.log_every,
            log_dir=run_dir,
        )
        rows = [fit.row() for fit in fits]
        written = write_report(rows, run_dir, title=cfg.description or cfg.name)
        print(markdown_table(rows))
        for path in written.values():
            print(f"  wrote {path}")
        return {f"{r['budget']}/n{r['n']}/m{r['m']}/{r['method']}/gap": mean_se(r["gap"])[0] for r in rows}
