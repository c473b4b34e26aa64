"""Pipelines: named stages in one YAML file that read earlier stages' outputs; finished stages are reused.

```yaml
name: sentiment
defaults: {hardware: {preset: cpu}}          # under every stage; a stage's own keys win
stages:
  sft: {algorithm: {name: sft}, policy: {preset: tiny-llama}, data: ...}
  rm:  {algorithm: {name: reward_model}, reward_model: {from_stage: sft}, data: ...}
  ppo: {algorithm: {name: ppo}, policy: {from_stage: sft},
        reward: {source: {kind: model, model: {from_stage: rm}}}, data: ...}
```

`{from_stage: S}` (optionally with `output: SECTION`) becomes `{path: <S's run>/hf/<section>}`: the Hugging Face
export of what stage S trained (merged, when it trained LoRA adapters; `output: policy_adapter` reads the adapter,
which a model section loads onto its base). Each stage is an ordinary experiment config, validated as one, and
runs as `alignkit run` of its resolved config in its own process (so its wall time and peak memory are its own),
into `<logging.root>/<pipeline name>/<stage>/version_N`. A stage whose latest finished run has the same resolved
config (upstream run paths included) is reused; one whose run stopped unfinished resumes from its last checkpoint;
any other is run afresh, and so is everything downstream of it, because its path changes.
"""

from __future__ import annotations

import copy
import hashlib
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from alignkit.algorithms import ALGORITHMS
from alignkit.config.base import Spec
from alignkit.config.errors import ConfigError, Problem, dotted, problems_from_validation, short
from alignkit.config.load import check_numbers, prepare, read_raw, validate_dict
from alignkit.config.schema import RolloutSpec
from alignkit.data.spec import SourceSpec
from alignkit.registry import did_you_mean
from alignkit.rewards.spec import RewardSourceSpec
from alignkit.rundir import LAST, RunError, next_version, read_run_record, read_status, step_checkpoints, versions

STAGE_KEY = "from_stage"
PIPELINE_KEYS = ("name", "description", "defaults", "stages", "compare")
# A mapping with one of these keys says what it is (a model, a data source, a reward kind, a preset), so a
# stage's mapping with one replaces the defaults' mapping instead of being merged into it key by key.
IDENTITY_KEYS = frozenset({STAGE_KEY, "path", "preset", "architecture", "generator", "kind"})
# Keys that never make two runs of a stage different.
# keys that change where a run's numbers are shown, not the numbers: a finished stage is reused across them
IGNORED = (
    ("description",),
    ("logging", "version"),
    ("logging", "progress_bar"),
    ("logging", "loggers"),
    ("logging", "wandb"),
    ("logging", "mlflow"),
    ("checkpoint", "resume"),
)
PENDING = "<not run yet>"
SEED_DIR = "seed_{}"


def outputs(stage: Stage) -> list[str]:
    """What a stage exports for `from_stage` to read: each model it trains (merged, when it trains adapters), and
    `<section>_adapter` for each one that trains LoRA adapters (the adapter alone, in PEFT's format)."""
    adapted = [s for s in stage.trained if isinstance(stage.raw.get(s), dict) and stage.raw[s].get("lora")]
    return [*stage.trained, *(f"{s}_adapter" for s in adapted)]


def is_pipeline(path: str | Path) -> bool:
    """Whether a YAML file declares `stages:` (a pipeline) rather than one experiment."""
    try:  # bytes: PyYAML reads a UTF-16 file by its byte-order mark
        data = yaml.safe_load(Path(path).read_bytes())
    except (OSError, yaml.YAMLError, RecursionError):  # the loader reports what is wrong with the file
        return False
    return isinstance(data, dict) and "stages" in data


