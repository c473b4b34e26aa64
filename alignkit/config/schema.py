"""The experiment schema: every section's spec, and ExperimentConfig assembled from the algorithm registry."""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model, field_validator, model_validator

from alignkit.algorithms import ALGORITHMS
from alignkit.config.base import Spec
from alignkit.data.spec import DataSpec
from alignkit.models.spec import ModelSpec
from alignkit.rewards.spec import RewardSpec
from alignkit.rollout import ENGINES

MODEL_SECTIONS = ("policy", "reference", "critic", "reward_model")


def _batch_fix(prompts_per_step: int, micro_batch_size: int, world: int = 1) -> str:
    """'e.g. set prompts_per_step to 16 or micro_batch_size to 4': the nearest sizes that divide."""
    step = micro_batch_size * world
    fix = f"e.g. set prompts_per_step to {step * max(1, round(prompts_per_step / step))}"
    # the largest micro batch m <= micro_batch_size with m x world dividing prompts_per_step, searched through
    # the small divisors of prompts_per_step / world and their cofactors (bounded, whatever the sizes)
    per_device, rest = divmod(prompts_per_step, world)
    small = [d for d in range(1, min(math.isqrt(per_device), 100_000) + 1) if not rest and per_device % d == 0]
    fits = [m for d in small for m in (d, per_device // d) if m <= micro_batch_size]
    return fix + (f" or micro_batch_size to {max(fits)}" if fits else "")


class OptimizerSpec(Spec):
    name: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Optimizer (torch.optim).")
    lr: float = Field(1e-5, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay (adamw) or L2 (adam, sgd).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas.")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon.")
    momentum: float = Field(0.0, ge=0, description="SGD momentum.")


class SchedulerSpec(Spec):
    name: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule over the run (transformers.get_scheduler)."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps (optimizer steps).")
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Warm-up as a share of all steps; exclusive with warmup_steps."
    )

    @model_validator(mode="after")
    def _one_warmup(self) -> SchedulerSpec:
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError(
                f"warmup_ratio: set warmup_steps or warmup_ratio, not both (got warmup_steps={self.warmup_steps}, "
                f"warmup_ratio={self.warmup_ratio})"
            )
        return self


class TrainerSpec(Spec):
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps to train for; overrides max_epochs.")
    max_epochs: int | None = Field(None, gt=0, description="Passes over the training data (1 when neither is set).")
    prompts_per_step: int = Field(
        8, gt=0, description="Global batch: prompts (or pairs, or examples) per optimizer step, over all devices."
    )
    micro_batch_size: int = Field(
        8,
        gt=0,
        description="Per-device batch of one forward pass; accumulation = prompts_per_step / (micro * devices).",
    )
    max_tokens_per_micro_batch: int | None = Field(
        None,
        gt=0,
        description="Fill each forward to this many tokens instead of micro_batch_size rows: a step's rows, longest "
        "first, in micro-batches costing at most this (rows x longest, or the sum of lengths with padding_free), "
        "each weighted by its share of the step, so the loss is that of the whole step at once "
        "(alignkit/ops/budget.py). Offline algorithms, and the scoring and updates of online ones.",
    )
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="Optimizer.")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec, description="Learning-rate schedule.")
    gradient_clip_val: float | None = Field(1.0, gt=0, description="Clip the global gradient norm to this; null = off.")
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="Seed for data order, sampling and anything random in training."
    )
    chunked_logprobs: bool = Field(
        True,
        description="Log-probs through the LM head in chunks, completion positions only, never the [tokens x "
        "vocabulary] logits (alignkit/ops/lm_head.py); false: the plain logits path, the reference it is tested "
        "equal to (for measuring what it saves).",
    )
    padding_free: Literal["auto"] | bool = Field(
        "auto",
        description="Each forward's sequences concatenated into one row, position ids restarting per sequence and no "
        "padding computed (alignkit/ops/layout.py); the same numbers as padded rows. 'auto': on where the attention "
        "kernel is varlen (flash_attention_2), off with sdpa and eager, whose packed row has a dense [N x N] mask "
        "(benchmarks/memory_ladder.py measures both on your model).",
    )
    shared_prompts: bool = Field(
        False,
        description="Sequences that share a prompt are scored as one: a DPO or reward-model pair as [prompt, chosen, "
        "rejected], an online group as [prompt, G responses], each response seeing the prompt and itself only "
        "(a 4-D attention mask: sdpa or eager). The same numbers; the prompt's tokens run once.",
    )
    deterministic: bool = Field(
        False,
        description="torch's deterministic algorithms (through Lightning): the same seed on the same machine and "
        "software gives the same weights. Another CPU or GPU model still rounds differently: compare with seeds.",
    )
    disable_dropout: bool = Field(
        True,
        description="Set the dropout of the trained models to 0 (their nn.Dropout modules and attention dropout; not "
        "LoRA's own `lora.dropout`), as TRL does for its preference and RL trainers: with dropout, the policy's "
        "log-probs and those of its reference or old self differ by noise. false: each model's own dropout.",
    )
    eval_every_n_steps: int | None = Field(
        None, gt=0, description="Evaluate on the held-out split every N optimizer steps (default: each epoch end)."
    )
    limit_eval_batches: int | None = Field(None, gt=0, description="Evaluate on at most this many batches.")
    log_every_n_steps: int = Field(5, gt=0, description="Log training metrics every N optimizer steps.")

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainerSpec:
        if self.prompts_per_step % self.micro_batch_size:
            # "key: message" lines are reported at trainer.<key> (see errors.split_problems)
            raise ValueError(
                f"prompts_per_step: must be a multiple of micro_batch_size ({self.micro_batch_size}) "
                f"(got {self.prompts_per_step}); "
                f"{_batch_fix(self.prompts_per_step, self.micro_batch_size)}"
            )
        return self


