"""Presets: the YAML files under registry/ that a section names with `preset:` (models, datasets, hardware)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

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
        raise KeyError(
            f"unknown preset '{name}' (in registry/{kind}/); allowed: {', '.join(names)}{did_you_mean(name, names)}"
        )
    data = yaml.safe_load(file.read_text()) or {}
    data.pop("description", None)
    return data