def merge_defaults(defaults: dict[str, Any], stage: dict[str, Any]) -> dict[str, Any]:
    """`stage` over `defaults`, merged key by key except where a stage mapping names what it is."""
    out = copy.deepcopy(defaults)
    for key, value in stage.items():
        below = out.get(key)
        if isinstance(value, dict) and isinstance(below, dict) and not IDENTITY_KEYS & value.keys():
            out[key] = merge_defaults(below, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def stage_refs(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every `{from_stage: ...}` mapping inside a stage, with its path."""
    if isinstance(node, list):
        return [r for i, v in enumerate(node) for r in stage_refs(v, f"{path}[{i}]")]
    if not isinstance(node, dict):
        return []
    if STAGE_KEY in node:
        return [(path, node)]
    return [r for k, v in node.items() for r in stage_refs(v, f"{path}.{k}" if path else str(k))]


def replace_refs(node: Any, export: Callable[[str, str | None], str]) -> Any:
    """`{from_stage: S, output: O, **rest}` -> `{path: export(S, O), **rest}`, at any depth."""
    if isinstance(node, list):
        return [replace_refs(v, export) for v in node]
    if not isinstance(node, dict):
        return node
    if STAGE_KEY in node:
        rest = {k: v for k, v in node.items() if k not in (STAGE_KEY, "output")}
        return {"path": export(str(node[STAGE_KEY]), node.get("output")), **rest}
    return {k: replace_refs(v, export) for k, v in node.items()}


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config without the keys that do not change what a run computes."""
    out = copy.deepcopy(config)
    for keys in IGNORED:
        holder = out
        for key in keys[:-1]:
            holder = holder.get(key, {}) if isinstance(holder, dict) else {}
        if isinstance(holder, dict):
            holder.pop(keys[-1], None)
    return out


class PassAtKSpec(Spec):
    """`compare.pass_at_k`: pass@k of the baseline and each compared method's final policy on verifiable prompts."""

    k: list[Annotated[int, Field(ge=1)]] = Field(
        [1, 2, 4, 8, 16, 32, 64],
        min_length=1,
        description="The k of pass@k: the chance that at least one of k samples is correct, estimated without bias "
        "from `samples` answers per prompt (Chen et al. 2021).",
    )
    samples: int = Field(
        64,
        ge=1,
        description="n: sampled answers per prompt and policy (at compare.temperature); at least the largest k. "
        "Each generation batch holds compare.micro_batch_size x samples responses: lower micro_batch_size for "
        "large models.",
    )
    threshold: float = Field(
        1.0,
        description="A response counts as correct when its true reward is at least this (so a true reward that "
        "adds e.g. 0.1 for the format to a 0/1 correctness still counts correctness alone).",
    )
    greedy: bool = Field(True, description="Also greedy pass@1: one argmax answer per prompt, right or wrong.")
    by: str | None = Field(
        "difficulty",
        description="A column of the held-out prompt rows to split the results by (e.g. the reasoning tasks' "
        "`difficulty`); null: no split.",
    )

    @field_validator("k")
    @classmethod
    def _ascending(cls, k: list[int]) -> list[int]:
        return sorted(set(k))  # the table's columns and the curves' points, in order

    @model_validator(mode="after")
    def _enough_samples(self) -> PassAtKSpec:
        if self.samples < max(self.k):
            raise ValueError(
                f"samples: pass@{max(self.k)} needs at least {max(self.k)} samples per prompt (got {self.samples}); "
                f"set compare.pass_at_k.samples to {max(self.k)} or more, or drop the k above {self.samples}"
            )
        return self


class CompareSpec(Spec):
    """The `compare:` section of a pipeline file."""

    baseline: str = Field(
        "sft",
        description="Stage whose trained policy every compared method starts from: the reference of every KL, "
        "the table's first row, and the sampler of best-of-n.",
    )
    runs: list[str] | None = Field(
        None, description="Stages to compare (default: every stage other than the baseline that trains a policy)."
    )
    reward_model: str | None = Field(
        None,
        description="Stage whose reward model scores every response (the table's RM column and best-of-n's "
        "choice); default: the pipeline's first reward_model stage, if any.",
    )
    prompts: SourceSpec = Field(description="Held-out prompts that every policy answers: a file or a generator.")
    true_reward: RewardSourceSpec = Field(
        description="The reward the comparison reports, any reward source; for the sentiment testbed "
        "`{kind: rule, name: review_sentiment}`."
    )
    samples_per_prompt: int = Field(4, ge=1, description="Sampled responses per prompt and policy.")
    max_new_tokens: int = Field(32, ge=1, description="Most tokens in a response.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (1: the policy's own distribution).")
    max_prompt_length: int = Field(64, ge=1, description="Prompts longer than this are cut from the left.")
    best_of_n: list[int] = Field(
        [1, 2, 4, 8, 16],
        description="n of the best-of-n rows: n baseline samples per prompt, the reward model's favourite kept; "
        "KL = log n - (n - 1) / n (Stiennon et al. 2020). Empty, or no reward model: no best-of-n.",
    )
    checkpoints: bool = Field(
        True, description="Also evaluate each compared run's saved step checkpoints: a curve per method."
    )
    micro_batch_size: int = Field(32, ge=1, description="Prompts per generation batch.")
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec, description="The rollout engine that samples every policy's answers."
    )
    seed: int = Field(
        1234,
        ge=0,
        le=2**32 - 1,
        description="Sampling seed; every policy of one pipeline seed answers with the same stream (derived per seed).",
    )
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | Annotated[int, Field(ge=1, le=1000)] | None = Field(
        None,
        description="Run every stage once per seed: a list of seeds, or a count n for seeds 0..n-1. A seeded run "
        "sets `trainer.seed` to the seed and derives each data generator's `seed` argument from it (seed 0 keeps the "
        "file's), into <root>/<pipeline>/seed_<k>/<stage>/. Unset: one run per stage, with the file's seeds.",
    )
    shared: list[str] = Field(
        [],
        description="Stages run once, with the file's own seeds, and read by every seed (e.g. [sft, rm]: one SFT "
        "policy and one reward model, so that only each method's own randomness varies across seeds).",
    )
    bootstrap_reps: int = Field(
        2000, ge=100, le=100_000, description="Bootstrap replicates of every confidence interval (95%, percentile)."
    )
    bootstrap_prompts: Literal["crossed", "nested"] = Field(
        "crossed",
        description="How a bootstrap replicate redraws prompts after drawing seeds: `crossed` draws one set of "
        "prompts for every drawn seed (every seed answers the same prompts, so a prompt's difficulty is shared), "
        "`nested` redraws them within each drawn seed (narrower intervals when prompts differ a lot).",
    )
    pass_at_k: PassAtKSpec | None = Field(
        None,
        description="Pass@k of the baseline and each compared method's final policy (a table, pass_at_k.csv and "
        "figures), for a true reward that says right or wrong (e.g. `exact_answer`); null: none.",
    )

    def seed_list(self) -> list[int] | None:
        if self.seeds is None:
            return None
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def problems(self, pipeline: Any) -> list[Problem]:
        """Stage names that do not exist or do not hold what this section needs."""
        stages = pipeline.stages
        found = []
        if self.baseline not in stages:
            found.append(Problem("compare.baseline", f"unknown stage '{self.baseline}'; allowed: {', '.join(stages)}"))
        elif "policy" not in stages[self.baseline].trained:
            found.append(Problem("compare.baseline", f"stage '{self.baseline}' trains no policy"))
        for i, name in enumerate(self.runs or []):
            if name not in stages:
                found.append(Problem(f"compare.runs[{i}]", f"unknown stage '{name}'; allowed: {', '.join(stages)}"))
            elif "policy" not in stages[name].trained:
                found.append(
                    Problem(f"compare.runs[{i}]", f"stage '{name}' ({stages[name].algorithm}) trains no policy")
                )
        rm = self.reward_model
        if rm is not None and (rm not in stages or "reward_model" not in stages[rm].trained):
            found.append(Problem("compare.reward_model", f"'{rm}' is not a stage that trains a reward_model"))
        if any(n < 1 for n in self.best_of_n):
            found.append(Problem("compare.best_of_n", f"every n must be at least 1 (got {self.best_of_n})"))
        seeds = self.seed_list()
        if seeds is not None and len(set(seeds)) != len(seeds):
            found.append(Problem("compare.seeds", f"a seed appears twice (got {seeds})"))
        if self.shared and seeds is None:
            found.append(Problem("compare.shared", "shares stages across seeds, and compare.seeds is not set"))
        for i, name in enumerate(self.shared):
            if name not in stages:
                names = list(stages)
                found.append(
                    Problem(
                        f"compare.shared[{i}]",
                        f"unknown stage '{name}'; allowed: {', '.join(names)}{did_you_mean(name, names)}",
                    )
                )
                continue
            seeded = [s for s in pipeline.upstream([name]) if s not in self.shared]
            if seeded:
                found.append(
                    Problem(
                        f"compare.shared[{i}]",
                        f"stage '{name}' reads {', '.join(seeded)}, which runs once per seed; share "
                        f"{', '.join(seeded)} too, or do not share '{name}'",
                    )
                )
        return found

    def run_names(self, pipeline: Any) -> list[str]:
        if self.runs is not None:
            return list(self.runs)
        return [s for s, st in pipeline.stages.items() if s != self.baseline and "policy" in st.trained]

    def needed(self, pipeline: Any) -> list[str]:
        """The stages the comparison reads: baseline, compared runs, reward model."""
        rm = self.reward_stage(pipeline)
        return [self.baseline, *self.run_names(pipeline), *([rm] if rm else [])]

    def reward_stage(self, pipeline: Any) -> str | None:
        if self.reward_model is not None:
            return self.reward_model
        return next((s for s, st in pipeline.stages.items() if "reward_model" in st.trained), None)


@dataclass
class Stage:
    """A stage as declared: the template of its runs (one per seed, or one shared by all seeds)."""

    name: str
    raw: dict[str, Any]  # defaults merged in, name and logging.root set; presets and refs unresolved
    needs: list[str]  # stages it reads from
    algorithm: str
    trained: tuple[str, ...]
    config: Any = None  # ExperimentConfig with the file's seeds and placeholder paths upstream (validation)

    @property
    def root(self) -> Path:
        return Path(self.raw["logging"]["root"]) / self.name


@dataclass
class Node:
    """One run of a stage: for one seed (`seed_<k>/<stage>`), or once for every seed (`<stage>`)."""

    stage: Stage
    seed: int | None  # None: the file's own seeds (a shared stage, or a pipeline without compare.seeds)
    raw: dict[str, Any]
    config: Any = None  # ExperimentConfig with upstream run paths, set by `plan`

    @property
    def label(self) -> str:
        return self.stage.name if self.seed is None else f"{SEED_DIR.format(self.seed)}/{self.stage.name}"

    @property
    def root(self) -> Path:
        return Path(self.raw["logging"]["root"]) / self.stage.name

    @property
    def trained(self) -> tuple[str, ...]:
        return self.stage.trained


def derive_seed(value: int, seed: int) -> int:
    """A data generator's seed for pipeline seed `seed`: the file's value for seed 0, else a hash of both
    (so that seed k's data are not seed k+1's shifted by one generator)."""
    if seed == 0:
        return value
    digest = hashlib.sha256(f"alignkit seed {value} {seed}".encode()).digest()  # no numpy: validate stays light
    return int.from_bytes(digest[:4], "little") % 2**31


def seeded(raw: dict[str, Any], seed: int, root: Path) -> dict[str, Any]:
    """A stage's raw config for one pipeline seed: trainer.seed, generator seeds and its own root."""
    out = copy.deepcopy(raw)
    if not isinstance(out.get("trainer"), dict):
        out["trainer"] = {}
    out["trainer"]["seed"] = seed
    data = out.get("data")
    for key in ("train", "eval") if isinstance(data, dict) else ():
        source = data.get(key)
        args = source.get("args") if isinstance(source, dict) and "generator" in source else None
        if isinstance(args, dict) and isinstance(args.get("seed"), int) and not isinstance(args["seed"], bool):
            args["seed"] = derive_seed(args["seed"], seed)
    out["logging"]["root"] = str(root / SEED_DIR.format(seed))
    return out


@dataclass
class Pipeline:
    name: str
    description: str
    source: str
    stages: dict[str, Stage]  # in run order: every stage after the stages it reads from
    root: Path  # <logging.root>/<name>: one TensorBoard directory for every stage
    compare: CompareSpec | None = None
    nodes: dict[str, Node] = field(default_factory=dict)  # label -> run of a stage, in run order
    runs: dict[str, Path] = field(default_factory=dict)  # label -> its run directory (planned or finished)

    @property
    def seeds(self) -> list[int] | None:
        return self.compare.seed_list() if self.compare is not None else None

    @property
    def shared(self) -> frozenset[str]:
        return frozenset(self.compare.shared) if self.compare is not None else frozenset()

    def expand(self) -> None:
        """`nodes`: every stage once per seed, or once when shared or when the pipeline has no seeds."""
        seeds = self.seeds
        self.nodes = {}
        for stage in self.stages.values():
            if seeds is None or stage.name in self.shared:
                node = Node(stage, None, stage.raw)
                self.nodes[node.label] = node
                continue
            for seed in seeds:
                node = Node(stage, seed, seeded(stage.raw, seed, self.root))
                self.nodes[node.label] = node

    def node(self, stage: str, seed: int | None) -> Node:
        """The run of `stage` that seed `seed` reads."""
        if seed is None or stage in self.shared:
            return self.nodes[stage]
        return self.nodes[f"{SEED_DIR.format(seed)}/{stage}"]

    def upstream(self, names: Iterable[str]) -> list[str]:
        """The given stages and every stage they read from, in run order."""
        wanted: set[str] = set()
        todo = list(names)
        while todo:
            name = todo.pop()
            if name not in wanted:
                wanted.add(name)
                todo += self.stages[name].needs
        return [s for s in self.stages if s in wanted]

    def upstream_nodes(self, names: Iterable[str]) -> list[str]:
        """The labels of every run of the given stages and of the stages they read from, in run order."""
        wanted = set(self.upstream(names))
        return [label for label, node in self.nodes.items() if node.stage.name in wanted]

    def reads(self, node: Node) -> list[str]:
        """The labels of the runs `node` reads from."""
        return [self.node(need, node.seed).label for need in dict.fromkeys(node.stage.needs)]

    def export_path(self, node: Node, stage: str, output: str | None) -> str:
        """Where the run of `stage` that `node` reads exports `output` (default: the first model it trains)."""
        section = output or self.stages[stage].trained[0]
        source = self.node(stage, node.seed)
        run = self.runs.get(source.label)
        return str((run if run is not None else source.root / PENDING) / "hf" / section)


def _order(stages: dict[str, Stage], problems: list[Problem]) -> list[str]:
    """Stage names with every stage after the stages it reads from (file order otherwise)."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join((*chain[chain.index(name) :], name))
            problems.append(Problem(f"stages.{name}", f"stages read from each other in a cycle: {cycle}"))
            return
        state[name] = "visiting"
        for need in stages[name].needs:
            visit(need, (*chain, name))
        state[name] = "done"
        order.append(name)

    for name in stages:
        visit(name, ())
    return order


def load_pipeline(path: str | Path, overrides: Sequence[str] = ()) -> Pipeline:
    """Read and check a pipeline file: every stage validates (with placeholder paths upstream) before any runs."""
    raw = read_raw(path, overrides)
    source = str(Path(path).resolve())
    problems: list[Problem] = []
    for key in raw:
        if key not in PIPELINE_KEYS:
            problems.append(
                Problem(
                    dotted((key,)),
                    f"unknown pipeline key '{key}'; allowed: {', '.join(PIPELINE_KEYS)}"
                    f"{did_you_mean(str(key), PIPELINE_KEYS)}; sections shared by every stage go under `defaults:`",
                )
            )
    for key in ("name", "description"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            problems.append(Problem(key, f"should be a string (got {short(raw[key])})"))
    name = raw["name"] if isinstance(raw.get("name"), str) and raw["name"] else Path(path).stem
    defaults = raw.get("defaults") or {}
    declared = raw.get("stages")
    if not isinstance(defaults, dict):
        problems.append(Problem("defaults", f"should be a mapping of config sections (got {short(defaults)})"))
        defaults = {}
    if "name" in defaults:
        problems.append(Problem("defaults.name", "not allowed in defaults: each stage's name is its key"))
    if not isinstance(defaults.get("logging", {}), dict):
        problems.append(Problem("defaults.logging", f"should be a mapping (got {short(defaults['logging'])})"))
        defaults = {k: v for k, v in defaults.items() if k != "logging"}
    if not isinstance(declared, dict) or not declared:
        problems.append(Problem("stages", "should map stage names to experiment configs, e.g. `sft: {algorithm: ...}`"))
        raise ConfigError(problems, source=source)
    root_dir = defaults.get("logging", {}).get("root", "runs")
    if not isinstance(root_dir, str):
        problems.append(Problem("defaults.logging.root", f"should be a directory name (got {short(root_dir)})"))
    root = Path(str(root_dir)) / name
    # validate looks for finished runs under these directories, so each must be a name the OS can look up
    for at, text in (("name", name), ("defaults.logging.root", root_dir)):
        if isinstance(text, str) and (
            "\x00" in text or any(len(p.encode("utf-8", "replace")) > 200 for p in Path(text).parts)
        ):
            problems.append(
                Problem(
                    at, f"not a usable directory name (got {short(text)}): a NUL character, or a part over 200 bytes"
                )
            )
    stages: dict[str, Stage] = {}
    for stage_name, body in declared.items():
        where = f"stages.{stage_name}"
        if not isinstance(body, dict):
            problems.append(Problem(where, f"should be an experiment config mapping (got {body!r})"))
            continue
        if stage_name in ("compare", "submitit") or str(stage_name).startswith("seed_"):
            problems.append(
                Problem(
                    where,
                    f"'{stage_name}' is a directory name alignkit reserves under the pipeline's root "
                    "(compare, submitit, seed_<k>); rename the stage",
                )
            )
        if not str(stage_name).isidentifier() or len(str(stage_name).encode("utf-8", "replace")) > 200:
            problems.append(
                Problem(where, "a stage name must be a short Python-style identifier, e.g. sft, rm, ppo_beta")
            )
        for key in ("name", "base"):
            if key in body:
                problems.append(
                    Problem(f"{where}.{key}", f"not allowed in a stage: the stage's name is its key ({key})")
                )
        merged = merge_defaults(defaults, {k: v for k, v in body.items() if k not in ("name", "base")})
        logging = merged.setdefault("logging", {})
        if not isinstance(logging, dict):
            problems.append(Problem(f"{where}.logging", f"should be a mapping (got {short(logging)})"))
            logging = merged["logging"] = {}
        if isinstance(body.get("logging"), dict) and "root" in body["logging"]:
            problems.append(
                Problem(
                    f"{where}.logging.root",
                    "not allowed in a stage: every stage runs under <defaults.logging.root>/<pipeline name>/; "
                    "set defaults.logging.root",
                )
            )
        if logging.get("version") is not None:
            problems.append(
                Problem(f"{where}.logging.version", "not allowed in a pipeline: stages pick and reuse their versions")
            )
        logging["root"] = str(root)
        merged["name"] = str(stage_name)
        refs = stage_refs(merged)
        algo = merged.get("algorithm", {}).get("name") if isinstance(merged.get("algorithm"), dict) else None
        trained = ALGORITHMS.get(algo).trained if isinstance(algo, str) and algo in ALGORITHMS else ()
        stages[str(stage_name)] = Stage(
            str(stage_name), merged, [str(r[STAGE_KEY]) for _, r in refs], str(algo), tuple(trained)
        )
    for stage in stages.values():
        for ref_path, ref in stage_refs(stage.raw):
            at, target = f"stages.{stage.name}.{ref_path}.{STAGE_KEY}", str(ref[STAGE_KEY])
            if target not in stages:
                names = list(stages)
                problems.append(
                    Problem(at, f"unknown stage '{target}'; allowed: {', '.join(names)}{did_you_mean(target, names)}")
                )
            elif target == stage.name:
                problems.append(Problem(at, "a stage cannot read its own output"))
            elif not stages[target].trained:
                problems.append(Problem(at, f"stage '{target}' ({stages[target].algorithm}) exports no model"))
            elif ref.get("output") is not None and ref["output"] not in outputs(stages[target]):
                allowed = ", ".join(outputs(stages[target]))
                problems.append(
                    Problem(
                        f"stages.{stage.name}.{ref_path}.output",
                        f"stage '{target}' trains no '{ref['output']}'; allowed: {allowed}",
                    )
                )
            bad = (set(ref) - {STAGE_KEY, "output"}) & {"path", "preset", "architecture"}
            if bad:
                problems.append(
                    Problem(at, f"from_stage gives the model's path; remove {', '.join(sorted(bad))} beside it")
                )
    if problems:
        raise ConfigError(problems, source=source)
    try:
        order = _order(stages, problems)
    except RecursionError:
        raise ConfigError([Problem("stages", "stages read from each other in too long a chain")], source) from None
    if problems:
        raise ConfigError(problems, source=source)
    pipeline = Pipeline(
        name=name,
        description=str(raw.get("description", "")),
        source=source,
        stages={s: stages[s] for s in order},
        root=root,
    )
    for stage in pipeline.stages.values():
        try:
            stage.config = resolve_stage(pipeline, stage)
        except ConfigError as err:
            problems += [Problem(f"stages.{stage.name}.{p.path}".rstrip("."), p.message) for p in err.problems]
    if raw.get("compare") is not None:
        compare, too_big = check_numbers(raw["compare"], "compare")
        problems += too_big
        try:
            pipeline.compare = CompareSpec.model_validate(compare)
        except ValidationError as err:
            found = [
                Problem(f"compare.{p.path}".rstrip("."), p.message) for p in problems_from_validation(err, CompareSpec)
            ]
            problems += [p for p in found if p.path not in {t.path for t in too_big}]
        else:
            problems += [Problem(p.path, p.message) for p in pipeline.compare.problems(pipeline)]
    if problems:
        raise ConfigError(problems, source=source)
    pipeline.expand()
    return pipeline


def resolve_stage(pipeline: Pipeline, stage: Stage) -> Any:
    """The stage's ExperimentConfig as declared: the file's seeds, placeholder paths for the stages it reads."""

    def placeholder(name: str, output: str | None) -> str:
        return str(pipeline.stages[name].root / PENDING / "hf" / (output or pipeline.stages[name].trained[0]))

    return validate_dict(prepare(replace_refs(copy.deepcopy(stage.raw), placeholder)))


def resolve(pipeline: Pipeline, node: Node) -> Any:
    """A run's ExperimentConfig, with `from_stage` replaced by the export paths of the runs it reads."""
    data = prepare(replace_refs(copy.deepcopy(node.raw), lambda stage, out: pipeline.export_path(node, stage, out)))
    return validate_dict(data)


def _config_of(run: Path) -> dict[str, Any] | None:
    try:
        return yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None


def find_run(where: Stage | Node, config: Any) -> tuple[str, Path | None]:
    """('reuse', run) for a finished run of this exact config; ('resume', last.ckpt) for an unfinished one;
    ('new', None) otherwise."""
    wanted = comparable(config.model_dump(mode="json"))
    for run in reversed(versions(where.root)):
        saved = _config_of(run)
        if saved is None or comparable(saved) != wanted:
            continue
        status = read_status(run)
        exports = all((run / "hf" / s).is_dir() for s in where.trained) or not config.checkpoint.export_hf
        if status == "finished" and exports:
            return "reuse", run
        # `alignkit run` resumes from last.ckpt, or from the newest step checkpoint that reads intact
        checkpoints = run / "checkpoints"
        if status != "finished" and ((checkpoints / LAST).exists() or step_checkpoints(checkpoints)):
            return "resume", checkpoints / LAST
    return "new", None


@dataclass
class Step:
    """What running the pipeline does with one run: reuse it, resume it or start it, and where it goes."""

    node: Node
    action: str  # reuse | resume | new
    run: Path  # the run directory: found, or the next free version_N for a new run
    checkpoint: Path | None = None  # resume: the checkpoint the run continues from


def plan(pipeline: Pipeline, only: Sequence[str] | None = None) -> dict[str, Step]:
    """What running the stages `only` names (default all) and what they read would do now, label -> Step.

    Every run directory is decided here, new ones included (the next free version_N), and recorded in
    `pipeline.runs`, so every downstream config holds its upstream paths before anything runs: the jobs can
    then start together, each waiting only for what it reads (or be submitted to SLURM at once).
    """
    unknown = [s for s in only or () if s not in pipeline.stages]
    if unknown:
        names = list(pipeline.stages)
        raise RunError(
            f"--stages: unknown stage(s) {', '.join(unknown)}; allowed: {', '.join(names)}"
            f"{did_you_mean(unknown[0], names)}"
        )
    steps = {}
    for label in pipeline.upstream_nodes(only or pipeline.stages):
        node = pipeline.nodes[label]
        node.config = resolve(pipeline, node)
        action, found = find_run(node, node.config)
        if action == "reuse":
            assert found is not None
            steps[label] = Step(node, action, found)
        elif action == "resume":
            assert found is not None
            steps[label] = Step(node, action, found.parent.parent, found)
        else:
            steps[label] = Step(node, action, next_version(node.root))
        pipeline.runs[label] = steps[label].run
    return steps


def stage_config(step: Step) -> Any:
    """The config a stage's job runs: the planned version, or the checkpoint it resumes from."""
    config = step.node.config
    if step.action == "resume":
        return config.model_copy(
            update={"checkpoint": config.checkpoint.model_copy(update={"resume": str(step.checkpoint)})}
        )
    return config.model_copy(update={"logging": config.logging.model_copy(update={"version": step.run.name})})


def gpus_of(hardware: Any, available: int) -> int:
    """GPUs a stage takes from the local pool: its `devices` on a GPU accelerator, none on CPU."""
    if hardware.accelerator == "cpu" or (hardware.accelerator == "auto" and available == 0):
        return 0
    return hardware.devices if isinstance(hardware.devices, int) else 1


@dataclass
class PipelineResult:
    runs: dict[str, Path]  # label -> finished run
    failed: dict[str, str]  # label -> why (failed, or skipped because what it reads failed), with its log

    def check(self) -> None:
        """Raise RunError naming every failed stage and its log."""
        if self.failed:
            lines = "\n".join(f"  {label}: {why}" for label, why in self.failed.items())
            raise RunError(
                f"{len(self.failed)} stage run(s) did not finish:\n{lines}\n"
                "Fix the cause and run again: finished stages are reused and unfinished ones resume from their "
                "last checkpoint."
            )


def run_pipeline(
    pipeline: Pipeline,
    only: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
    *,
    jobs: int = 1,
    executor: str = "local",
    slurm: dict[str, Any] | None = None,
) -> PipelineResult:
    """Run (or reuse) the stages `only` names and those they read from, every seed; `jobs` at a time.

    Each run is one `alignkit run` child process of its resolved config (written beside its run directory as
    version_N.yaml, its terminal output to version_N.log; version_N.resume<k>.* when it resumes), started when
    the runs it reads have finished. A run that fails stops only the runs that read it; the others go on, and
    the result says which failed and why.
    """
    from alignkit.executor import Job, Outcome, run_jobs, usable_cores, visible_gpus

    steps = plan(pipeline, only)
    tag = f"[{pipeline.name}]"
    # `accelerator: auto` takes a GPU where the pool has one; a cluster's nodes are assumed to have them
    gpus = 1 if executor == "slurm" else len(visible_gpus())
    at_once = min(jobs, sum(step.action != "reuse" for step in steps.values()))
    todo: list[Job] = []
    for label, step in steps.items():
        if step.action == "reuse":
            log(f"{tag} {label}: reusing finished run {step.run}")
            continue
        config = stage_config(step)
        # a resumed run keeps the log of its earlier attempt: version_N.log, then version_N.resume1.log, ...
        name = step.run.name
        if step.action == "resume":
            name += f".resume{len(list(step.node.root.glob(f'{step.run.name}.resume*.log'))) + 1}"
        file = step.node.root / f"{name}.yaml"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        hw = config.hardware
        takes = gpus_of(hw, gpus)
        env = {}
        if takes == 0 and isinstance(hw.devices, int) and hw.devices > 1 and executor != "slurm":
            # a DDP or FSDP run on CPU starts `devices` processes: they share its part of the cores
            share = max(1, usable_cores() // (at_once * hw.devices))
            env = {"OMP_NUM_THREADS": str(share), "MKL_NUM_THREADS": str(share)}
        todo.append(
            Job(
                name=label,
                argv=(sys.executable, "-m", "alignkit", "run", str(file)),
                log=step.node.root / f"{name}.log",
                needs=tuple(r for r in pipeline.reads(step.node) if steps[r].action != "reuse"),
                gpus=takes,
                nodes=hw.num_nodes,
                env=env,
            )
        )

    def started(job: Any) -> None:
        step = steps[job.name]
        what = "resuming" if step.action == "resume" else "running"
        log(f"{tag} {job.name}: {what} {step.node.stage.algorithm}, log: {job.log}")

    def ended(outcome: Outcome) -> None:
        step = steps[outcome.job.name]
        if outcome.status == "finished":
            log(f"{tag} {outcome.job.name}: finished in {outcome.seconds:.0f} s{_key_metrics(step)}")
        elif outcome.status == "failed":
            what = f"FAILED after {outcome.seconds:.0f} s ({outcome.reason})"
            log(f"{tag} {outcome.job.name}: {what}; log: {outcome.log}")
        else:
            log(f"{tag} {outcome.job.name}: skipped ({outcome.reason})")

    try:
        outcomes = (
            run_jobs(
                todo,
                workers=jobs,
                executor=executor,  # type: ignore[arg-type]
                folder=pipeline.root / "submitit",
                slurm=slurm,
                on_start=started,
                on_end=ended,
            )
            if todo
            else {}
        )
    except ValueError as err:  # the job graph or the executor's settings, before anything started
        raise RunError(str(err)) from None
    result = PipelineResult(runs={}, failed={})
    for label, step in steps.items():
        outcome = outcomes.get(label)
        if outcome is not None and outcome.status != "finished":
            where = f"; log: {outcome.log}" if outcome.status == "failed" else ""
            result.failed[label] = f"{outcome.status}: {outcome.reason}{where}"
            continue
        action, found = find_run(step.node, step.node.config)
        if action != "reuse" or found is None:
            result.failed[label] = f"exited cleanly but left no finished run under {step.node.root}"
            continue
        result.runs[label] = pipeline.runs[label] = found
    return result


def _key_metrics(step: Step) -> str:
    """' (eval/loss 1.23, ...)': the first two progress metrics of the finished run (eval where logged)."""
    record = read_run_record(step.run)
    metrics = record.get("metrics") or {}
    card = ALGORITHMS.get(step.node.stage.algorithm)
    shown = []
    for name in card.progress:
        for split in ("eval", "train"):
            if f"{split}/{name}" in metrics:
                shown.append(f"{split}/{name} {metrics[f'{split}/{name}']:.3g}")
                break
        if len(shown) == 2:
            break
    return f" ({', '.join(shown)})" if shown else ""
