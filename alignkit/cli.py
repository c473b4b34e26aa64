"""alignkit run | validate | show | list | compare: the command line, with help generated from the schema."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from alignkit.config.errors import ConfigError
from alignkit.rundir import RunError, is_rank_zero

LIST_KINDS = ("algorithms", "architectures", "datasets", "rewards", "engines", "presets")


def _default(field: Any) -> str:
    """A field's default as YAML writes it: false, null, [0.9, 0.999], token_mean."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    text = json.dumps(list(value) if isinstance(value, tuple) else value)
    return f"default {text[1:-1] if isinstance(value, str) and value else text}"


def fields_help(model: type[BaseModel], prefix: str = "", depth: int = 1) -> list[str]:
    """One line per field: `path (allowed values; default): description`, recursing into nested sections."""
    from alignkit.config.errors import bounds, describe, model_in

    lines = []
    for name, field in model.model_fields.items():
        if name == "name" and prefix.startswith("algorithm"):
            continue
        path = f"{prefix}{name}"
        sub = model_in(field.annotation)
        if sub is not None:
            optional = "optional section" if not field.is_required() and field.default is None else "section"
            lines.append(f"  {path} ({optional}): {field.description or ''}")
            if depth > 0:
                lines += fields_help(sub, f"{path}.", depth - 1)
            continue
        allowed = describe(field.annotation, bounds(field))
        lines.append(f"  {path} ({allowed}; {_default(field)}): {field.description or ''}")
    return lines


def _schema_epilog() -> str:
    from alignkit.config.schema import ExperimentBase

    head = "config sections (`alignkit list algorithms -v`: each algorithm's options; `alignkit show`: all keys)"
    return head + ":\n" + "\n".join(fields_help(ExperimentBase, depth=0))


def _load(args: argparse.Namespace) -> Any:
    from alignkit.config.load import load_config

    return load_config(args.config, args.overrides)


def _is_pipeline(args: argparse.Namespace) -> bool:
    from alignkit.pipeline import is_pipeline

    return is_pipeline(args.config)


def _load_pipeline(args: argparse.Namespace) -> Any:
    from alignkit.pipeline import load_pipeline

    return load_pipeline(args.config, args.overrides)


