"""The reasoning testbed end to end: a tiny `alignkit compare` of two RL methods on the exact-answer reward writes
the pass@k table, pass_at_k.csv, the two pass@k figures and the `eval/pass@k/*` TensorBoard tags."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alignkit.cli import main

pytestmark = pytest.mark.slow
PIPELINE = """
    name: reasoning
    defaults:
      data: {max_length: 64}
      trainer: {max_steps: 2, prompts_per_step: 4, micro_batch_size: 4, log_every_n_steps: 1}
      hardware: {accelerator: cpu, strategy: single}
      logging: {root: ROOT, progress_bar: false}
    stages:
      sft:
        algorithm: {name: sft}
        policy: {architecture: llama, hidden_size: 32, num_layers: 1, num_heads: 2}
        data: {train: {generator: arithmetic, args: {n: 32, digits: 1}}}
      grpo:
        algorithm: {name: grpo, samples_per_prompt: 4, max_new_tokens: 12}
        policy: {from_stage: sft}
        reward: {source: {kind: rule, name: exact_answer}}
        data: {train: {generator: arithmetic, args: {n: 32, digits: 1, seed: 2}}}
      rloo:
        algorithm: {name: rloo, samples_per_prompt: 4, max_new_tokens: 12}
        policy: {from_stage: sft}
        reward: {source: {kind: rule, name: exact_answer}}
        data: {train: {generator: arithmetic, args: {n: 32, digits: 1, seed: 2}}}
    compare:
      prompts: {generator: arithmetic, args: {n: 6, digits: 1, seed: 99}}
      true_reward: {kind: rule, name: exact_answer}
      samples_per_prompt: 2
      max_new_tokens: 12
      seeds: 2
      shared: [sft]
      bootstrap_reps: 200
      pass_at_k: {k: [1, 2, 4], samples: 4}
"""


def test_a_tiny_compare_writes_the_pass_at_k_table_figures_and_tags(
    write_yaml: Callable[[str, str], Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "runs"
    path = write_yaml("reasoning.yaml", PIPELINE.replace("ROOT", str(root)))
    assert main(["compare", str(path), "--jobs", "2"]) == 0
    out = root / "reasoning" / "compare" / "version_0"
    printed = capfd.readouterr().out
    assert "(pass@k: 4 for final policies)" in printed
    assert "[compare seed 1] grpo: true reward " in printed and ", pass@4 " in printed and "greedy " in printed

    groups = json.loads((out / "results.json").read_text())["prompt_groups"]
    assert len(groups) == 6 and set(groups) <= {"terms=2", "terms=3"}
    table = (out / "summary.md").read_text().split("## Pass@k\n")[1]
    assert "| method | n | greedy pass@1 | pass@1 | pass@2 | pass@4 |" in table
    for method in ("sft", "grpo", "rloo"):
        assert f"\n| {method} | 2 | " in table
    for group in set(groups):
        assert f"difficulty = {group} (" in table and f"| change, difficulty = {group} |" in table
    assert "Change from sft, paired" in table and "\n| grpo | " in table.split("| change, all prompts |")[1]

    rows = list(csv.DictReader((out / "pass_at_k.csv").open()))
    assert len(rows) == 3 * (1 + len(set(groups))) * 4  # methods x (all + groups) x (greedy, 1, 2, 4)
    curve = {r["method"]: [float(r["mean"]) for r in rows if r["group"] == "all" and r["k"] != "greedy"] for r in rows}
    for method, values in curve.items():
        assert values == sorted(values) and all(0 <= v <= 1 for v in values), method  # pass@k grows with k
    for r in rows:
        assert float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"])
        assert (r["change"] == "") == (r["method"] == "sft")
    for figure in ("pass_at_k.png", "pass1_vs_kl.png", "frontier.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"

    for run in ("seed_0", "seed_1", "mean"):
        events = EventAccumulator(str(out / "tensorboard" / "grpo" / run))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"eval/pass@k/1", "eval/pass@k/4", "eval/pass@k/greedy", "eval/pass@k/curve"} <= tags
        assert {f"eval/pass@k/{g}/4" for g in groups} <= tags
        assert [e.step for e in events.Scalars("eval/pass@k/1")] == [0, 2]  # the start, then the trained policy
        assert [e.step for e in events.Scalars("eval/pass@k/curve")] == [1, 2, 4]  # its step is k