class FSDPSpec(Spec):
    cpu_offload: bool = Field(False, description="Keep sharded parameters and optimizer state in CPU memory.")
    reshard_after_forward: bool = Field(
        True, description="Free gathered parameters after forward (ZeRO-3); false = ZeRO-2."
    )


class HardwareSpec(Spec):
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field("auto", description="Device kind.")
    devices: int | Literal["auto"] = Field(1, description="Devices (processes) per node; 'auto' = all visible.")
    num_nodes: int = Field(1, gt=0, description="Machines; launched by torchrun or SLURM, as Lightning does.")
    strategy: Literal["auto", "single", "ddp", "fsdp"] = Field(
        "auto", description="single device, DDP, or FSDP2 (fully_shard) through Lightning's ModelParallelStrategy."
    )
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"] = Field(
        "32-true", description="Numeric precision (Lightning's names)."
    )
    activation_checkpointing: bool = Field(
        False,
        description="Recompute each transformer block's activations in backward instead of keeping them "
        "(non-reentrant), for the models a run trains, under every strategy: less memory, about one more forward.",
    )
    fsdp: FSDPSpec = Field(default_factory=FSDPSpec, description="FSDP2 options (strategy: fsdp only).")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        fsdp = data.get("fsdp") if isinstance(data, dict) else None
        if isinstance(fsdp, dict) and "activation_checkpointing" in fsdp:
            raise ValueError(
                "fsdp.activation_checkpointing: moved to hardware.activation_checkpointing, which applies under "
                "every strategy; write `hardware: {activation_checkpointing: true}`"
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> HardwareSpec:
        if isinstance(self.devices, int) and self.devices < 1:
            raise ValueError(f"devices: must be at least 1 (got {self.devices})")
        if self.strategy == "single" and (self.devices != 1 or self.num_nodes != 1):
            raise ValueError(
                f"strategy: 'single' runs on one device (got devices={self.devices}, num_nodes={self.num_nodes}); "
                "set devices: 1 and num_nodes: 1, or strategy: ddp"
            )
        if self.strategy == "fsdp" and self.precision == "16-mixed":
            raise ValueError(
                "precision: strategy 'fsdp' supports 32-true, bf16-mixed or bf16-true (got 16-mixed); use bf16-mixed"
            )
        if self.fsdp.cpu_offload and self.accelerator == "cpu":
            raise ValueError(
                "fsdp.cpu_offload: moves sharded parameters from GPU to CPU memory, so it needs accelerator: gpu "
                "(got accelerator: cpu); set cpu_offload: false"
            )
        return self

    def world_size(self) -> int | None:
        return None if self.devices == "auto" else self.devices * self.num_nodes


# trackers that are optional extras: the module each needs (looked up without importing it: validation stays fast)
_TRACKER_MODULES = {"wandb": "wandb", "mlflow": "mlflow"}


class WandbSpec(Spec):
    project: str = Field("alignkit", description="W&B project the run goes to.")
    entity: str | None = Field(None, description="W&B team or user; default: W&B's (WANDB_ENTITY, else your own).")
    group: str | None = Field(
        None,
        description="W&B group, whose runs the UI can average; default the experiment's name (a pipeline stage's "
        "name), so its seeds and versions group together.",
    )
    tags: list[str] = Field(default_factory=list, description="Tags on the W&B run.")
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None,
        description="online: synced as it trains (needs `wandb login`); offline: written under <run>/wandb/ only, "
        "uploaded later with `wandb sync`; disabled: nothing. Default: W&B's own (WANDB_MODE, else online).",
    )


