"""Pipelines and `alignkit compare` end to end, with tiny models for a few steps (each stage is a subprocess)."""

from __future__ import annotations

import csv
import json
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


BROKEN = """
      broken:                                  # its data file has a bad row: the run fails before training
        algorithm: {name: dpo}
        policy: {from_stage: sft}
        data: {train: {path: BAD}}
      after_broken:                            # reads what `broken` would have trained: skipped
        algorithm: {name: sft}
        policy: {from_stage: broken}
        data: {train: {generator: reviews, args: {n: 32}}}
"""
SEEDS = """
      seeds: 2
      shared: [sft, rm]
      bootstrap_reps: 200
"""


def versions(root: Path, stage: str) -> list[str]:
    return sorted(p.name for p in (root / "pipe" / stage).glob("version_*") if p.is_dir())


def test_finished_stages_are_reused_and_edits_rerun_downstream(
    write_yaml: WriteYaml, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first run goes through submitit's local executor: the SLURM path (one job per stage run, each
    submitted when what it reads has finished) on one machine."""
    root = tmp_path / "runs"
    path = write_yaml("pipe.yaml", HEAD.replace("ROOT", str(root)))
    done = run_pipeline(load_pipeline(path), jobs=2, executor="submitit-local", slurm={"timeout_min": 10})
    runs = done.runs
    assert versions(root, "sft") == ["version_0"] and versions(root, "dpo") == ["version_0"] and not done.failed
    policy = yaml.safe_load((runs["dpo"] / "config.yaml").read_text())["policy"]
    assert policy["path"] == policy["tokenizer"] == str(runs["sft"] / "hf" / "policy")
    assert "sft: 4 steps of 4 sequences" in (root / "pipe" / "sft" / "version_0.log").read_text()  # its output

    assert main(["run", str(path)]) == 0  # again: nothing to do
    out = capsys.readouterr().out
    assert "[pipe] sft: reusing finished run" in out and "[pipe] dpo: reusing finished run" in out
    assert versions(root, "sft") == ["version_0"] and versions(root, "dpo") == ["version_0"]

    run_pipeline(load_pipeline(path, ["stages.dpo.algorithm.beta=0.5"]))  # only dpo changed
    assert versions(root, "sft") == ["version_0"] and versions(root, "dpo") == ["version_0", "version_1"]

    run_pipeline(load_pipeline(path, ["defaults.trainer.seed=3"]), only=["sft"])  # sft changed: only it runs
    assert versions(root, "sft") == ["version_0", "version_1"] and len(versions(root, "dpo")) == 2


def test_compare_over_seeds_in_parallel_with_a_failing_stage(
    write_yaml: WriteYaml, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """dpo and grpo x seeds 0 and 1 from one shared SFT and reward model, two runs at a time; `broken` fails in
    both seeds, which skips `after_broken` and nothing else. The comparison still covers what finished, says
    what did not, and the command exits 1."""
    root = tmp_path / "runs"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\nnot json\n')
    text = (HEAD + COMPARE.replace("    compare:\n", BROKEN + "    compare:\n") + SEEDS).replace("ROOT", str(root))
    text = text.replace("runs: [dpo, grpo]", "runs: [dpo, grpo, broken, after_broken]").replace("BAD", str(bad))
    path = write_yaml("pipe.yaml", text)
    assert main(["compare", str(path), "--jobs", "2"]) == 1
    out = root / "pipe" / "compare" / "version_0"
    for stage in ("sft", "rm"):
        assert versions(root, stage) == ["version_0"]  # shared: once for both seeds
    for seed in (0, 1):
        for stage in ("dpo", "grpo"):
            assert (root / "pipe" / f"seed_{seed}" / stage / "version_0" / "hf" / "policy").is_dir()
        assert not (root / "pipe" / f"seed_{seed}" / "after_broken" / "version_0").exists()  # never started

    # the terminal: a line per run as it starts and ends, the failures with their logs, no library output
    printed, errors = capfd.readouterr()
    assert_quiet(printed + errors)
    lines = printed.splitlines()
    log = root / "pipe" / "seed_1" / "dpo" / "version_0.log"
    assert f"[pipe] seed_1/dpo: running dpo, log: {log}" in lines and "dpo: 4 steps of 4 pairs" in log.read_text()
    finished = next(line for line in lines if line.startswith("[pipe] seed_0/dpo: finished in "))
    assert "s (train/loss " in finished
    log = root / "pipe" / "seed_0" / "broken" / "version_0.log"
    assert "[pipe] seed_0/broken: FAILED after " in printed and "row 2: not valid JSON" in printed
    assert f"log: {log}" in printed and "row 2" in log.read_text()
    assert "[pipe] seed_1/after_broken: skipped (needs seed_1/broken, which failed)" in lines
    assert "error: 4 stage run(s) did not finish" in printed
    assert "[compare seed 1] dpo: true reward " in printed
    assert "loading configuration file" in (out / "compare.log").read_text()

    table = (out / "summary.md").read_text()
    assert "2 seeds (0, 1); sft, rm ran once and every seed started from them" in table
    for method in ("sft", "best-of-4", "dpo", "grpo"):
        assert f"| {method} | 2 | " in table
    assert "Ranking by true reward: an order is claimed only" in table and "| P(row > column) | " in table
    assert "- `seed_0/broken`: failed: exit code 2: " in table and "- `seed_1/after_broken`: skipped: " in table
    rows = list(csv.DictReader((out / "summary.csv").open()))
    final = {r["method"]: r for r in rows if r["final"] == "True"}
    assert set(final) == {"sft", "best-of-4", "dpo", "grpo"} and {r["n_seeds"] for r in final.values()} == {"2"}
    assert float(final["sft"]["kl"]) == pytest.approx(0.0, abs=1e-5)  # the baseline is the reference
    assert float(final["best-of-4"]["kl"]) == pytest.approx(1.386294 - 0.75, abs=1e-5)
    for r in final.values():
        assert float(r["true_reward_ci_low"]) <= float(r["true_reward"]) <= float(r["true_reward_ci_high"])
    assert all(float(final[m]["train_time_s"]) > 0 and float(final[m]["peak_mem_mb"]) > 0 for m in ("dpo", "grpo"))
    # step-2 checkpoints (dpo: optimizer step 2; grpo: iteration 2) are evaluated too: one curve per method
    assert {(r["method"], r["step"]) for r in rows if r["final"] == "False" and r["method"] in ("dpo", "grpo")} == {
        ("dpo", "2"),
        ("grpo", "2"),
    }
    for figure in ("frontier.png", "curves.png", "improvement.png", "reward_vs_time.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    samples = (out / "samples.jsonl").read_text()
    assert '"method": "grpo", "seed": 1' in samples

    # TensorBoard: <method>/seed_<k> with the run's training events and the compare tags, <method>/mean
    for stage in ("dpo", "grpo"):
        for run in ("seed_0", "seed_1", "mean"):
            events = EventAccumulator(str(out / "tensorboard" / stage / run))
            events.Reload()
            tags = set(events.Tags()["scalars"])
            assert set(TAGS) <= tags and ("train/loss" in tags) == (run != "mean")
            assert [e.step for e in events.Scalars("compare/reward/true")] == [0, 2, 4]
    mean = EventAccumulator(str(out / "tensorboard" / "dpo" / "mean"))
    mean.Reload()
    by_seed = [
        p["true_reward"]
        for p in json.loads((out / "results.json").read_text())["points"]
        if p["method"] == "dpo" and p["final"]
    ]
    assert mean.Scalars("compare/reward/true")[-1].value == pytest.approx(sum(by_seed) / 2, abs=1e-5)


@pytest.mark.distributed
def test_pipeline_stages_launch_their_own_ddp_processes(write_yaml: WriteYaml, tmp_path: Path) -> None:
    """A stage with ddp-cpu-2 runs as its own `alignkit run`, which starts its second process itself."""
    root = tmp_path / "runs"
    text = HEAD.replace("ROOT", str(root)).replace("{accelerator: cpu, strategy: single}", "{preset: ddp-cpu-2}")
    text = text.replace("micro_batch_size: 4", "micro_batch_size: 2")
    # one stage is enough: reading an upstream stage's export is the same under DDP (the other tests)
    runs = run_pipeline(load_pipeline(write_yaml("pipe.yaml", text)), only=["sft"], log=lambda _: None).runs
    config = yaml.safe_load((runs["sft"] / "config.yaml").read_text())
    assert config["hardware"]["strategy"] == "ddp" and config["hardware"]["devices"] == 2
    assert (runs["sft"] / "hf" / "policy" / "model.safetensors").is_file()
    assert "dpo" not in runs
