"""Pipelines and `alignkit compare` end to end, with tiny models for a few steps (each stage is a subprocess)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import assert_quiet
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alignkit.cli import main
from alignkit.compare import TAGS
from alignkit.pipeline import load_pipeline, run_pipeline

pytestmark = pytest.mark.slow
WriteYaml = Callable[[str, str], Path]
HEAD = """
    name: pipe
    defaults:
      data: {max_length: 64}
      trainer: {max_steps: 4, prompts_per_step: 4, micro_batch_size: 4, log_every_n_steps: 1}
      hardware: {accelerator: cpu, strategy: single}
      logging: {root: ROOT, progress_bar: false}
      checkpoint: {every_n_steps: 2, keep: 5}
    stages:
      sft:
        algorithm: {name: sft}
        policy: {architecture: llama, hidden_size: 32, num_layers: 1, num_heads: 2}
        data: {train: {generator: reviews, args: {n: 32}}}
      dpo:
        algorithm: {name: dpo}
        policy: {from_stage: sft}
        data: {train: {generator: review_pairs, args: {n: 32}}}
"""
COMPARE = """
      rm:
        algorithm: {name: reward_model}
        reward_model: {from_stage: sft}
        data: {train: {generator: review_pairs, args: {n: 32}}}
      grpo:
        algorithm: {name: grpo, samples_per_prompt: 2, max_new_tokens: 6}
        policy: {from_stage: sft}
        reward: {source: {kind: model, model: {from_stage: rm}}}
        data: {train: {generator: review_prompts, args: {n: 32}}}
    compare:
      runs: [dpo, grpo]
      prompts: {generator: review_prompts, args: {n: 6, seed: 99}}
      true_reward: {kind: rule, name: review_sentiment}
      samples_per_prompt: 2
      max_new_tokens: 6
      best_of_n: [1, 4]
"""


def versions(root: Path, stage: str) -> list[str]:
    return sorted(p.name for p in (root / "pipe" / stage).glob("version_*"))


def test_finished_stages_are_reused_and_edits_rerun_downstream(
    write_yaml: WriteYaml, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "runs"
    path = write_yaml("pipe.yaml", HEAD.replace("ROOT", str(root)))
    runs = run_pipeline(load_pipeline(path))
    assert versions(root, "sft") == ["version_0"] and versions(root, "dpo") == ["version_0"]
    policy = yaml.safe_load((runs["dpo"] / "config.yaml").read_text())["policy"]
    assert policy["path"] == policy["tokenizer"] == str(runs["sft"] / "hf" / "policy")

    assert main(["run", str(path)]) == 0  # again: nothing to do
    out = capsys.readouterr().out
    assert "stage sft: reusing finished run" in out and "stage dpo: reusing finished run" in out
    assert versions(root, "sft") == ["version_0"] and versions(root, "dpo") == ["version_0"]

    run_pipeline(load_pipeline(path, ["stages.dpo.algorithm.beta=0.5"]))  # only dpo changed
    assert versions(root, "sft") == ["version_0"] and versions(root, "dpo") == ["version_0", "version_1"]

    run_pipeline(load_pipeline(path, ["defaults.trainer.seed=3"]), only=["sft"])  # sft changed: only it runs
    assert versions(root, "sft") == ["version_0", "version_1"] and len(versions(root, "dpo")) == 2


def test_compare_of_two_algorithms_writes_runs_table_figures_tensorboard(
    write_yaml: WriteYaml, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "runs"
    path = write_yaml("pipe.yaml", (HEAD + COMPARE).replace("ROOT", str(root)))
    assert main(["compare", str(path)]) == 0  # as a user runs it: stages in child processes, then the evaluation
    out = root / "pipe" / "compare" / "version_0"
    for stage in ("sft", "rm", "dpo", "grpo"):
        assert versions(root, stage) == ["version_0"]

    # the terminal: each stage's own lines indented under its start and finish, no library output (the
    # evaluation loads every policy: no "Loading weights" bars either); the libraries' lines in compare.log
    printed, errors = capfd.readouterr()
    assert_quiet(printed + errors)
    lines = printed.splitlines()
    start, end = lines.index("[pipe] stage sft: running sft"), lines.index("[pipe] stage dpo: running dpo")
    assert lines[start + 1] == "  sft: 4 steps of 4 sequences, on 1 cpu process"
    assert lines[end - 1].startswith("[pipe] stage sft: finished in ")
    assert lines[end - 1].endswith(f"s: {root / 'pipe' / 'sft' / 'version_0'}")
    assert all(line.startswith(("  ", "[pipe]")) for line in lines[start:end])
    assert "[compare] dpo: true reward " in printed
    assert "loading configuration file" in (out / "compare.log").read_text()

    table = (out / "summary.md").read_text()
    for method in ("| sft |", "| best-of-4 |", "| dpo |", "| grpo |"):
        assert method in table
    rows = list(csv.DictReader((out / "summary.csv").open()))
    final = {r["method"]: r for r in rows if r["final"] == "True"}
    assert set(final) == {"sft", "best-of-4", "dpo", "grpo"}
    assert float(final["sft"]["kl"]) == pytest.approx(0.0, abs=1e-5)  # the baseline is the reference
    assert float(final["best-of-4"]["kl"]) == pytest.approx(1.386294 - 0.75, abs=1e-5)
    assert all(float(final[m]["train_time_s"]) > 0 and float(final[m]["peak_mem_mb"]) > 0 for m in ("dpo", "grpo"))
    # step-2 checkpoints (dpo: optimizer step 2; grpo: iteration 2) are evaluated too: one curve per method
    assert {(r["method"], r["step"]) for r in rows if r["final"] == "False" and r["method"] in ("dpo", "grpo")} == {
        ("dpo", "2"),
        ("grpo", "2"),
    }
    for figure in ("frontier.png", "reward_vs_time.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    assert (out / "samples.jsonl").read_text().count('"method": "grpo"') >= 1

    for stage in ("dpo", "grpo"):
        events = EventAccumulator(str(out / "tensorboard" / stage))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert set(TAGS) <= tags and "train/loss" in tags
        assert [e.step for e in events.Scalars("compare/reward/true")] == [0, 2, 4]


@pytest.mark.distributed
def test_pipeline_stages_launch_their_own_ddp_processes(write_yaml: WriteYaml, tmp_path: Path) -> None:
    """A stage with ddp-cpu-2 runs as its own `alignkit run`, which starts its second process itself."""
    root = tmp_path / "runs"
    text = HEAD.replace("ROOT", str(root)).replace("{accelerator: cpu, strategy: single}", "{preset: ddp-cpu-2}")
    text = text.replace("micro_batch_size: 4", "micro_batch_size: 2")
    # one stage is enough: reading an upstream stage's export is the same under DDP (the other tests)
    runs = run_pipeline(load_pipeline(write_yaml("pipe.yaml", text)), only=["sft"], log=lambda _: None)
    config = yaml.safe_load((runs["sft"] / "config.yaml").read_text())
    assert config["hardware"]["strategy"] == "ddp" and config["hardware"]["devices"] == 2
    assert (runs["sft"] / "hf" / "policy" / "model.safetensors").is_file()
    assert "dpo" not in runs
