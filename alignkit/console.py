"""What a run shows and what it keeps: alignkit's own lines on the terminal, every record in `<run>/train.log`.

The terminal (rank zero only) gets alignkit's loggers at INFO and above, as plain lines fit for a pipe or a CI
log: a short header, one progress line every `trainer.log_every_n_steps` steps with the metrics its algorithm's
card names (`AlgorithmCard.progress`), eval results, alignkit's warnings (prefixed `warning:`), and any
library's errors. `train.log` gets all of that and everything else: Lightning's, transformers' and datasets'
logs, the model summary, and Python warnings, which stay off the terminal: those a run raises are libraries'
notes on set-ups alignkit chose on purpose. E.g. Lightning's ModelCheckpoint warning about manual
optimization says a checkpoint holds the weights after the optimizer step; that is the state to resume from,
since an online module steps its optimizer inside the iteration and the checkpoint follows the iteration.

Records logged before the run directory exists (config checks, data loading) are held in memory and written
into train.log when `open_log_file` is called. Other processes of a distributed run print nothing; each
writes its own `train.rank<N>.log`.
"""

from __future__ import annotations

import collections
import functools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
from lightning.pytorch.utilities.model_summary import summarize
from torch import Tensor

from alignkit.rundir import is_rank_zero

log = logging.getLogger(__name__)
LOG_FILE = "train.log"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Libraries that attach their own terminal handlers; during a run their records go to the root logger (the log
# file) instead. Levels: those the log file records, where a library's default would drop useful lines.
LIBRARIES = {
    "lightning": None,
    "lightning.pytorch": logging.INFO,
    "lightning.fabric": logging.INFO,
    "pytorch_lightning": None,
    "lightning_fabric": None,
    "transformers": logging.INFO,
    "datasets": logging.INFO,
    "huggingface_hub": None,
    "torch": None,
}
# the data kind of a batch row, in words, for the header
ROWS = {"completion": "sequences", "preference": "pairs", "unpaired": "examples", "prompt": "prompts"}


class _Buffer(logging.Handler):
    """Records held until the run directory exists (the newest `capacity`)."""

    def __init__(self, capacity: int = 50_000) -> None:
        super().__init__(logging.DEBUG)
        self.records: collections.deque[logging.LogRecord] = collections.deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _Terminal(logging.Handler):
    """alignkit's records at INFO and above, and other libraries' errors: info on stdout, warnings on stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "alignkit" or record.name.startswith("alignkit.")
        return record.levelno >= (logging.INFO if ours else logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            stream = sys.stdout
            if record.levelno >= logging.WARNING:
                stream, text = sys.stderr, f"{record.levelname.lower()}: {text}"
            if record.exc_info and record.levelno >= logging.ERROR:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            stream.write(text + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


class _Session:
    """The handlers and library settings of one run, and what to put back when it ends."""

    def __init__(self) -> None:
        self.buffer: _Buffer | None = _Buffer()
        self.file: logging.FileHandler | None = None
        self.terminal = _Terminal() if is_rank_zero() else None
        self.restore: list[Callable[[], None]] = []

    def start(self) -> None:
        root = logging.getLogger()
        for handler in (self.buffer, self.terminal):
            if handler is not None:
                root.addHandler(handler)
        self._progress_bars_off()  # imports datasets and transformers, which add their handlers on import
        self._set_level("alignkit", logging.DEBUG)
        for name, level in LIBRARIES.items():
            logger = logging.getLogger(name)
            handlers, propagate = list(logger.handlers), logger.propagate
            # only the handlers that write to the terminal go; a user's file handler stays
            for handler in handlers:
                if type(handler) is logging.StreamHandler:
                    logger.removeHandler(handler)
            logger.propagate = True
            if level is not None:
                self._set_level(name, level)
            self.restore.append(functools.partial(_put_back, logger, handlers, propagate))
        capturing = getattr(logging, "_warnings_showwarning", None) is not None
        logging.captureWarnings(True)
        self.restore.append(lambda: logging.captureWarnings(capturing))

    def _set_level(self, name: str, level: int) -> None:
        logger = logging.getLogger(name)
        self.restore.append(functools.partial(logger.setLevel, logger.level))
        logger.setLevel(level)

    def _progress_bars_off(self) -> None:
        """datasets' and transformers' tqdm bars (tokenizing, "Flattening the indices", "Writing model shards")."""
        import datasets
        from transformers.utils import logging as hf_logging

        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            self.restore.append(datasets.enable_progress_bars)
        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            self.restore.append(hf_logging.enable_progress_bar)

    def open_file(self, path: Path) -> None:
        if self.file is not None:
            return
        self.file = logging.FileHandler(path, encoding="utf-8")
        self.file.setFormatter(logging.Formatter(FILE_FORMAT))
        root = logging.getLogger()
        root.addHandler(self.file)
        if self.buffer is not None:
            root.removeHandler(self.buffer)
            for record in self.buffer.records:
                self.file.handle(record)
            self.buffer = None

    def close(self) -> None:
        root = logging.getLogger()
        for handler in (self.buffer, self.terminal, self.file):
            if handler is not None:
                root.removeHandler(handler)
                handler.close()
        for undo in reversed(self.restore):
            undo()


def _put_back(logger: logging.Logger, handlers: list[logging.Handler], propagate: bool) -> None:
    for handler in handlers:
        if handler not in logger.handlers:
            logger.addHandler(handler)
    logger.propagate = propagate


_session: _Session | None = None
F = TypeVar("F", bound=Callable[..., Any])


def with_run_output(fn: F) -> F:
    """Run `fn` (alignkit.run.run, or a comparison's evaluation) with the terminal and log-file set-up above,
    put back when it returns."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _session
        if _session is not None:  # already inside a run
            return fn(*args, **kwargs)
        _session = _Session()
        _session.start()
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            log.debug("the run stopped with an error", exc_info=True)
            raise
        else:
            if hasattr(result, "global_step"):
                log.debug(f"run finished at step {result.global_step}; final metrics: {result.metrics}")
            return result
        finally:
            _session.close()
            _session = None

    return wrapper  # type: ignore[return-value]


def open_log_file(run_dir: Path, rank: int = 0, name: str = LOG_FILE) -> None:
    """Write this run's records, those held so far included, to run_dir/train.log (train.rank<N>.log on other
    ranks, or `name`); a no-op outside `with_run_output` or when the file is already open."""
    if _session is not None:
        _session.open_file(run_dir / (name if rank == 0 else f"{Path(name).stem}.rank{rank}.log"))


# -- the lines of a training run --------------------------------------------------------------------------------
def count(n: int) -> str:
    """107K, 1.2M, 7.0B: a parameter count in 3 or 4 characters."""
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= limit:
            return f"{n / limit:.1f}{suffix}" if n < 10 * limit else f"{n / limit:.0f}{suffix}"
    return str(n)


def duration(seconds: float) -> str:
    """42s, 3m05s, 1h02m."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def metric_text(values: dict[str, float], pad: bool = False) -> str:
    """`loss 0.811  ppl 2.251`: 4 significant digits; padded, successive lines stay in columns."""
    if pad:
        return " ".join(f"{k} {v:<8.4g}" for k, v in values.items())
    return "  ".join(f"{k} {v:.4g}" for k, v in values.items())


class ProgressLines(L.Callback):
    """The header, a line per logged step with the algorithm's metrics (its card's `progress`), eval results.

    Train metrics are averaged over the micro-batches and steps since the previous line; s/step leaves out
    the time spent evaluating. With `logging.progress_bar: false` the step lines go to train.log only.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.metrics: tuple[str, ...] = ()
        self.level = logging.INFO
        self.updates, self.every, self.total = 1, 1, 0
        self._step = self._start_step = 0
        self._t0 = self._last_t = self._eval_t = 0.0
        self._eval_s = 0.0  # time spent evaluating since the last line, left out of its s/step
        self._last_step = 0
        self._seen: Any = None
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, int] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # under torchrun every rank resolved a directory of its own; the log files go where rank 0's run is
        run_dir = Path(trainer.strategy.broadcast(str(self.run_dir)))
        open_log_file(run_dir, trainer.global_rank)
        if stage != "fit":
            return
        cfg = pl_module.cfg
        self.metrics = pl_module.card.progress
        self.level = logging.INFO if cfg.logging.progress_bar else logging.DEBUG
        self.updates = cfg.algorithm.updates_per_step()
        self.every = cfg.trainer.log_every_n_steps
        if trainer.is_global_zero:
            log.debug(f"model summary:\n{summarize(pl_module, max_depth=2)}")
            for line in header(trainer, pl_module, run_dir):
                log.info(line)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        t = pl_module.cfg.trainer
        # steps as the config counts them: optimizer steps, or iterations for online algorithms
        self.total = t.max_steps or int(trainer.estimated_stepping_batches)
        self._step = self._start_step = self._last_step = trainer.global_step // self.updates
        self._t0 = self._last_t = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        metrics = getattr(pl_module, "step_metrics", None)  # AlignModule.log_split: this batch's train metrics
        if metrics is not None and metrics is not self._seen:
            self._seen = metrics
            for key in self.metrics:
                if key in metrics:  # summed as tensors: no device sync before the line is printed
                    value = metrics[key]
                    value = value.detach().float() if isinstance(value, Tensor) else float(value)
                    self._sums[key] = self._sums.get(key, 0.0) + value
                    self._counts[key] = self._counts.get(key, 0) + 1
        step = trainer.global_step // self.updates
        if step == self._step:  # accumulating: no optimizer step yet
            return
        self._step = step
        if step % self.every and step != self.total:
            return
        now = time.perf_counter()
        values = {k: float(self._sums[k]) / self._counts[k] for k in self.metrics if k in self._sums}
        per_step = (now - self._last_t - self._eval_s) / max(step - self._last_step, 1)
        eta = (self.total - step) * (now - self._t0) / max(step - self._start_step, 1)
        width = len(str(self.total))
        if trainer.is_global_zero:
            log.log(
                self.level,
                f"step {step:>{width}}/{self.total}  {metric_text(values, pad=True)} | {per_step:.2f} s/step, "
                f"eta {duration(eta)}",
            )
        self._sums, self._counts = {}, {}
        self._last_t, self._last_step, self._eval_s = now, step, 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_t = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        found = trainer.callback_metrics
        values = {k: float(found[f"eval/{k}"]) for k in self.metrics if f"eval/{k}" in found}
        if not values:  # the algorithm's progress metrics are train-only: show what eval logged
            values = {k.removeprefix("eval/"): float(v) for k, v in found.items() if k.startswith("eval/")}
        step = trainer.global_step // self.updates
        took = time.perf_counter() - self._eval_t
        self._eval_s += took
        log.info(f"eval at step {step}: {metric_text(values)}  ({duration(took)})")


