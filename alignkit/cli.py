"""alignkit run | validate | show | list: the command line, with help generated from the schema."""

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

LIST_KINDS = ("algorithms", "architectures", "datasets", "rewards", "presets")


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


def cmd_validate(args: argparse.Namespace) -> int:
    start = time.perf_counter()
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

    print(yaml.safe_dump(_load(args).model_dump(mode="json"), sort_keys=False), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from alignkit.run import is_rank_zero, run

    cfg = _load(args)
    result = run(cfg)
    if is_rank_zero():
        at = f" at step {result.global_step}" if result.global_step else ""
        print(f"\nrun finished{at}: {result.run_dir}")
        for section, path in result.exports.items():
            print(f"  {section} (Hugging Face format): {path}")
        print(f"  TensorBoard: tensorboard --logdir {result.run_dir.parent}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from alignkit.algorithms import ALGORITHMS
    from alignkit.config.load import list_presets
    from alignkit.data.generators import DATASETS
    from alignkit.models import ARCHITECTURES
    from alignkit.rewards import REWARDS

    registries = {"algorithms": ALGORITHMS, "architectures": ARCHITECTURES, "datasets": DATASETS, "rewards": REWARDS}
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
                kinds = " or ".join(map(str, (algo.records, *getattr(algo, "also_loads", ()))))
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
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except BrokenPipeError:  # `alignkit list | head`
        sys.stderr.close()
        return 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from alignkit.data import DataError
        from alignkit.run import RunError

        if isinstance(err, DataError | RunError):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
