"""The command line: validate, show, list and `python -m alignkit`, run in-process except for one subprocess."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from alignkit.algorithms import ALGORITHMS
from alignkit.cli import LIST_KINDS, main
from alignkit.config.presets import list_presets
from alignkit.data.generators import DATASETS
from alignkit.models import ARCHITECTURES
from alignkit.rewards import REWARDS
from alignkit.rollout import ENGINES

WriteYaml = Callable[[str, str], Path]
EXPERIMENT = """
    algorithm: {name: sft}
    policy: {preset: tiny-llama}
    data: {preset: reverse-words}
    trainer: {prompts_per_step: 16, micro_batch_size: 4}
    hardware: {preset: cpu}
"""


def test_validate_ok(write_yaml: WriteYaml, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml("exp.yaml", EXPERIMENT)
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"{path}: valid (")
    assert "algorithm sft; strategy single, devices 1 x nodes 1; 16 per step = micro batch 4 x accumulation 4" in out
    assert "runs go to runs/exp/" in out


def test_validate_applies_overrides(write_yaml: WriteYaml, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml("exp.yaml", EXPERIMENT)
    assert main(["validate", str(path), "trainer.micro_batch_size=8", "logging.root=/x"]) == 0
    out = capsys.readouterr().out
    assert "micro batch 8 x accumulation 2" in out and "runs go to /x/exp/" in out


def test_validate_with_devices_auto(write_yaml: WriteYaml, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml("exp.yaml", EXPERIMENT)
    assert main(["validate", str(path), "hardware.preset=gpu-1", "hardware.devices=auto", "hardware.strategy=ddp"]) == 0
    assert "accumulation set at launch" in capsys.readouterr().out


def test_validate_errors_exit_2_on_stderr(write_yaml: WriteYaml, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml("exp.yaml", EXPERIMENT)
    assert main(["validate", str(path), "trainer.max_stepz=3"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: {path}: 1 problem in the config\n  - trainer.max_stepz: unknown key 'max_stepz'")
    assert main(["validate", str(path.parent / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_show_prints_the_resolved_config_with_defaults(
    write_yaml: WriteYaml, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_yaml("exp.yaml", EXPERIMENT)
    assert main(["show", str(path), "trainer.seed=3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["name"] == "exp"
    assert shown["trainer"]["seed"] == 3
    assert shown["trainer"]["optimizer"]["betas"] == [0.9, 0.999]  # a default nobody wrote
    assert shown["trainer"]["scheduler"]["name"] == "constant"
    assert shown["policy"]["preset"] == "tiny-llama" and shown["policy"]["hidden_size"] == 64  # preset expanded
    assert shown["hardware"]["strategy"] == "single"
    assert shown["algorithm"] == {"name": "sft", "loss_aggregation": "token_mean"}
    assert list(shown)[:2] == ["name", "description"]  # schema order, not alphabetical


def test_show_output_is_itself_a_valid_config(
    write_yaml: WriteYaml, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `show` prints (and run.py saves as config.yaml) loads back to the same config."""
    path = write_yaml("exp.yaml", EXPERIMENT)
    main(["show", str(path)])
    first = capsys.readouterr().out
    again = tmp_path / "again.yaml"
    again.write_text(first)
    main(["show", str(again)])
    assert capsys.readouterr().out == first


def test_list_everything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in LIST_KINDS:
        assert f"\n{kind}:\n" in f"\n{out}"
    for registry in (ALGORITHMS, ARCHITECTURES, DATASETS, REWARDS, ENGINES):
        for name, description in registry.describe():
            assert f"  {name:24s} {description}\n" in out
    for group in ("models", "datasets", "hardware"):
        for name in list_presets(group):
            assert f"  {group}/{name}" in out


@pytest.mark.parametrize("kind", LIST_KINDS)
def test_list_one_kind(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", kind]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{kind}:\n")
    assert all(line.startswith("  ") for line in out.splitlines()[1:])


def test_list_algorithms_verbose_shows_models_data_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "algorithms", "-v"]) == 0
    out = capsys.readouterr().out
    for name in ALGORITHMS.names():
        algo = ALGORITHMS.get(name)
        assert f"uses: {', '.join(algo.models)}; trains: {', '.join(algo.trained)}; data: {algo.records}" in out
        for option in algo.Config.model_fields:
            if option != "name":
                assert f"algorithm.{option} (" in out
    assert "algorithm.loss_aggregation (token_mean, sequence_mean; default token_mean): token_mean: every" in out
    assert "algorithm.center_coef (a number >= 0; default 0.0): Reward centering" in out


def test_unknown_command_or_kind_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["trian"], ["list", "algos"], []):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_subcommand_help_lists_the_config_sections(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "\nconfig sections (" in out
    assert "  name (a string; required): Experiment name" in out
    assert "  policy (optional section): The model being trained" in out
    assert "  trainer (section): Steps, batch sizes" in out
    assert "TrainerSpec(" not in out  # no Python reprs of defaults


def test_python_dash_m_alignkit_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alignkit", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: alignkit")
    for command in ("run", "validate", "show", "list"):
        assert command in result.stdout
