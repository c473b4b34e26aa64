"""Load a YAML experiment: `base:` files, presets, `key=value` overrides and `${...}` interpolation, then validate."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ValidationError

from alignkit.config.errors import ConfigError, Problem, problems_from_validation, split_problems
from alignkit.config.presets import PRESET_KINDS, load_preset
from alignkit.registry import did_you_mean


def _read(path: Path, chain: tuple[Path, ...]) -> DictConfig:
    """One YAML file merged over its `base:` file(s), which are read relative to it."""
    if path in chain:
        raise ConfigError([Problem("base", f"circular base files: {' -> '.join(str(p) for p in (*chain, path))}")])
    if not path.is_file():
        where = f" (named as base: in {chain[-1]})" if chain else ""
        raise ConfigError([Problem("", f"config file not found: {path}{where}")])
    try:
        cfg = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError([Problem("", f"not valid YAML: {exc}")], source=str(path)) from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError([Problem("", "the file must hold a mapping of sections")], source=str(path))
    bases = cfg.pop("base", None)
    if bases is None:
        return cfg
    merged = OmegaConf.create()
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = OmegaConf.merge(merged, _read((path.parent / str(base)).resolve(), (*chain, path)))
    return OmegaConf.merge(merged, cfg)  # type: ignore[return-value]


def _expand_presets(node: Any, path: str, problems: list[Problem]) -> Any:
    """Replace `{preset: NAME, ...}` by the preset's keys with the user's keys on top, at any depth."""
    if isinstance(node, list):
        return [_expand_presets(v, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    key = path.rsplit(".", 1)[-1]
    # `preset: null` (as a saved config.yaml writes it) means none
    if key in PRESET_KINDS and "preset" in node and (name := node.pop("preset")) is not None:
        try:
            base = load_preset(PRESET_KINDS[key], str(name))
            node = OmegaConf.to_container(OmegaConf.merge(base, node))  # type: ignore[assignment]
            if PRESET_KINDS[key] == "models":
                node["preset"] = name  # ModelSpec keeps the name, so the resolved config says what ran
        except KeyError as exc:
            problems.append(Problem(f"{path}.preset", str(exc.args[0])))
    return {k: _expand_presets(v, f"{path}.{k}" if path else str(k), problems) for k, v in node.items()}


def load_dict(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved plain dict of a config file with its bases, overrides and presets; not yet validated."""
    raw = read_raw(path, overrides)
    raw.setdefault("name", Path(path).stem)
    return prepare(raw, source=str(Path(path).resolve()))


def read_raw(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A config file merged over its `base:` files, with `key=value` overrides: presets and `${...}` untouched."""
    path = Path(path).resolve()
    cfg = _read(path, ())
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError([Problem("", f"override '{o}' is not key=value, e.g. trainer.max_steps=10") for o in bad])
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        raise ConfigError([Problem(str(key), str(exc).splitlines()[0])], source=str(path)) from None
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(raw, dict)
    return raw


def prepare(raw: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """Presets expanded, then `${...}` resolved: the plain dict that validate_dict checks."""
    problems: list[Problem] = []
    expanded = _expand_presets(copy.deepcopy(raw), "", problems)
    # resolved after the presets are in, so that `${policy.hidden_size}` may name a key a preset sets
    data = _resolve(expanded, problems)
    if problems:
        raise ConfigError(problems, source=source)
    return data


def _paths(node: Any, path: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    return [p for k, v in node.items() for p in (f"{path}{k}", *_paths(v, f"{path}{k}."))]


def _interpolation_problem(where: str, raw: Any, exc: Exception, keys: list[str]) -> Problem:
    reason = str(exc).splitlines()[0].removeprefix("KeyError raised while resolving interpolation: ").strip('"')
    msg = f"cannot resolve {raw!r}: {reason}"
    env = re.search(r"Environment variable '(.+?)' not found", reason)
    key = re.search(r"Interpolation key '(.+?)' not found", reason)
    if env:
        msg += f"; set {env[1]}, or give a default: ${{oc.env:{env[1]},VALUE}}"
    elif key:
        msg += did_you_mean(key[1], keys) or "; an interpolation names a key of this config, e.g. ${trainer.seed}"
    return Problem(where, msg)


def _resolve(raw: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """`${...}` interpolations resolved; each one that fails is a problem at its own key."""
    cfg = OmegaConf.create(raw)
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(data, dict)
        return data
    except OmegaConfBaseException:
        pass  # find every key that fails, not just the first
    keys = _paths(raw)

    def walk(node: DictConfig | ListConfig, plain: Any, path: str) -> None:
        for k in range(len(node)) if isinstance(node, ListConfig) else list(node.keys()):
            where = f"{path}[{k}]" if isinstance(k, int) else (f"{path}.{k}" if path else str(k))
            try:
                value = node[k]
            except OmegaConfBaseException as exc:
                problems.append(_interpolation_problem(where, plain[k], exc, keys))
                continue
            if isinstance(value, DictConfig | ListConfig) and isinstance(plain[k], dict | list):
                walk(value, plain[k], where)

    before = len(problems)
    walk(cfg, raw, "")
    if len(problems) == before:
        problems.append(Problem("", "the config's ${...} interpolations do not resolve"))
    return {}


def validate_dict(data: dict[str, Any], source: str | None = None) -> Any:
    """A validated, frozen ExperimentConfig, or ConfigError listing every problem."""
    from alignkit.config.schema import experiment_schema, raw_cross_section_problems

    schema = experiment_schema()
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        problems = problems_from_validation(err, schema)
        # pydantic skips the cross-section checks when a field fails; run them here so that every
        # problem is reported at once
        for problem in split_problems("\n".join(raw_cross_section_problems(data)), schema, ""):
            if problem not in problems:
                problems.append(problem)
        raise ConfigError(problems, source=source) from None


def config_from_dict(raw: dict[str, Any], source: str | None = None) -> Any:
    """A config written as a Python dict (presets, interpolation and validation as for a YAML file)."""
    return validate_dict(prepare(raw, source), source=source)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """YAML + overrides -> ExperimentConfig; the one way the CLI and run.py read a config."""
    return validate_dict(load_dict(path, overrides), source=str(path))
