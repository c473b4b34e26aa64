"""Load a YAML experiment: `base:` files, presets, `key=value` overrides and `${...}` interpolation, then validate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ValidationError

from alignkit.config.errors import ConfigError, Problem, problems_from_validation
from alignkit.registry import did_you_mean

# Which preset folder (under registry/) a section's `preset:` names.
PRESET_KINDS = {
    "policy": "models",
    "reference": "models",
    "critic": "models",
    "reward_model": "models",
    "model": "models",
    "data": "datasets",
    "hardware": "hardware",
}


def preset_root() -> Path:
    """registry/ of a source checkout, or the copy inside an installed wheel (alignkit/_presets)."""
    packaged = Path(__file__).resolve().parents[1] / "_presets"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "registry"


def list_presets(kind: str) -> dict[str, str]:
    """{name: description} of the presets of one kind ('models', 'datasets', 'hardware')."""
    folder = preset_root() / kind
    out = {}
    for f in sorted(folder.glob("*.yaml")):
        out[f.stem] = str((yaml.safe_load(f.read_text()) or {}).get("description", ""))
    return out


def load_preset(kind: str, name: str) -> dict[str, Any]:
    file = preset_root() / kind / f"{name}.yaml"
    if not file.is_file():
        names = list(list_presets(kind))
        raise KeyError(f"unknown {kind} preset '{name}'; allowed: {', '.join(names)}{did_you_mean(name, names)}")
    data = yaml.safe_load(file.read_text()) or {}
    data.pop("description", None)
    return data


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
    if "preset" in node and key in PRESET_KINDS:
        name = node.pop("preset")
        try:
            base = load_preset(PRESET_KINDS[key], str(name))
            node = OmegaConf.to_container(OmegaConf.merge(base, node))  # type: ignore[assignment]
        except KeyError as exc:
            problems.append(Problem(f"{path}.preset", str(exc.args[0])))
    return {k: _expand_presets(v, f"{path}.{k}" if path else str(k), problems) for k, v in node.items()}


def load_dict(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved plain dict of a config file with its bases, overrides and presets; not yet validated."""
    path = Path(path).resolve()
    cfg = _read(path, ())
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError([Problem("", f"override '{o}' is not key=value, e.g. trainer.max_steps=10") for o in bad])
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        raise ConfigError([Problem(str(key), str(exc).splitlines()[0])], source=str(path)) from None
    assert isinstance(data, dict)
    data.setdefault("name", path.stem)
    problems: list[Problem] = []
    data = _expand_presets(data, "", problems)
    if problems:
        raise ConfigError(problems, source=str(path))
    return data


def validate_dict(data: dict[str, Any], source: str | None = None) -> Any:
    """A validated, frozen ExperimentConfig, or ConfigError listing every problem."""
    from alignkit.config.schema import experiment_schema

    schema = experiment_schema()
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise ConfigError(problems_from_validation(err, schema), source=source) from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """YAML + overrides -> ExperimentConfig; the one way the CLI and run.py read a config."""
    return validate_dict(load_dict(path, overrides), source=str(path))
