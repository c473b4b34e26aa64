"""The trackers a run logs to: Lightning's TensorBoard, CSV, W&B and MLflow loggers, as `logging.loggers` lists them.

Where each writes, for a run directory `<root>/<name>/<version>`:
- tensorboard: event files in the run directory itself (`tensorboard --logdir <root>`), the layout alignkit has
  always had; `alignkit compare` copies them beside its own curves.
- csv: `<run>/csv/metrics.csv`, one row per logged step (`step`, `train/loss`, ...), and `<run>/csv/hparams.yaml`.
- wandb: W&B's own directory, `<run>/wandb/run-*` (online) or `<run>/wandb/offline-run-*` (offline: `wandb sync`
  uploads it); its log is `logs/debug.log` there.
- mlflow: the tracking URI of `logging.mlflow` (default a directory store, `<root>/mlruns`).

W&B and MLflow runs are named `<name>/<version>`, get the resolved config as parameters (flattened to YAML paths,
`trainer.optimizer.lr`), and their ids are kept in `<run>/trackers.json`, so that a resumed run continues the same
tracker runs. wandb and mlflow are optional extras: they are imported here only when a run asks for them.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from alignkit.config.schema import MLflowSpec, WandbSpec
from alignkit.rundir import RunError

log = logging.getLogger(__name__)
CSV_DIR = "csv"
MLRUNS = "mlruns"
IDS = "trackers.json"


def run_name(run_dir: Path) -> str:
    """`<name>/<version>`: what a W&B or MLflow run is called."""
    return f"{run_dir.parent.name}/{run_dir.name}"


def build_loggers(cfg: Any, run_dir: Path) -> list[Logger]:
    """Lightning loggers for `cfg.logging.loggers`, in that order, writing into (or for) `run_dir`."""
    ids = _read_ids(run_dir)
    return [_BUILDERS[name](cfg, run_dir, ids) for name in cfg.logging.loggers]


def start_logging(loggers: list[Logger], cfg: Any, run_dir: Path, hparams: dict[str, Any]) -> None:
    """Rank 0, before training: `hparams` to every logger, the resolved config besides to W&B and MLflow (which
    hold no run directory of their own to keep it in); the tracker runs' ids for a resume; where those runs are."""
    config = _flat(cfg.model_dump(mode="json"))
    ids: dict[str, Any] = {}
    for logger in loggers:
        if isinstance(logger, _WandbLogger):
            run = logger.start()
            logger.log_hyperparams({**config, **hparams})
            ids["wandb"] = {"id": run.id, "project": run.project}
            if run.settings.mode == "offline":
                where = Path(run.dir).parent
                log.info(f"wandb: offline run in {where}; upload it with `wandb sync {where}`")
            elif run.settings.mode != "disabled":
                log.info(f"wandb: {run.url}")
        elif isinstance(logger, _MLFlowLogger):
            logger.start({**config, **hparams})
            ids["mlflow"] = {"run_id": logger.run_id, "tracking_uri": logger.uri}
            log.info(f"mlflow: run {logger.run_id} of experiment '{logger.experiment_name}' at {logger.uri}")
        else:
            logger.log_hyperparams(hparams)
    if ids:
        (run_dir / IDS).write_text(json.dumps(ids, indent=2) + "\n")


def finish_logging(loggers: list[Logger]) -> None:
    """End the W&B and MLflow runs, after the final evaluation (which Lightning logs after fit has finalized its
    loggers, so they stay open until here)."""
    for logger in loggers:
        if isinstance(logger, _WandbLogger | _MLFlowLogger):
            logger.finish()


def _read_ids(run_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((run_dir / IDS).read_text()))
    except (OSError, ValueError):
        return {}


def _flat(value: Any, path: str = "") -> dict[str, Any]:
    """{'trainer.optimizer.lr': 1e-5, ...}: nested mappings as their YAML paths; lists stay values."""
    if not isinstance(value, dict):
        return {path: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flat(item, f"{path}.{key}" if path else str(key)))
    return out


