"""The one place config turns into objects: run directory, models, data, algorithm, Trainer.fit, export."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from alignkit.algorithms import ALGORITHMS
from alignkit.algorithms.base import AlignModule
from alignkit.callbacks import PerfMonitor, RandomState, SaveOnException, process_peak_memory
from alignkit.checkpoints import LAST, AtomicCheckpointIO, checkpoint_problem, pick_checkpoint, remove_stale_temporaries
from alignkit.console import ProgressLines, open_log_file, with_run_output
from alignkit.data import Collator, build_datasets
from alignkit.data.loader import ResumableLoader, ShardedSampler
from alignkit.hardware import trainer_kwargs
from alignkit.loggers import build_loggers, finish_logging, start_logging
from alignkit.models import build_causal_lm, build_scalar_model, load_tokenizer, save_hf
from alignkit.models.lora import AdaptersOff, apply_lora, export_lora, peft_model, unsharded_copy
from alignkit.rewards import build_reward
from alignkit.rundir import RunError, is_rank_zero, next_version, read_status, versions, write_status

# A process started by Lightning's launcher for ranks > 0 re-runs the same command; these tell it which
# run directory and checkpoint rank 0 chose, so that it does not pick a new version.
_ENV_RUN_DIR, _ENV_CKPT = "ALIGNKIT_RUN_DIR", "ALIGNKIT_RESUME_CKPT"
CAUSAL_SECTIONS, SCALAR_SECTIONS = ("policy", "reference"), ("critic", "reward_model")


@dataclass
class RunResult:
    run_dir: Path
    exports: dict[str, Path]
    metrics: dict[str, float]
    global_step: int


def resolve_run_dir(cfg: Any) -> tuple[Path, Path | None]:
    """(run directory, checkpoint to resume from or None). A finished or existing run is never overwritten."""
    if os.environ.get(_ENV_RUN_DIR) and not is_rank_zero():
        ckpt = os.environ.get(_ENV_CKPT)
        return Path(os.environ[_ENV_RUN_DIR]), Path(ckpt) if ckpt else None
    root = Path(cfg.logging.root) / cfg.name
    resume = cfg.checkpoint.resume
    if resume == "auto":
        # the newest unfinished run with a checkpoint that passes the checks (a bad one is skipped, with a warning)
        for run in reversed(versions(root)):
            if read_status(run) != "finished" and (found := pick_checkpoint(run / "checkpoints")) is not None:
                return run, found
    elif resume != "none":
        ckpt = Path(resume)
        if not ckpt.exists() and ckpt.name != LAST:
            raise RunError(f"checkpoint.resume: {ckpt} does not exist; give a .ckpt path, 'auto' or 'none'")
        run = ckpt.parent.parent
        if ckpt.parent.name == "checkpoints" and read_status(run) != "finished":
            # continuing an unfinished run in place: its newest trustworthy checkpoint from `ckpt` down
            found = pick_checkpoint(ckpt.parent, first=ckpt)
            if found is None:
                raise RunError(
                    f"checkpoint.resume: neither {ckpt} nor an earlier checkpoint of {run} can be read intact; "
                    "start afresh with checkpoint.resume=none"
                )
            return run, found
        if (problem := checkpoint_problem(ckpt)) is not None:
            raise RunError(f"checkpoint.resume: {ckpt} is {problem}; give another checkpoint, 'auto' or 'none'")
        return _new_run_dir(cfg, root), ckpt
    return _new_run_dir(cfg, root), None


def _new_run_dir(cfg: Any, root: Path) -> Path:
    if cfg.logging.version:
        run = root / cfg.logging.version
        if run.exists() and is_rank_zero():  # other ranks (other nodes) join the directory rank 0 makes
            raise RunError(
                f"{run} exists and runs are never overwritten: set another logging.version, leave it unset for "
                "the next free version_N, or continue it with checkpoint.resume=auto"
            )
        return run
    return next_version(root)


def environment() -> dict[str, Any]:
    """Library versions, git commit and command line, written beside every run."""
    libs = ["alignkit", "torch", "lightning", "transformers", "datasets", "pydantic", "omegaconf", "tokenizers"]
    found = {}
    for lib in libs:
        try:
            found[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            found[lib] = None
    git: dict[str, Any] = {}
    try:
        here = Path(__file__).resolve().parent
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            git = {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "versions": found,
        "git": git or None,
        "python": platform.python_version(),
        "host": platform.node(),
        "argv": sys.argv,
    }


def run_tokenizer(cfg: Any, algorithm: type[AlignModule]) -> Any:
    """The tokenizer of the run: that of its first model section (the policy, or the reward model it trains)."""
    sections = [s for s in algorithm.card.models if s != "reward" and getattr(cfg, s) is not None]
    return load_tokenizer(getattr(cfg, sections[0]))


def build_models(cfg: Any, algorithm: type[AlignModule], tokenizer: Any = None) -> tuple[dict[str, nn.Module], Any]:
    """The models an algorithm uses, from their sections; a missing `reference` is a copy of the policy, or the
    policy with its adapters off when it trains LoRA adapters."""
    tokenizer = tokenizer if tokenizer is not None else run_tokenizer(cfg, algorithm)
    models: dict[str, nn.Module] = {}
    # each adapted section's spec: its own, or the policy's for a section left out
    adapters = {s: getattr(cfg, s) or cfg.policy for s in adapted_sections(cfg)}
    for section in algorithm.card.models:
        if section == "reward":  # the reward function (rules and frozen reward models), alignkit.rewards
            models[section] = build_reward(cfg.reward, tokenizer)
            continue
        spec = getattr(cfg, section)
        if spec is None:
            if section == "reference" and section in adapters:
                continue  # the policy with its adapters off, once they are on (below)
            default = algorithm.build_default(section, cfg, models, tokenizer)
            if default is not None:
                models[section] = default
            continue
        build = build_causal_lm if section in CAUSAL_SECTIONS else build_scalar_model
        models[section] = build(spec, tokenizer)
    # adapters go on once every default is built: PPO's critic starts from the policy's weights, before them
    for section, spec in adapters.items():
        if section == "reference":
            models[section] = AdaptersOff(models["policy"])
        elif section in models:
            scalar = section in SCALAR_SECTIONS
            models[section] = apply_lora(models[section], spec.lora, scalar=scalar, seed=spec.init_seed)
    if "reference" in models and "policy" in models:
        # log-ratios compare the two models token by token, so they must share one vocabulary
        sizes = {s: models[s].get_input_embeddings().num_embeddings for s in ("policy", "reference")}
        if sizes["policy"] != sizes["reference"]:
            raise RunError(
                f"reference: its vocabulary has {sizes['reference']} tokens, the policy's {sizes['policy']}; "
                "the reference must use the policy's tokenizer (leave the reference section out to use a "
                "copy of the policy)"
            )
    return models, tokenizer


def adapted_sections(cfg: Any) -> list[str]:
    """The model sections that train LoRA adapters ("reference": the policy with its adapters off; a critic left
    out takes the policy's adapters, as it takes the policy's weights)."""
    algorithm = ALGORITHMS.get(cfg.algorithm.name)
    policy_lora = cfg.policy is not None and cfg.policy.lora is not None
    found = [s for s in algorithm.trained if getattr(cfg, s, None) is not None and getattr(cfg, s).lora is not None]
    if policy_lora and "critic" in algorithm.trained and cfg.critic is None:
        found.append("critic")
    if policy_lora and "reference" in algorithm.models and cfg.reference is None:
        found.append("reference")
    return found


class AlignData(L.LightningDataModule):
    """Tokenized train/eval sets, batched per device with a resumable, rank-aware shuffle."""

    def __init__(self, train: Any, eval_set: Any, collator: Collator, micro_batch_size: int, seed: int) -> None:
        super().__init__()
        self.train_set, self.eval_set = train, eval_set
        self.collator, self.micro_batch_size, self.seed = collator, micro_batch_size, seed

    def _loader(self, dataset: Any, shuffle: bool) -> ResumableLoader:
        sampler = ShardedSampler(
            len(dataset), rank=self.trainer.global_rank, world=self.trainer.world_size, seed=self.seed, shuffle=shuffle
        )
        return ResumableLoader(dataset, sampler, self.micro_batch_size, collate_fn=self.collator)

    def train_dataloader(self) -> ResumableLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> Any:
        return self._loader(self.eval_set, shuffle=False) if self.eval_set is not None else []


def _export(module: AlignModule, trainer: L.Trainer, run_dir: Path) -> dict[str, Path]:
    """Hugging Face format (safetensors + tokenizer) of every trained model, under <run>/hf/<section>/."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    exports = {}
    for section in module.card.trained:
        model, out = getattr(module, section), run_dir / "hf" / section
        full = None
        if isinstance(trainer.strategy, ModelParallelStrategy):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            # every rank takes part in gathering the shards; rank 0 writes
            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if trainer.is_global_zero and peft_model(model) is not None:
            # merged at out/ and the adapter beside it; sharded weights are merged in an unsharded copy
            if full is not None:
                model = unsharded_copy(model)
            export_lora(model, module.tokenizer, out, out.with_name(f"{section}_adapter"), state_dict=full)
            exports[f"{section}_adapter"] = out.with_name(f"{section}_adapter")
        elif trainer.is_global_zero and full is not None:
            model.save_pretrained(out, state_dict=full, safe_serialization=True)
            module.tokenizer.save_pretrained(out)
        elif trainer.is_global_zero:
            save_hf(model, module.tokenizer, out)
        exports[section] = out
    trainer.strategy.barrier()
    return exports


