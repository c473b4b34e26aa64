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

`{from_stage: S}` (optionally with `output: SECTION`) becomes `{path: <S's run>/hf/<section>}`: the Hugging
Face export of what stage S trained. Each stage is an ordinary experiment config, validated as one, and runs
as `alignkit run` of its resolved config in its own process (so its wall time and peak memory are its own),
into `<logging.root>/<pipeline name>/<stage>/version_N`. A stage whose latest finished run has the same
resolved config (upstream run paths included) is reused; one whose run stopped unfinished resumes from its
last checkpoint; any other is run afresh, and so is everything downstream of it, because its path changes.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from alignkit.algorithms import ALGORITHMS
from alignkit.config.base import Spec
from alignkit.config.errors import ConfigError, Problem, dotted, problems_from_validation, short
from alignkit.config.load import check_numbers, prepare, read_raw, validate_dict
from alignkit.data.spec import SourceSpec
from alignkit.registry import did_you_mean
from alignkit.rewards.spec import RewardSourceSpec
from alignkit.rundir import LAST, RunError, read_status, step_checkpoints, versions

STAGE_KEY = "from_stage"
PIPELINE_KEYS = ("name", "description", "defaults", "stages", "compare")
# A mapping with one of these keys says what it is (a model, a data source, a reward kind, a preset), so a
# stage's mapping with one replaces the defaults' mapping instead of being merged into it key by key.
IDENTITY_KEYS = frozenset({STAGE_KEY, "path", "preset", "architecture", "generator", "kind"})
# Keys that never make two runs of a stage different.
IGNORED = (("description",), ("logging", "version"), ("logging", "progress_bar"), ("checkpoint", "resume"))
PENDING = "<not run yet>"


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
    seed: int = Field(1234, ge=0, le=2**32 - 1, description="Sampling seed; every policy answers with the same seed.")

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
    name: str
    raw: dict[str, Any]  # defaults merged in, name and logging.root set; presets and refs unresolved
    needs: list[str]  # stages it reads from
    algorithm: str
    trained: tuple[str, ...]
    config: Any = None  # ExperimentConfig: placeholder paths for upstream stages not run yet, real ones after

    @property
    def root(self) -> Path:
        return Path(self.raw["logging"]["root"]) / self.name


@dataclass
class Pipeline:
    name: str
    description: str
    source: str
    stages: dict[str, Stage]  # in run order: every stage after the stages it reads from
    root: Path  # <logging.root>/<name>: one TensorBoard directory for every stage
    compare: CompareSpec | None = None
    runs: dict[str, Path] = field(default_factory=dict)

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

    def export_path(self, stage: str, output: str | None) -> str:
        """Where stage `stage` exports `output` (default: the first model it trains)."""
        section = output or self.stages[stage].trained[0]
        run = self.runs.get(stage)
        return str((run if run is not None else self.stages[stage].root / PENDING) / "hf" / section)


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
        if stage_name == "compare":
            problems.append(Problem(where, "'compare' is reserved for `alignkit compare`'s output; rename the stage"))
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
            elif ref.get("output") is not None and ref["output"] not in stages[target].trained:
                allowed = ", ".join(stages[target].trained)
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
    return pipeline


def resolve_stage(pipeline: Pipeline, stage: Stage) -> Any:
    """The stage's ExperimentConfig, with `from_stage` replaced by the upstream runs' export paths."""
    data = prepare(replace_refs(copy.deepcopy(stage.raw), pipeline.export_path))
    return validate_dict(data)


def _config_of(run: Path) -> dict[str, Any] | None:
    try:
        return yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None


