"""What `alignkit run` prints and what it keeps: alignkit's own lines on the terminal, everything in train.log."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, assert_quiet, minimal

from alignkit.algorithms import ALGORITHMS
from alignkit.cli import main
from alignkit.console import open_log_file, with_run_output


def write_config(tmp_path: Path, name: str, /, **sections: Any) -> Path:
    """MINIMAL[name] for 3 logged steps with an eval at step 2 and at the end, written as a YAML file."""
    data = minimal(name)
    data["data"] = {**data["data"], "eval_fraction": 0.125}
    data.update(
        trainer={
            "max_steps": 3,
            "prompts_per_step": 4,
            "micro_batch_size": 2,
            "log_every_n_steps": 1,
            "eval_every_n_steps": 2,
            "limit_eval_batches": 1,
        },
        hardware={"accelerator": "cpu", "strategy": "single"},
        logging={"root": str(tmp_path / "runs")},
        checkpoint={"every_n_steps": 1, "export_hf": True},
    )
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_a_run_prints_its_own_lines_and_logs_everything_to_train_log(tmp_path: Path) -> None:
    """An online run in a fresh interpreter, as a user starts it: Lightning adds its terminal handler on import,
    datasets and transformers draw bars, ModelCheckpoint warns about manual optimization; none of it shows."""
    path = write_config(tmp_path, "grpo")
    done = subprocess.run(
        [sys.executable, "-m", "alignkit", "run", str(path)], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    assert_quiet(terminal)
    run_dir = tmp_path / "runs" / "t" / "version_0"
    lines = done.stdout.splitlines()
    assert lines[0] == "t (grpo): 3 steps of 4 prompts x 2 samples, on 1 cpu process"
    assert lines[1].startswith("  models: policy (") and ", trained), reference (" in lines[1]
    assert lines[1].endswith(", frozen), reward (rule)")
    assert lines[2] == "  data: 56 train and 8 eval prompts"
    assert lines[3] == f"  run directory: {run_dir} (full log: train.log)"
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["1/3", "2/3", "3/3"]
    for line in steps:
        assert all(f" {metric} " in line for metric in ("reward/mean", "kl/ref", "response/length"))
        assert "s/step, eta" in line
    assert [line.split(":")[0] for line in lines if line.startswith("eval at")] == ["eval at step 2", "eval at step 3"]
    assert f"run finished at step 3: {run_dir}" in lines
    assert f"  full log: {run_dir / 'train.log'}" in lines
    assert done.stderr == ""  # no warnings in this run

    log = (run_dir / "train.log").read_text()
    for said in ("GPU available", "ModelCheckpoint with manual optimization", "model summary", "Trainable params"):
        assert said in log
    assert all(line in log for line in steps)
    assert "run finished at step 3" in log


def test_an_alignkit_warning_reaches_the_terminal(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """KTO's class-balance warning, logged while the data is prepared, on stderr and in train.log."""
    path = write_config(tmp_path, "kto", algorithm={"desirable_weight": 3.0}, checkpoint={"export_hf": False})
    assert main(["run", str(path), "trainer.max_steps=1", "data.eval_fraction=0"]) == 0
    out, err = capfd.readouterr()
    assert_quiet(out + err)
    assert "warning: KTO: desirable_weight * n_desirable / (undesirable_weight * n_undesirable) = " in err
    assert "step 1/1  loss " in out and " rewards/margins " in out and " kl/z0 " in out
    log = (tmp_path / "runs" / "t" / "version_0" / "train.log").read_text()
    assert "WARNING alignkit.algorithms.kto: KTO: desirable_weight" in log


def test_progress_bar_false_keeps_the_step_lines_in_the_log_only(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "sft", logging={"progress_bar": False}, checkpoint={"export_hf": False})
    assert main(["run", str(path)]) == 0
    out, err = capfd.readouterr()
    assert_quiet(out + err)
    assert out.startswith("t (sft): 3 steps of 4 sequences, on 1 cpu process\n")
    assert "step 1/3" not in out and "eval at step 2: loss " in out and " ppl " in out
    log = (tmp_path / "runs" / "t" / "version_0" / "train.log").read_text()
    assert "step 1/3  loss " in log and "step 3/3  loss " in log


TRAINED = [name for name in ALGORITHMS.names() if ALGORITHMS.get(name).progress]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", TRAINED)
def test_every_algorithm_shows_the_metrics_its_card_names(
    algorithm: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A misspelt name in a card's `progress` would silently drop from every line; each must be logged."""
    path = write_config(tmp_path, algorithm, checkpoint={"export_hf": False})
    assert main(["run", str(path), "trainer.max_steps=1", "data.eval_fraction=0"]) == 0
    out, _ = capfd.readouterr()
    line = next(line for line in out.splitlines() if line.startswith("step 1/1 "))
    assert all(f" {metric} " in line for metric in ALGORITHMS.get(algorithm).progress), line


# -- the set-up itself, without training ---------------------------------------------------------------------
def test_records_before_the_run_directory_exists_are_written_to_train_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ours, lightning = logging.getLogger("alignkit.test"), logging.getLogger("lightning.pytorch")
    before = (ours.level, list(logging.getLogger().handlers), lightning.propagate, list(lightning.handlers))

    @with_run_output
    def fake_run() -> None:
        ours.warning("checked the data")  # before the directory exists
        lightning.info("GPU available: False")
        warnings.warn("a library's note", UserWarning, stacklevel=1)
        open_log_file(tmp_path)
        ours.info("step 1/1")
        ours.debug("for the log only")

    fake_run()
    out, err = capfd.readouterr()
    assert out == "step 1/1\n" and err == "warning: checked the data\n"
    log = (tmp_path / "train.log").read_text()
    for said in ("checked the data", "GPU available: False", "a library's note", "step 1/1", "for the log only"):
        assert said in log
    # everything is put back for whatever the process does next
    assert before == (ours.level, list(logging.getLogger().handlers), lightning.propagate, list(lightning.handlers))


def test_other_ranks_print_nothing_and_keep_their_own_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")

    @with_run_output
    def fake_run() -> None:
        logging.getLogger("alignkit.test").warning("rank 1 says")
        open_log_file(tmp_path, rank=1)

    fake_run()
    assert capfd.readouterr() == ("", "")
    assert "rank 1 says" in (tmp_path / "train.rank1.log").read_text()
    assert not (tmp_path / "train.log").exists()