@with_run_output  # alignkit's lines on the terminal, everything in <run>/train.log (alignkit/console.py)
def run(cfg: Any) -> RunResult:
    """Train one validated ExperimentConfig end to end; returns where everything went."""
    algorithm = ALGORITHMS.get(cfg.algorithm.name).load()
    run_dir, ckpt = resolve_run_dir(cfg)
    rank_zero = is_rank_zero()
    hw = trainer_kwargs(cfg.hardware)  # checked before anything is written
    launch = getattr(algorithm, "launch", None)  # a study: many small fits of its own (algorithms/bandit_study.py)
    # The data is read, checked row by row and tokenized before anything is written: a bad file or row
    # stops the run here, with its path and row number, and leaves no run directory behind.
    loaded = None if launch is not None else _load_data(cfg, algorithm)
    started = time.time()
    if rank_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        open_log_file(run_dir)  # with what was logged before the directory existed
        if ckpt is not None:
            remove_stale_temporaries(run_dir / "checkpoints")
        resolved = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        name = (
            "config.yaml"
            if not (run_dir / "config.yaml").exists()
            else f"config.resume{len(list(run_dir.glob('config*.yaml')))}.yaml"
        )
        (run_dir / name).write_text(resolved)
        (run_dir / "environment.json").write_text(json.dumps(environment(), indent=2) + "\n")
        write_status(run_dir, "running", started=started, resumed_from=str(ckpt) if ckpt else None)
        os.environ[_ENV_RUN_DIR] = str(run_dir)
        os.environ[_ENV_CKPT] = str(ckpt) if ckpt else ""
    try:
        if launch is not None:
            result = RunResult(run_dir=run_dir, exports={}, metrics=launch(cfg, run_dir), global_step=0)
        else:
            assert loaded is not None
            result = _fit(cfg, algorithm, hw, run_dir, ckpt, *loaded)
    except BaseException as exc:
        if rank_zero:
            write_status(run_dir, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        if rank_zero:
            os.environ.pop(_ENV_RUN_DIR, None)
            os.environ.pop(_ENV_CKPT, None)
    if rank_zero:
        # wall time and peak memory of this process (rank 0); a resumed run counts its last part only
        write_status(
            run_dir,
            "finished",
            global_step=result.global_step,
            started=started,
            resumed_from=str(ckpt) if ckpt else None,
            wall_time_s=time.time() - started,
            **process_peak_memory(),
            metrics=result.metrics,
        )
    return result


def _load_data(cfg: Any, algorithm: type[AlignModule]) -> tuple[Any, tuple[Any, Any]]:
    """(tokenizer, (train, eval)): the run's records loaded, checked and tokenized."""
    tokenizer = run_tokenizer(cfg, algorithm)
    return tokenizer, build_datasets(cfg.data, algorithm.record_kind(cfg), tokenizer, seed=cfg.trainer.seed)


def _fit(
    cfg: Any,
    algorithm: type[AlignModule],
    hw: dict[str, Any],
    run_dir: Path,
    ckpt: Path | None,
    tokenizer: Any,
    loaded: tuple[Any, Any],
) -> RunResult:
    t = cfg.trainer
    L.seed_everything(t.seed, workers=True, verbose=False)
    models, tokenizer = build_models(cfg, algorithm, tokenizer)
    module = algorithm(cfg, models, tokenizer)
    train_set, eval_set = module.prepare_datasets(*loaded)  # now in the `records` kind the batches hold
    # each row's position in its set, for caches keyed by row (precomputed reference log-probs)
    train_set, eval_set = (
        None if ds is None else ds.add_column("index", list(range(len(ds)))) for ds in (train_set, eval_set)
    )
    world = hw["devices"] * hw["num_nodes"]
    if t.prompts_per_step % (t.micro_batch_size * world):
        raise RunError(
            f"trainer.prompts_per_step ({t.prompts_per_step}) must be a multiple of micro_batch_size x world size "
            f"({t.micro_batch_size} x {world})"
        )
    steps_itself = not module.automatic_optimization
    # An online iteration (or a step split to a token budget) takes a rank's whole share of prompts and steps the
    # optimizer itself (an online one several times: `updates`), so Lightning neither accumulates nor clips;
    # step counts convert to optimizer steps.
    accumulate = 1 if steps_itself else t.prompts_per_step // (t.micro_batch_size * world)
    updates = cfg.algorithm.updates_per_step()
    batch_size = t.prompts_per_step // world if steps_itself else t.micro_batch_size
    data = AlignData(train_set, eval_set, Collator(algorithm.card.records, tokenizer.pad_token_id), batch_size, t.seed)
    loggers = build_loggers(cfg, run_dir)  # logging.loggers (alignkit/loggers.py)
    every = cfg.checkpoint.every_n_steps
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step{step:06d}",
        auto_insert_metric_name=False,
        every_n_train_steps=every * updates if every else every,
        save_top_k=cfg.checkpoint.keep if every else 0,
        monitor="step" if every else None,
        mode="max",
        save_last=True,
    )
    has_eval = eval_set is not None
    trainer = L.Trainer(
        **hw,
        max_steps=t.max_steps * updates if t.max_steps else -1,
        max_epochs=t.max_epochs or (-1 if t.max_steps else 1),
        accumulate_grad_batches=accumulate,
        gradient_clip_val=None if steps_itself else t.gradient_clip_val,
        logger=loggers,
        callbacks=[
            checkpoints,
            SaveOnException(run_dir / "checkpoints" / "on_exception.ckpt"),
            PerfMonitor(),
            RandomState(),
            ProgressLines(run_dir),
        ],
        plugins=[AtomicCheckpointIO()],
        val_check_interval=t.eval_every_n_steps * accumulate if (has_eval and t.eval_every_n_steps) else None,
        check_val_every_n_epoch=None if t.eval_every_n_steps else 1,
        limit_val_batches=(t.limit_eval_batches or 1.0) if has_eval else 0,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=False,  # plain progress lines instead (ProgressLines, logging.progress_bar)
        enable_model_summary=False,  # the summary goes to train.log
        num_sanity_val_steps=0,
        deterministic=t.deterministic,
        use_distributed_sampler=False,  # ShardedSampler splits the data across ranks itself
        default_root_dir=str(run_dir),
    )
    if trainer.is_global_zero:
        hparams = {"algorithm": cfg.algorithm.name, "seed": t.seed, "accumulate": accumulate}
        start_logging(loggers, cfg, run_dir, hparams)  # and the resolved config to W&B and MLflow
    # alignkit's checkpoints hold tensors, numbers and strings only: loaded without unpickling code
    trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if has_eval and module.last_eval_step != trainer.global_step:
        # the final model is always evaluated (validate() replaces the callback metrics, hence the merge)
        trainer.validate(module, datamodule=data, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
    if trainer.is_global_zero:
        finish_logging(loggers)
    exports = _export(module, trainer, run_dir) if cfg.checkpoint.export_hf else {}
    # steps as the config counts them: optimizer steps, or iterations for online algorithms
    return RunResult(run_dir=run_dir, exports=exports, metrics=metrics, global_step=trainer.global_step // updates)