def header(trainer: L.Trainer, module: Any, run_dir: Path) -> list[str]:
    """What runs, on what, from what data, and where it goes: four lines."""
    cfg, card = module.cfg, module.card
    t, algo = cfg.trainer, cfg.algorithm
    rows = ROWS.get(card.records or "", "rows")
    batch = f"{t.prompts_per_step} {rows}"
    if card.records == "prompt":
        batch += f" x {algo.samples_per_prompt} samples"
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.max_epochs} epoch(s)"
    world = trainer.world_size
    device = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
    where = f"{world} {device} process{'es' if world > 1 else ''}"
    if world > 1:
        where += f" ({cfg.hardware.strategy})"
    if str(trainer.precision) != "32-true":
        where += f", precision {trainer.precision}"
    models = []
    for section in card.models:
        model = getattr(module, section, None)
        if model is None:
            continue
        if getattr(model, "alignkit_adapters_off", False):
            models.append(f"{section} (the policy with its adapters off)")
            continue
        n = sum(p.numel() for p in model.parameters())
        trains = sum(p.numel() for p in model.parameters() if p.requires_grad)
        state = "trained" if section in card.trained else "frozen"
        if section in card.trained and trains < n:  # LoRA adapters: what trains of it
            state = f"{count(trains)} trained in adapters"
        kind = f"{cfg.reward.source.kind}, " if section == "reward" else ""
        models.append(f"{section} ({kind}{count(n)} params, {state})" if n else f"{section} ({kind.rstrip(', ')})")
    data = trainer.datamodule
    sizes = [len(s) for s in (getattr(data, "train_set", None), getattr(data, "eval_set", None)) if s is not None]
    data_line = f"{sizes[0]:,} train" + (f" and {sizes[1]:,} eval" if len(sizes) > 1 else "") + f" {rows}"
    resumed = f"; resuming from {trainer.ckpt_path}" if trainer.ckpt_path else ""
    what = algo.name if cfg.name == algo.name else f"{cfg.name} ({algo.name})"
    return [
        f"{what}: {length} of {batch}, on {where}",
        f"  models: {', '.join(models)}",
        f"  data: {data_line}",
        f"  run directory: {run_dir} (full log: {LOG_FILE}){resumed}",
    ]