def find_run(stage: Stage, config: Any) -> tuple[str, Path | None]:
    """('reuse', run) for a finished run of this exact config; ('resume', last.ckpt) for an unfinished one;
    ('new', None) otherwise."""
    wanted = comparable(config.model_dump(mode="json"))
    for run in reversed(versions(stage.root)):
        saved = _config_of(run)
        if saved is None or comparable(saved) != wanted:
            continue
        status = read_status(run)
        exports = all((run / "hf" / s).is_dir() for s in stage.trained) or not config.checkpoint.export_hf
        if status == "finished" and exports:
            return "reuse", run
        # `alignkit run` resumes from last.ckpt, or from the newest step checkpoint that reads intact
        checkpoints = run / "checkpoints"
        if status != "finished" and ((checkpoints / LAST).exists() or step_checkpoints(checkpoints)):
            return "resume", checkpoints / LAST
    return "new", None


def _run_stage(config: Any, log: Callable[[str], None] = print) -> None:
    """`alignkit run` of one resolved stage config in a child process; its output goes to `log`, indented
    under the stage's line (warnings and errors too: stderr is merged, in order)."""
    last = ""
    with tempfile.TemporaryDirectory(prefix="alignkit-stage-") as tmp:
        file = Path(tmp) / f"{config.name}.yaml"
        file.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        cmd = [sys.executable, "-m", "alignkit", "run", str(file)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        ) as child:
            assert child.stdout is not None
            for line in child.stdout:
                if line.strip():
                    log(f"  {line.rstrip()}")
                    last = line.strip()
        code = child.returncode
    if code != 0:
        said = f": {last[:300]}" if last else ""  # the error's last line, also when `log` prints nothing
        raise RunError(
            f"stage '{config.name}' failed (exit code {code}{said}); its run is under "
            f"{config.logging.root}/{config.name}/. "
            "Fix the cause and run the pipeline again: finished stages are reused and this one resumes from its "
            "last checkpoint."
        )


def plan(pipeline: Pipeline) -> dict[str, tuple[str, Path | None]]:
    """What running every stage would do now: stage -> ('reuse', run) | ('resume', last.ckpt) | ('new', None).

    Reused runs are recorded in `pipeline.runs`, so stages downstream of them resolve to real paths.
    """
    found = {}
    for name, stage in pipeline.stages.items():
        stage.config = resolve_stage(pipeline, stage)
        found[name] = find_run(stage, stage.config)
        if found[name][0] == "reuse":
            pipeline.runs[name] = found[name][1]  # type: ignore[assignment]
    return found


def run_pipeline(
    pipeline: Pipeline, only: Sequence[str] | None = None, log: Callable[[str], None] = print
) -> dict[str, Path]:
    """Run (or reuse) the stages `only` names and those they read from, in order; returns stage -> run dir."""
    unknown = [s for s in only or () if s not in pipeline.stages]
    if unknown:
        names = list(pipeline.stages)
        raise RunError(
            f"--stages: unknown stage(s) {', '.join(unknown)}; allowed: {', '.join(names)}"
            f"{did_you_mean(unknown[0], names)}"
        )
    for name in pipeline.upstream(only or pipeline.stages):
        stage = pipeline.stages[name]
        stage.config = config = resolve_stage(pipeline, stage)  # upstream paths are real now
        action, found = find_run(stage, config)
        if action == "reuse":
            assert found is not None
            log(f"[{pipeline.name}] stage {name}: reusing finished run {found}")
            pipeline.runs[name] = found
            continue
        if action == "resume":
            log(f"[{pipeline.name}] stage {name}: resuming unfinished run from {found}")
            config = config.model_copy(
                update={"checkpoint": config.checkpoint.model_copy(update={"resume": str(found)})}
            )
        else:
            log(f"[{pipeline.name}] stage {name}: running {stage.algorithm}")
        started = time.perf_counter()
        _run_stage(config, log)
        action, found = find_run(stage, config)
        if action != "reuse" or found is None:
            raise RunError(f"stage '{name}' exited cleanly but left no finished run under {stage.root}")
        log(f"[{pipeline.name}] stage {name}: finished in {time.perf_counter() - started:.0f}s: {found}")
        pipeline.runs[name] = found
    return dict(pipeline.runs)