class MLflowSpec(Spec):
    tracking_uri: str | None = Field(
        None,
        description="Where MLflow records runs: a server (http://host:5000), a database (sqlite:///mlflow.db) or a "
        "directory (file:/path/mlruns). Default: MLFLOW_TRACKING_URI, else the directory <logging.root>/mlruns "
        "(view with `mlflow ui --backend-store-uri <logging.root>/mlruns`).",
    )
    experiment: str | None = Field(None, description="MLflow experiment of the run; default the experiment's name.")


class LoggingSpec(Spec):
    root: str = Field("runs", description="Runs go to <root>/<name>/<version>/.")
    version: str | None = Field(None, description="Run version directory; default the next free version_N.")
    progress_bar: bool = Field(
        True,
        description="Print a progress line every trainer.log_every_n_steps steps: the algorithm's main metrics, "
        "s/step and ETA (false: to train.log only; the header, eval results and warnings still print).",
    )
    loggers: list[Literal["tensorboard", "csv", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Trackers the metrics go to, Lightning's loggers: tensorboard (event files in the run "
        "directory; `alignkit compare` copies them beside its own curves), csv (<run>/csv/metrics.csv), wandb "
        "(pip install 'alignkit[wandb]'; see logging.wandb), mlflow (pip install 'alignkit[mlflow]'; see "
        "logging.mlflow). Each W&B and MLflow run is named <name>/<version> and gets the resolved config as "
        "parameters; a resumed run continues the same one. A study (bandit_study) writes TensorBoard runs only.",
    )
    wandb: WandbSpec | None = Field(None, description="W&B settings (with wandb in logging.loggers).")
    mlflow: MLflowSpec | None = Field(None, description="MLflow settings (with mlflow in logging.loggers).")

    @model_validator(mode="after")
    def _trackers(self) -> LoggingSpec:
        problems = []
        twice = sorted({name for name in self.loggers if self.loggers.count(name) > 1})
        if twice:
            problems.append(
                f"loggers: {', '.join(repr(n) for n in twice)} listed more than once (got {self.loggers}); "
                "list each logger once"
            )
        for name, module in _TRACKER_MODULES.items():
            if name in self.loggers and importlib.util.find_spec(module) is None:
                problems.append(
                    f"loggers: '{name}' needs the {module} package, which is not installed; "
                    f"pip install 'alignkit[{name}]', or remove {name} from logging.loggers"
                )
            if getattr(self, name) is not None and name not in self.loggers:
                problems.append(
                    f"{name}: settings for a logger that is off (logging.loggers is {self.loggers}); add {name} to "
                    f"logging.loggers, or remove logging.{name}"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self


class RolloutSpec(Spec):
    engine: str = Field(
        "builtin",
        description="What samples the online algorithms' responses (training, evaluation, compare): builtin "
        "(alignkit's sampler: one prefill per prompt for its samples, a preallocated KV cache, finished rows leave "
        "the batch) or hf (transformers' generate, for models the builtin one cannot run).",
    )
    compile: Literal["auto"] | bool = Field(
        "auto",
        description="builtin: run each decode step as a compiled static-shape graph (torch.compile, CUDA graphs on "
        "GPU; live rows padded to power-of-two buckets), its KV cache kept allocated between iterations. auto: on "
        "CUDA, for models FSDP does not shard (their forward all-gathers parameters, which a captured graph cannot "
        "hold).",
    )
    reuse_logprobs: Literal["auto"] | bool = Field(
        "auto",
        description="Use the engine's log-probs of the sampled tokens as the policy's old log-probs (PPO, more than "
        "one update per iteration) instead of scoring the samples again. auto: when they agree with scoring to "
        "float32 rounding: float32 weights at 32-true precision, and dropout off (trainer.disable_dropout).",
    )

    @field_validator("engine")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in ENGINES:
            raise ValueError(ENGINES.unknown_message(name))
        return name


class CheckpointSpec(Spec):
    every_n_steps: int | None = Field(None, gt=0, description="Save a checkpoint every N optimizer steps.")
    keep: int = Field(2, ge=1, description="How many step checkpoints to keep (last.ckpt is always kept).")
    resume: str = Field(
        "none",
        description="'none': new run; 'auto': continue the newest unfinished run of this name; or a .ckpt path.",
    )
    export_hf: bool = Field(True, description="Save the trained model in Hugging Face format (safetensors) at the end.")


class ExperimentBase(Spec):
    """Sections shared by every experiment; `algorithm` is added from the registry."""

    name: str = Field(description="Experiment name; runs go to <logging.root>/<name>/. Defaults to the file's stem.")
    description: str = Field("", description="Free text, shown by `alignkit show`.")
    policy: ModelSpec | None = Field(None, description="The model being trained (SFT, DPO, PPO's actor, ...).")
    reference: ModelSpec | None = Field(None, description="Frozen reference model; default: a copy of the policy.")
    critic: ModelSpec | None = Field(None, description="Value model (PPO).")
    reward_model: ModelSpec | None = Field(None, description="Scalar-head reward model (trained or frozen).")
    reward: RewardSpec | None = Field(
        None, description="Online methods' reward: a rule, a reward model, or a combination, with post-processing."
    )
    data: DataSpec | None = Field(None, description="Training and held-out data.")
    trainer: TrainerSpec = Field(default_factory=TrainerSpec, description="Steps, batch sizes, optimizer, schedule.")
    hardware: HardwareSpec = Field(default_factory=HardwareSpec, description="Devices and parallelism.")
    logging: LoggingSpec = Field(default_factory=LoggingSpec, description="Where runs and their logs go.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoints, resume, export.")
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec, description="How online algorithms sample responses (the rollout engine)."
    )

    @field_validator("name")
    @classmethod
    def _a_directory_name(cls, name: str) -> str:
        # the name becomes a directory under logging.root: one plain path component
        bad = [c for c in ("/", "\\", "\x00") if c in name]
        if not name.strip() or name in (".", "..") or bad or len(name.encode()) > 255:
            shown = ", ".join(repr(c) for c in bad) or "an empty, '.', '..' or over-long name"
            raise ValueError(
                f"must be a plain directory name (got {name[:60]!r}: {shown}); runs go to <logging.root>/<name>/, "
                "e.g. name: dpo_beta01"
            )
        return name

    @model_validator(mode="after")
    def _sections_match_algorithm(self) -> ExperimentBase:
        present = [s for s in (*MODEL_SECTIONS, "reward", "data") if getattr(self, s) is not None]
        t = self.trainer
        found = cross_section_problems(
            self.algorithm.name,  # type: ignore[attr-defined]
            present,
            self.hardware.world_size(),
            t.prompts_per_step,
            t.micro_batch_size,
        )
        for section in MODEL_SECTIONS:
            spec = getattr(self, section)
            kernel = getattr(spec, "attn_implementation", None)
            if kernel in ("flash_attention_2", "flex_attention") and self.hardware.accelerator == "cpu":
                found.append(
                    f"{section}.attn_implementation: '{kernel}' runs on GPUs only (got hardware.accelerator: cpu); "
                    "use 'sdpa' on CPU"
                )
            if t.shared_prompts and kernel in ("flash_attention_2", "flex_attention"):
                found.append(
                    f"{section}.attn_implementation: '{kernel}' takes no 4-D attention mask, which "
                    "trainer.shared_prompts needs; use 'sdpa' or 'eager', or set trainer.shared_prompts: false"
                )
        card = ALGORITHMS.get(self.algorithm.name) if self.algorithm.name in ALGORITHMS else None  # type: ignore[attr-defined]
        if card is not None:
            found += [
                f"{s}.lora: algorithm '{card.name}' does not train the {s} (it stays frozen); remove lora (to use "
                f"adapters trained before, point {s}.path at the stage's merged export, hf/<section>/)"
                for s in MODEL_SECTIONS
                if getattr(getattr(self, s), "lora", None) is not None and s not in card.trained
            ]
        found += [
            f"{path}.lora: a reward's models are frozen; remove lora (to use adapters trained before, point "
            f"{path}.path at the stage's merged export, hf/reward_model/)"
            for path in _adapted_models(self.reward, "reward")
        ]
        if t.max_tokens_per_micro_batch and card is not None and card.no_token_budget:
            found.append(f"trainer.max_tokens_per_micro_batch: not for algorithm '{card.name}': {card.no_token_budget}")
        if found:
            raise ValueError("\n".join(found))
        return self


def _adapted_models(spec: Any, path: str) -> list[str]:
    """YAML paths of the ModelSpecs with `lora` inside a section (the reward's sources nest them)."""
    if isinstance(spec, ModelSpec):
        return [path] if spec.lora is not None else []
    if isinstance(spec, Spec):
        return [p for name in type(spec).model_fields for p in _adapted_models(getattr(spec, name), f"{path}.{name}")]
    if isinstance(spec, list | tuple):
        return [p for i, item in enumerate(spec) for p in _adapted_models(item, f"{path}[{i}]")]
    return []


def cross_section_problems(
    algorithm: str, present: Iterable[str], world: int | None, prompts_per_step: Any, micro_batch_size: Any
) -> list[str]:
    """Checks that span sections, as "path: message" lines (errors.py reports each at its path).

    Run on the validated config, and on the raw dict when some field is invalid (pydantic then skips
    model validators), so that a missing or unused section is reported together with the field errors.
    """
    if algorithm not in ALGORITHMS:
        return []
    algo = ALGORITHMS.get(algorithm)
    present = set(present)
    hints = {
        "reward": "; e.g. `reward: {source: {kind: rule, name: length_target}}` or `{kind: model, model: {path: ...}}`"
    }
    found = [
        f"{s}: required by algorithm '{algo.name}'{hints.get(s, '')}" for s in algo.required_models if s not in present
    ]
    found += [
        f"{s}: not used by algorithm '{algo.name}' (it uses: {', '.join(algo.models)}); remove this section"
        for s in (*MODEL_SECTIONS, "reward")
        if s in present and s not in algo.models
    ]
    if algo.records is not None and "data" not in present:
        kinds = " or ".join((algo.records, *algo.also_loads))
        found.append(f"data: required by algorithm '{algo.name}', which trains on {kinds} records")
    sizes = (world, prompts_per_step, micro_batch_size)
    if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        step = micro_batch_size * world
        # a size that does not divide micro_batch_size alone is reported by TrainerSpec
        if prompts_per_step % micro_batch_size == 0 and prompts_per_step % step:
            found.append(
                f"trainer.prompts_per_step: must be a multiple of micro_batch_size x devices x num_nodes = "
                f"{micro_batch_size} x {world} = {step} (got {prompts_per_step}); "
                f"{_batch_fix(prompts_per_step, micro_batch_size, world)}"
            )
    return found


def raw_cross_section_problems(data: Mapping[str, Any]) -> list[str]:
    """cross_section_problems on an unvalidated dict, using the schema's defaults for absent keys."""
    algo = data.get("algorithm")
    trainer = data.get("trainer") if isinstance(data.get("trainer"), Mapping) else {}
    hardware = data.get("hardware") if isinstance(data.get("hardware"), Mapping) else {}

    def value(section: Mapping[str, Any], spec: type[Spec], key: str) -> Any:
        return section.get(key, spec.model_fields[key].default)

    devices, nodes = value(hardware, HardwareSpec, "devices"), value(hardware, HardwareSpec, "num_nodes")
    world = devices * nodes if all(isinstance(v, int) and not isinstance(v, bool) for v in (devices, nodes)) else None
    return cross_section_problems(
        str(algo.get("name")) if isinstance(algo, Mapping) else "",
        [s for s in (*MODEL_SECTIONS, "reward", "data") if data.get(s) is not None],
        world,
        value(trainer, TrainerSpec, "prompts_per_step"),
        value(trainer, TrainerSpec, "micro_batch_size"),
    )


@functools.cache
def experiment_schema() -> type[ExperimentBase]:
    """ExperimentConfig with `algorithm` as a union of every registered algorithm's Config, tagged by `name`."""
    configs = tuple(ALGORITHMS.get(n).Config for n in ALGORITHMS.names())
    union: Any = configs[0] if len(configs) == 1 else Annotated[Union[configs], Field(discriminator="name")]  # noqa: UP007
    return create_model(
        "ExperimentConfig",
        __base__=ExperimentBase,
        algorithm=(union, Field(description="Which algorithm trains, with its own options; chosen by `name`.")),
    )