# -- TensorBoard and CSV ---------------------------------------------------------------------------------------
def _tensorboard(cfg: Any, run_dir: Path, ids: dict[str, Any]) -> TensorBoardLogger:
    # <root>/<name>/<version>/events.*: `tensorboard --logdir <root>` shows every run, and compare copies them
    return TensorBoardLogger(
        save_dir=str(run_dir.parent.parent), name=run_dir.parent.name, version=run_dir.name, default_hp_metric=False
    )


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that a metrics.csv already there (a resumed run's) is continued: Lightning's
    deletes it, and with it every step before the resume."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            # its columns, so that save() appends under them (and rewrites the file once if new ones come)
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class _CSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.log_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def _csv(cfg: Any, run_dir: Path, ids: dict[str, Any]) -> CSVLogger:
    return _CSVLogger(save_dir=str(run_dir), name="", version=CSV_DIR)


# -- W&B -------------------------------------------------------------------------------------------------------
class _WandbLogger(WandbLogger):
    """Lightning's WandbLogger, whose run also ends: `finish` (Lightning leaves it open, so a second run in the
    same process would log into the first), or a failure, which marks it failed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Lightning 2.6 passes anonymous=None, which wandb (0.31 here) warns about on the terminal at every start
        self._wandb_init.pop("anonymous", None)

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status != "success" and self._experiment is not None:
            self._experiment.finish(exit_code=1)
            self._experiment = None

    def start(self) -> Any:
        """The W&B run, started; a W&B error that a setting fixes says which."""
        import wandb

        try:
            return self.experiment
        except wandb.errors.UsageError as e:  # online without `wandb login`, most often
            raise RunError(
                f"logging.loggers: W&B could not start the run ({e}); log in, or set logging.wandb.mode: offline "
                "to keep it in the run directory and upload it later with `wandb sync`"
            ) from e

    def finish(self) -> None:
        if self._experiment is not None:
            self._experiment.finish()
            self._experiment = None


def _wandb(cfg: Any, run_dir: Path, ids: dict[str, Any]) -> WandbLogger:
    import wandb
    from wandb.sdk.lib.runid import generate_id

    spec = cfg.logging.wandb or WandbSpec()
    before = ids.get("wandb", {})
    return _WandbLogger(
        name=run_name(run_dir),
        save_dir=str(run_dir),  # W&B writes <save_dir>/wandb/
        project=spec.project,
        entity=spec.entity,
        group=spec.group or cfg.name,
        tags=spec.tags or None,
        # the same W&B run when this run directory is resumed into the same project (Lightning passes resume=allow)
        id=before["id"] if before.get("project") == spec.project else generate_id(),
        # W&B's terminal lines go to its log, <run>/wandb/*/logs/debug.log, and it leaves the process's output
        # alone: the run's own log is train.log; alignkit prints where the W&B run is (start_logging)
        settings=wandb.Settings(silent=True, console="off"),
        **({"mode": spec.mode} if spec.mode else {}),  # unset: W&B's own rule (WANDB_MODE, else online)
    )


# -- MLflow ----------------------------------------------------------------------------------------------------
class _MLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger, whose run stays open through the final evaluation, which Lightning logs after
    fit has finalized its loggers; `finish` ends it, and a failure marks it failed at once."""

    def __init__(self, *, experiment_name: str, tracking_uri: str, **kwargs: Any) -> None:
        super().__init__(experiment_name=experiment_name, tracking_uri=tracking_uri, **kwargs)
        self.experiment_name, self.uri = experiment_name, tracking_uri

    def finalize(self, status: str = "success") -> None:
        if status != "success":
            super().finalize(status)

    def finish(self) -> None:
        super().finalize("success")

    def start(self, params: dict[str, Any]) -> None:
        """Start the run, or mark a resumed one running again, and log the parameters not logged before: a resumed
        run's config differs (checkpoint.resume, at least), and MLflow refuses to change a parameter; the resumed
        config is config.resume<k>.yaml in the run directory."""
        self.experiment.update_run(self.run_id, status="RUNNING")
        logged = self.experiment.get_run(self.run_id).data.params
        # MLflow's allowed characters in a name (word characters, - . space /); user-chosen keys may have others
        params = {re.sub(r"[^\w\-. /]", "_", k): v for k, v in params.items()}
        self.log_hyperparams({k: v for k, v in params.items() if k not in logged})


def _mlflow(cfg: Any, run_dir: Path, ids: dict[str, Any]) -> MLFlowLogger:
    spec = cfg.logging.mlflow or MLflowSpec()
    default = (Path(cfg.logging.root) / MLRUNS).resolve().as_uri()
    uri = spec.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 (3.17 here) refuses its directory store unless this is set; mlflow-skinny has no database store
        # (sqlalchemy), so the directory is the local store alignkit can count on. A user's `false` is kept.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    before = ids.get("mlflow", {})
    return _MLFlowLogger(
        experiment_name=spec.experiment or cfg.name,
        run_name=run_name(run_dir),
        tracking_uri=uri,
        run_id=before.get("run_id") if before.get("tracking_uri") == uri else None,
    )


_BUILDERS = {"tensorboard": _tensorboard, "csv": _csv, "wandb": _wandb, "mlflow": _mlflow}