def cmd_validate(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if _is_pipeline(args):
        from alignkit.pipeline import plan

        pipeline = _load_pipeline(args)
        print(f"{args.config}: valid pipeline ({time.perf_counter() - start:.2f}s); stages in run order:")
        todo = {"reuse": "finished, reused: {}", "resume": "unfinished, resumes {}", "new": "runs into {}"}
        for label, step in plan(pipeline).items():
            stage = step.node.stage
            reads = f", reads {', '.join(pipeline.reads(step.node))}" if stage.needs else ""
            print(f"  {label}: {stage.algorithm}{reads} ({todo[step.action].format(step.run)})")
        if pipeline.compare is not None:
            spec = pipeline.compare
            seeds = pipeline.seeds
            over = f", seeds {', '.join(map(str, seeds))}" if seeds else ""
            shared = f" ({', '.join(spec.shared)} shared by every seed)" if spec.shared else ""
            print(f"  compare: {', '.join(spec.run_names(pipeline))} against {spec.baseline}{over}{shared}")
        return 0
    cfg = _load(args)
    hw, t = cfg.hardware, cfg.trainer
    devices = hw.world_size()
    accumulate = f"{t.prompts_per_step // (t.micro_batch_size * devices)}" if devices else "set at launch"
    print(
        f"{args.config}: valid ({time.perf_counter() - start:.2f}s). algorithm {cfg.algorithm.name}; strategy "
        f"{hw.strategy}, devices {hw.devices} x nodes {hw.num_nodes}; {t.prompts_per_step} per step = micro batch "
        f"{t.micro_batch_size} x accumulation {accumulate}; runs go to {cfg.logging.root}/{cfg.name}/"
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    import yaml

    if _is_pipeline(args):
        from alignkit.pipeline import plan

        pipeline = _load_pipeline(args)
        for label, step in plan(pipeline).items():  # every run's directory is decided, upstream paths are real
            print(f"# {label} ({step.action}: {step.run})")
            print(yaml.safe_dump({label: step.node.config.model_dump(mode="json")}, sort_keys=False), end="")
        return 0
    print(yaml.safe_dump(_load(args).model_dump(mode="json"), sort_keys=False), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from alignkit.run import run

    if _is_pipeline(args):
        from alignkit.pipeline import run_pipeline

        pipeline = _load_pipeline(args)
        done = run_pipeline(pipeline, only=args.stages, **_executor(args))
        print(f"\npipeline {pipeline.name}: {len(done.runs)} run(s) finished")
        for label, run_dir in done.runs.items():
            print(f"  {label}: {run_dir}")
        print(f"  TensorBoard: tensorboard --logdir {pipeline.root}")
        done.check()
        return 0
    if args.stages:
        print("error: --stages applies to a pipeline file (one with `stages:`)", file=sys.stderr)
        return 2
    cfg = _load(args)
    result = run(cfg)
    if is_rank_zero():
        at = f" at step {result.global_step}" if result.global_step else ""
        print(f"\nrun finished{at}: {result.run_dir}")
        for section, path in result.exports.items():
            kind = "LoRA adapter, PEFT format" if section.endswith("_adapter") else "Hugging Face format"
            print(f"  {section} ({kind}): {path}")
        print(f"  TensorBoard: tensorboard --logdir {result.run_dir.parent}")
        print(f"  full log: {result.run_dir / 'train.log'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from alignkit.compare import run_compare
    from alignkit.console import with_run_output

    if not _is_pipeline(args):
        print(
            f"error: {args.config} is not a pipeline file (no `stages:`); see experiments/compare_sentiment.yaml",
            file=sys.stderr,
        )
        return 2
    pipeline = _load_pipeline(args)
    if pipeline.compare is None:
        print(
            f"error: {args.config} has no `compare:` section; add one (see experiments/compare_sentiment.yaml)",
            file=sys.stderr,
        )
        return 2
    if not is_rank_zero():  # under torchrun/SLURM every rank runs the stages; rank 0 alone evaluates
        from alignkit.pipeline import run_pipeline

        run_pipeline(pipeline, only=pipeline.compare.needed(pipeline), log=lambda _: None)
        return 0
    # a line per stage run as it starts and ends (its output goes to its log); the evaluation's library output
    # goes to compare.log
    result = with_run_output(run_compare)(pipeline, **_executor(args))
    out = result.out_dir
    # the table and the ranking; the probability-of-improvement matrix is too wide for a terminal
    summary = (out / "summary.md").read_text().split("\nProbability of improvement")[0]
    print("\n" + summary.rstrip() + "\n")
    print(f"comparison written to {out}/")
    print(f"  table:   {out / 'summary.md'} (with the probability-of-improvement matrix) and {out / 'summary.csv'}")
    figures = ", ".join(p.name for p in sorted(out.glob("*.png")))
    print(f"  figures: {figures}")
    print(f"  samples: {out / 'samples.jsonl'}; every number: {out / 'results.json'}")
    print(f"  TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    if result.failed:
        print(f"error: {len(result.failed)} stage run(s) did not finish (listed above and in summary.md)")
        return 1
    return 0


def _executor(args: argparse.Namespace) -> dict[str, Any]:
    """run_pipeline's keyword arguments from --jobs, --executor and --slurm."""
    slurm: dict[str, Any] = {}
    for item in args.slurm or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --slurm takes KEY=VALUE, e.g. --slurm slurm_partition=gpu (got {item!r})")
        slurm[key] = int(value) if value.isdigit() else value
    return {"jobs": args.jobs, "executor": args.executor, "slurm": slurm or None}


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"should be a whole number of runs at a time, at least 1 (got {text!r})")
    return int(text)


def _add_executor_options(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--jobs",
        type=_positive,
        default=1,
        metavar="N",
        help="pipeline files: run up to N independent stage runs (other seeds, other methods) at once; on CPU the "
        "cores are split between them, on GPUs each run takes the GPUs its hardware section asks for",
    )
    s.add_argument(
        "--executor",
        choices=("local", "slurm", "submitit-local"),
        default="local",
        help="pipeline files: local processes (default), one SLURM job per stage run through submitit (pip install "
        "'alignkit[slurm]'), or submitit's local executor (tests the SLURM path on one machine)",
    )
    s.add_argument(
        "--slurm",
        action="append",
        metavar="KEY=VALUE",
        help="submitit parameters for --executor slurm, e.g. --slurm slurm_partition=gpu --slurm timeout_min=240",
    )


def cmd_list(args: argparse.Namespace) -> int:
    from alignkit.algorithms import ALGORITHMS
    from alignkit.config.presets import list_presets
    from alignkit.data.generators import DATASETS
    from alignkit.models.architectures import ARCHITECTURES
    from alignkit.rewards.rules import REWARDS
    from alignkit.rollout import ENGINES

    registries = {
        "algorithms": ALGORITHMS,
        "architectures": ARCHITECTURES,
        "datasets": DATASETS,
        "rewards": REWARDS,
        "engines": ENGINES,
    }
    for kind in [args.kind] if args.kind else LIST_KINDS:
        print(f"{kind}:")
        if kind == "presets":
            for group in ("models", "datasets", "hardware"):
                for name, desc in list_presets(group).items():
                    print(f"  {group + '/' + name:32s} {desc}")
            continue
        for name, desc in registries[kind].describe():
            print(f"  {name:24s} {desc}")
            if kind == "algorithms" and args.verbose:
                algo = ALGORITHMS.get(name)
                kinds = " or ".join(map(str, (algo.records, *algo.also_loads)))
                print(f"    uses: {', '.join(algo.models)}; trains: {', '.join(algo.trained)}; data: {kinds}")
                print("\n".join("  " + line for line in fields_help(algo.Config, "algorithm.")))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="alignkit", description="Declarative experiments for aligning language models with human preferences."
    )
    sub = p.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    for name, fn, text in (
        ("run", cmd_run, "validate a config and train it"),
        ("validate", cmd_validate, "check a config (all problems at once) without loading any model"),
        ("show", cmd_show, "print the resolved config with every default filled in"),
    ):
        s = sub.add_parser(name, help=text, description=text, epilog=_schema_epilog(), formatter_class=fmt)
        s.add_argument("config", help="experiment YAML file")
        s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=10 hardware.devices=2")
        s.set_defaults(fn=fn)
        if name == "run":
            s.add_argument(
                "--stages",
                type=lambda text: [t for t in text.split(",") if t],
                help="pipeline files: run only these stages (comma-separated) and the stages they read from",
            )
            _add_executor_options(s)
    text = "run a pipeline's stages (finished ones are reused) and compare its policies on held-out prompts"
    s = sub.add_parser("compare", help=text, description=text)
    s.add_argument("config", help="pipeline YAML file with `stages:` and `compare:`")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stages.ppo.trainer.max_steps=10")
    _add_executor_options(s)
    s.set_defaults(fn=cmd_compare)
    s = sub.add_parser("list", help="list registered components and presets")
    s.add_argument("kind", nargs="?", choices=LIST_KINDS)
    s.add_argument("-v", "--verbose", action="store_true", help="with each algorithm's options")
    s.set_defaults(fn=cmd_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # Lightning 2.6 on torch 2.13 warns about torch's own pytree API on every step; nothing a user can act on
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
    # frozen models (reference, reward) are kept in eval mode on purpose (AlignModule.train)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    if not sys.stdout.isatty() and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # a pipe or CI log gets each line as it is printed
    p = parser()
    # overrides may also follow an option (`run pipe.yaml --stages sft trainer.seed=1`)
    args, extra = p.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any("=" not in e for e in extra)):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.fn(args))
    except BrokenPipeError:  # `alignkit list | head`
        sys.stderr.close()
        return 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from alignkit.data.sources import DataError

        if isinstance(err, DataError):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
