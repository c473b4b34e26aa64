"""Every experiments/**/*.yaml validates (pipelines stage by stage), and every preset validates where it serves."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from alignkit.algorithms import ALGORITHMS
from alignkit.config.load import load_config
from alignkit.config.presets import PRESET_KINDS, list_presets, preset_root
from alignkit.pipeline import is_pipeline, load_pipeline

EXPERIMENTS = sorted((REPO / "experiments").glob("**/*.yaml"))
PRESETS = sorted((REPO / "registry").glob("**/*.yaml"))
# The section a preset of each kind is tried in (any section of that kind takes the same spec).
SECTION = {"models": "policy", "datasets": "data", "hardware": "hardware"}


def test_experiments_and_presets_are_found() -> None:
    assert len(EXPERIMENTS) >= 2 and len(PRESETS) >= 10
    assert preset_root() == REPO / "registry"  # a source checkout reads registry/, not a stale copy


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_experiment_validates(path: Path) -> None:
    if is_pipeline(path):
        pipeline = load_pipeline(path)
        assert pipeline.name == path.stem
        assert pipeline.description, "say what the pipeline is for in `description:`"
        configs = [stage.config for stage in pipeline.stages.values()]
    else:
        cfg = load_config(path)
        assert cfg.name == path.stem
        assert cfg.description, "say what the experiment is for in `description:`"
        configs = [cfg]
    assert all(cfg.algorithm.name in ALGORITHMS for cfg in configs)


def test_every_preset_folder_is_a_known_kind() -> None:
    """A new folder under registry/ would otherwise never be validated, nor be reachable from a YAML."""
    folders = {p.name for p in (REPO / "registry").iterdir() if p.is_dir()}
    assert folders == set(PRESET_KINDS.values()) == set(SECTION)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_preset_validates_where_it_is_used(path: Path, write_yaml: Callable[[str, str], Path]) -> None:
    kind, name = path.parent.name, path.stem
    assert list_presets(kind)[name], f"{kind}/{name}: give it a `description:` (shown by `alignkit list`)"
    assert "preset" not in yaml.safe_load(path.read_text()), "presets do not chain"
    sections = {
        "algorithm": "{name: sft}",
        "policy": "{architecture: llama}",
        "data": "{train: {generator: reverse_words}}",
        "trainer": "{prompts_per_step: 128, micro_batch_size: 8}",  # divides over up to 16 devices
    }
    sections[SECTION[kind]] = f"{{preset: {name}}}"
    text = "".join(f"{k}: {v}\n" for k, v in sections.items())
    cfg = load_config(write_yaml("exp.yaml", text))
    expanded = getattr(cfg, SECTION[kind]).model_dump()
    for key, value in yaml.safe_load(path.read_text()).items():
        if key != "description":
            assert expanded[key] == (list(value) if isinstance(value, tuple) else value) or isinstance(value, dict)
