"""`logging.loggers`: the same metrics in TensorBoard, CSV, W&B (offline mode) and MLflow (a directory store)."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import REPO, assert_quiet, minimal, tiny_config
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alignkit.algorithms import ALGORITHMS
from alignkit.config.errors import ConfigError
from alignkit.config.load import validate_dict
from alignkit.loggers import build_loggers
from alignkit.run import run

ALL = ["tensorboard", "csv", "wandb", "mlflow"]


def offline_trackers(mp: pytest.MonkeyPatch, home: Path) -> None:
    """W&B offline and its settings, cache and data under `home`; no MLflow URI from the environment."""
    mp.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        mp.setenv(var, str(home / var.lower()))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def csv_series(run_dir: Path, key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in csv_rows(run_dir) if r.get(key)}


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of a W&B transaction log (`run-<id>.wandb`): a 7-byte header (':W&B', magic, version), then
    LevelDB-log blocks of 32 KiB whose chunks (crc32, length, type; 1 full, 2 first, 3 middle, 4 last) hold
    protobuf Records. Read here because offline runs write no summary file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def wandb_run(run_dir: Path) -> dict[str, Any]:
    """An offline W&B run's id, name, group, config and history ({key: {step: value}}) from its .wandb file."""
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    out: dict[str, Any] = {"config": {}, "history": {}}
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(id=record.run.run_id, name=record.run.display_name, group=record.run.run_group)
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            row = {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for key, value in row.items():
                out["history"].setdefault(key, {})[row["trainer/global_step"]] = value
    return out


def mlflow_client(root: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient((root / "mlruns").resolve().as_uri())


# -- config -------------------------------------------------------------------------------------------------------
def test_tensorboard_alone_by_default_in_the_run_directory(tmp_path: Path) -> None:
    """The default is the layout alignkit always had: TensorBoard events in <root>/<name>/<version>/."""
    cfg = validate_dict(minimal("sft"))
    assert cfg.logging.loggers == ["tensorboard"]
    run_dir = tmp_path / "t" / "version_0"
    (logger,) = build_loggers(cfg, run_dir)
    assert isinstance(logger, TensorBoardLogger)
    assert Path(logger.log_dir) == run_dir


@pytest.mark.parametrize(
    ("logging", "expected"),
    [
        (
            {"loggers": ["tensorboard", "csv", "csv"]},
            "logging.loggers: 'csv' listed more than once (got ['tensorboard', 'csv', 'csv']); list each logger once",
        ),
        ({"loggers": ["tensorbord"]}, "logging.loggers[0]: invalid value (got 'tensorbord'); allowed: tensorboard, "),
        ({"loggers": ["tensorboard"]}, None),
        ({"wandb": {"project": "p"}}, "logging.wandb: settings for a logger that is off"),
        ({"loggers": ["wandb"], "wandb": {"mode": "ofline"}}, "did you mean 'offline'?"),
    ],
)
def test_logger_problems_name_their_path(logging: dict[str, Any], expected: str | None) -> None:
    data = minimal("sft", logging=logging)
    if expected is None:
        validate_dict(data)
        return
    with pytest.raises(ConfigError) as err:
        validate_dict(data)
    assert expected in str(err.value)


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_tracker_not_installed_says_what_to_install(tracker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else find_spec(name, *a))
    with pytest.raises(ConfigError) as err:
        validate_dict(minimal("sft", logging={"loggers": ["tensorboard", tracker]}))
    assert f"logging.loggers: '{tracker}' needs the {tracker} package, which is not installed; " in str(err.value)
    assert f"pip install 'alignkit[{tracker}]'" in str(err.value)


def test_a_resumed_csv_continues_its_metrics_file(tmp_path: Path) -> None:
    """Lightning's CSV writer deletes a metrics.csv it finds; alignkit's appends to it, widening its columns."""
    cfg = validate_dict(minimal("sft", logging={"loggers": ["csv"]}))
    run_dir = tmp_path / "t" / "version_0"
    for steps, key in (([0, 1], "train/loss"), ([1, 2], "eval/loss")):
        (logger,) = build_loggers(cfg, run_dir)
        for step in steps:
            logger.log_metrics({key: float(step)}, step=step)
        logger.finalize("success")
    assert [(r["step"], r["train/loss"], r["eval/loss"]) for r in csv_rows(run_dir)] == [
        ("0", "0.0", ""),
        ("1", "1.0", ""),
        ("1", "", "1.0"),
        ("2", "", "2.0"),
    ]


# -- one run, four trackers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An SFT run of 3 steps (eval at the end) logging to all four trackers, offline."""
    root = tmp_path_factory.mktemp("four")
    with pytest.MonkeyPatch.context() as mp:
        offline_trackers(mp, root)
        cfg = tiny_config("sft", root, eval_fraction=0.125, logging={"loggers": ALL, "wandb": {"tags": ["test"]}})
        return run(cfg)


def test_csv_holds_every_logged_step(four: Any) -> None:
    """<run>/csv/metrics.csv: a row per step with the train metrics, and the final evaluation's row; the same
    numbers as TensorBoard's."""
    loss = csv_series(four.run_dir, "train/loss")
    assert list(loss) == [0, 1, 2]
    assert list(csv_series(four.run_dir, "eval/loss")) == [3]
    events = EventAccumulator(str(four.run_dir)).Reload()  # tensorboard, listed, is where it always was
    assert {e.step: e.value for e in events.Scalars("train/loss")} == pytest.approx(loss, rel=1e-6)
    assert loss[2] == pytest.approx(four.metrics["train/loss"], rel=1e-6)


def test_wandb_offline_run_holds_the_metrics_and_the_config(four: Any) -> None:
    found = wandb_run(four.run_dir)
    assert found["name"] == "t/version_0"
    assert found["group"] == "t"  # the experiment's name
    assert found["history"]["train/loss"] == pytest.approx(csv_series(four.run_dir, "train/loss"))
    assert found["history"]["eval/loss"] == pytest.approx(csv_series(four.run_dir, "eval/loss"))
    assert found["config"]["trainer.max_steps"] == 3  # the resolved config, flattened to YAML paths
    assert found["config"]["algorithm"] == "sft"
    assert json.loads((four.run_dir / "trackers.json").read_text())["wandb"]["id"] == found["id"]


def test_mlflow_run_holds_the_metrics_and_the_config(four: Any) -> None:
    """The default store is <logging.root>/mlruns; the experiment is the experiment's name, the run
    <name>/<version>; the final evaluation, logged after fit, is there and the run is finished."""
    root = four.run_dir.parent.parent
    client = mlflow_client(root)
    (run_,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run_.info.run_name == "t/version_0"
    assert run_.info.status == "FINISHED"
    for key in ("train/loss", "eval/loss"):
        history = {m.step: m.value for m in client.get_metric_history(run_.info.run_id, key)}
        assert history == pytest.approx(csv_series(four.run_dir, key))
    assert run_.data.params["trainer.max_steps"] == "3"
    assert run_.data.params["logging.loggers"] == str(ALL)
    assert json.loads((four.run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == run_.info.run_id


def test_online_iterations_reach_every_logger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GRPO writes its iteration metrics itself (AlignModule._log_iteration): to the CSV as to TensorBoard."""
    offline_trackers(monkeypatch, tmp_path)
    cfg = tiny_config("grpo", tmp_path, eval_fraction=0.0, logging={"loggers": ["tensorboard", "csv"]})
    result = run(cfg)
    reward = csv_series(result.run_dir, "train/reward/mean")
    assert list(reward) == [0, 1, 2]
    events = EventAccumulator(str(result.run_dir)).Reload()
    assert {e.step: e.value for e in events.Scalars("train/reward/mean")} == pytest.approx(reward, rel=1e-6)


def test_a_resumed_run_continues_its_tracker_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that crashes after step 2 and resumes in place: one MLflow run and one W&B id (kept in trackers.json),
    a metrics.csv with the steps from both parts."""
    offline_trackers(monkeypatch, tmp_path)

    def cfg(resume: str) -> Any:
        return tiny_config(
            "sft",
            tmp_path,
            eval_fraction=0.0,
            logging={"loggers": ["csv", "wandb", "mlflow"]},
            checkpoint={"every_n_steps": 1, "resume": resume},
        )

    module_cls = ALGORITHMS.get("sft").load()
    original = module_cls.training_step

    def crash_at_step_2(self: Any, batch: dict, idx: int) -> torch.Tensor:
        if self.global_step == 2:
            raise RuntimeError("simulated crash")
        return original(self, batch, idx)

    monkeypatch.setattr(module_cls, "training_step", crash_at_step_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg("none"))
    run_dir = tmp_path / "t" / "version_0"
    ids = json.loads((run_dir / "trackers.json").read_text())
    client = mlflow_client(tmp_path)
    assert client.get_run(ids["mlflow"]["run_id"]).info.status == "FAILED"
    monkeypatch.setattr(module_cls, "training_step", original)

    assert run(cfg("auto")).run_dir == run_dir
    assert json.loads((run_dir / "trackers.json").read_text()) == ids
    (run_,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run_.info.run_id == ids["mlflow"]["run_id"]
    assert run_.info.status == "FINISHED"
    assert sorted({m.step for m in client.get_metric_history(run_.info.run_id, "train/loss")}) == [0, 1, 2]
    assert sorted({int(r["step"]) for r in csv_rows(run_dir) if r["train/loss"]}) == [0, 1, 2]
    # offline-run-<time>-<id>, and "-1" after it when the resume starts within the same second
    folders = list(run_dir.glob("wandb/offline-run-*"))
    assert folders and all(f"-{ids['wandb']['id']}" in p.name for p in folders), folders


@pytest.mark.slow
def test_trackers_print_nothing_of_their_own(tmp_path: Path) -> None:
    """`alignkit run` with W&B (offline) and MLflow in a fresh interpreter, as a user starts it: the terminal has
    alignkit's lines, among them where each tracker's run is, and nothing that W&B or MLflow print themselves."""
    data = minimal("sft")
    data.update(
        trainer={"max_steps": 2, "prompts_per_step": 4, "micro_batch_size": 4, "log_every_n_steps": 1},
        hardware={"accelerator": "cpu", "strategy": "single"},
        logging={"root": str(tmp_path / "runs"), "loggers": ALL, "wandb": {"mode": "offline"}},
        checkpoint={"export_hf": False},
    )
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    env |= {"WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache")}
    done = subprocess.run(
        [sys.executable, "-m", "alignkit", "run", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    assert_quiet(terminal)
    trackers = [line for line in terminal.splitlines() if line.startswith(("wandb", "mlflow"))]
    assert [line.split(":")[0] for line in trackers] == ["wandb", "mlflow"], terminal
    assert trackers[0].startswith("wandb: offline run in ") and "upload it with `wandb sync " in trackers[0]
    assert "warning" not in terminal.lower() and "🏃" not in terminal, terminal
