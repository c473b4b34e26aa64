"""Config loading and validation: base files, overrides, interpolation, presets, strictness, error messages."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import MINIMAL, minimal
from pydantic import BaseModel, ValidationError

from alignkit.algorithms import ALGORITHMS
from alignkit.cli import main
from alignkit.config.errors import ConfigError
from alignkit.config.load import load_config, load_dict, validate_dict
from alignkit.config.presets import load_preset
from alignkit.config.schema import experiment_schema

WriteYaml = Callable[[str, str], Path]

SFT_YAML = """\
algorithm: {name: sft}
policy: {architecture: llama, hidden_size: 32, num_layers: 1, num_heads: 2}
data: {train: {generator: reverse_words}}
"""


def problems(data: dict[str, Any]) -> dict[str, str]:
    """{path: message} of every problem validate_dict reports (fails if the config is valid)."""
    with pytest.raises(ConfigError) as err:
        validate_dict(data)
    return {p.path: p.message for p in err.value.problems}


def load_problems(path: Path, *overrides: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    return {p.path: p.message for p in err.value.problems}


# -- base files -----------------------------------------------------------------------------------------


def test_base_file_is_relative_to_the_file_and_chains(write_yaml: WriteYaml) -> None:
    write_yaml("shared/root.yaml", SFT_YAML + "trainer: {seed: 7, max_steps: 5}\n")
    write_yaml("shared/mid.yaml", "base: root.yaml\ntrainer: {max_steps: 10, micro_batch_size: 4}\n")
    top = write_yaml("exp/top.yaml", "base: ../shared/mid.yaml\ntrainer: {prompts_per_step: 16}\n")
    cfg = load_config(top)
    # the nearest file wins, keys it does not set come from further down the chain
    assert (cfg.trainer.seed, cfg.trainer.max_steps) == (7, 10)
    assert (cfg.trainer.micro_batch_size, cfg.trainer.prompts_per_step) == (4, 16)
    assert cfg.name == "top"  # the stem of the file named on the command line, not of a base


def test_base_may_be_a_list_merged_in_order(write_yaml: WriteYaml) -> None:
    write_yaml("a.yaml", SFT_YAML + "trainer: {seed: 1, max_steps: 3}\n")
    write_yaml("b.yaml", "trainer: {seed: 2}\n")
    top = write_yaml("top.yaml", "base: [a.yaml, b.yaml]\n")
    assert (load_config(top).trainer.seed, load_config(top).trainer.max_steps) == (2, 3)


def test_circular_base_files_are_an_error(write_yaml: WriteYaml) -> None:
    a = write_yaml("a.yaml", "base: b.yaml\n")
    write_yaml("b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"base: circular base files: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_dict(a)


def test_missing_base_file_names_the_file_that_asked_for_it(write_yaml: WriteYaml) -> None:
    top = write_yaml("top.yaml", "base: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml \(named as base: in .*top\.yaml\)"):
        load_dict(top)


def test_file_that_is_not_a_mapping_or_not_yaml(write_yaml: WriteYaml) -> None:
    with pytest.raises(ConfigError, match="must hold a mapping of sections"):
        load_dict(write_yaml("list.yaml", "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_dict(write_yaml("bad.yaml", "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_dict(write_yaml("x.yaml", "").parent / "missing.yaml")


# -- overrides, interpolation, environment ---------------------------------------------------------------


def test_key_value_overrides_win_over_the_file(write_yaml: WriteYaml) -> None:
    path = write_yaml("exp.yaml", SFT_YAML + "trainer: {max_steps: 5}\n")
    cfg = load_config(path, ["trainer.max_steps=20", "trainer.optimizer.lr=0.5", "algorithm.name=sft"])
    assert cfg.trainer.max_steps == 20 and cfg.trainer.optimizer.lr == 0.5


def test_override_of_a_preset_key_and_of_the_preset_itself(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "exp.yaml", "algorithm: {name: sft}\npolicy: {preset: tiny-llama}\ndata: {preset: reverse-words}\n"
    )
    preset = load_preset("models", "tiny-llama")
    cfg = load_config(path, ["policy.num_layers=1", "data.max_length=48"])
    assert cfg.policy.num_layers == 1 and cfg.data.max_length == 48
    assert cfg.policy.hidden_size == preset["hidden_size"]  # the rest of the preset is kept
    assert load_config(path, ["policy.preset=tiny-gpt2"]).policy.architecture == "gpt2"


def test_override_that_is_not_key_value(write_yaml: WriteYaml) -> None:
    path = write_yaml("exp.yaml", SFT_YAML)
    expected = r"override 'trainer\.max_steps' is not key=value, e\.g\. trainer\.max_steps=10"
    with pytest.raises(ConfigError, match=expected):
        load_dict(path, ["trainer.max_steps"])


def test_interpolation_of_keys_presets_and_environment(write_yaml: WriteYaml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AK_TEST_ROOT", "/tmp/ak-runs")
    monkeypatch.delenv("AK_TEST_UNSET", raising=False)
    path = write_yaml(
        "exp.yaml",
        """
        algorithm: {name: sft}
        policy: {preset: tiny-llama}
        data: {preset: reverse-words, max_length: "${policy.max_position_embeddings}"}
        trainer: {micro_batch_size: 4, prompts_per_step: "${trainer.micro_batch_size}"}
        logging: {root: "${oc.env:AK_TEST_ROOT}/${name}", version: "${oc.env:AK_TEST_UNSET,v1}"}
        """,
    )
    cfg = load_config(path)
    assert cfg.trainer.prompts_per_step == 4
    assert cfg.data.max_length == load_preset("models", "tiny-llama")["max_position_embeddings"]
    assert cfg.logging.root == "/tmp/ak-runs/exp" and cfg.logging.version == "v1"
    # an override feeds the interpolations that read it
    assert load_config(path, ["trainer.micro_batch_size=8"]).trainer.prompts_per_step == 8


def test_interpolations_that_fail_are_all_reported_at_their_keys(
    write_yaml: WriteYaml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AK_TEST_UNSET", raising=False)
    path = write_yaml(
        "exp.yaml",
        SFT_YAML + "logging: {root: '${oc.env:AK_TEST_UNSET}'}\ntrainer: {seed: '${trainer.sed}'}\n",
    )
    found = load_problems(path)
    assert found["logging.root"] == (
        "cannot resolve '${oc.env:AK_TEST_UNSET}': Environment variable 'AK_TEST_UNSET' not found; "
        "set AK_TEST_UNSET, or give a default: ${oc.env:AK_TEST_UNSET,VALUE}"
    )
    assert found["trainer.seed"].startswith("cannot resolve '${trainer.sed}'")
    assert found["trainer.seed"].endswith("did you mean 'trainer.seed'?")


# -- presets and names ----------------------------------------------------------------------------------


def test_presets_expand_under_the_users_keys(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "exp.yaml",
        """
        algorithm: {name: sft}
        policy: {preset: tiny-llama, num_layers: 1}
        data: {preset: reverse-words, max_length: 40}
        hardware: {preset: cpu}
        """,
    )
    cfg = load_config(path)
    model, data = load_preset("models", "tiny-llama"), load_preset("datasets", "reverse-words")
    assert cfg.policy.num_layers == 1 != model["num_layers"]  # the user's key wins
    assert (cfg.policy.architecture, cfg.policy.hidden_size) == (model["architecture"], model["hidden_size"])
    assert cfg.policy.preset == "tiny-llama"  # kept as a record of where the keys came from
    assert cfg.data.max_length == 40 and cfg.data.train.generator == data["train"]["generator"]
    assert (cfg.hardware.accelerator, cfg.hardware.strategy) == ("cpu", "single")


def test_unknown_presets_name_their_path_and_suggest(write_yaml: WriteYaml) -> None:
    path = write_yaml("exp.yaml", "algorithm: {name: sft}\npolicy: {preset: tiny-lama}\ndata: {preset: reverse-word}\n")
    found = load_problems(path)
    assert found["policy.preset"] == (
        "unknown preset 'tiny-lama' (in registry/models/); allowed: llama-1b-like, small-llama, tiny-gpt2, "
        "tiny-llama, tiny-qwen2; did you mean 'tiny-llama'?"
    )
    assert re.fullmatch(r"unknown preset 'reverse-word' .*; did you mean 'reverse-words'\?", found["data.preset"])


def test_name_defaults_to_the_file_stem(write_yaml: WriteYaml) -> None:
    assert load_config(write_yaml("my_run.yaml", SFT_YAML)).name == "my_run"
    assert load_config(write_yaml("other.yaml", SFT_YAML + "name: chosen\n")).name == "chosen"


# -- strictness -------------------------------------------------------------------------------------------


def test_validated_config_is_frozen() -> None:
    cfg = validate_dict(minimal())
    with pytest.raises(ValidationError, match="frozen"):
        cfg.trainer.max_steps = 3
    with pytest.raises(ValidationError, match="frozen"):
        cfg.name = "other"
    with pytest.raises(ValidationError, match="frozen"):
        cfg.algorithm.loss_aggregation = "sequence_mean"


def _sections(model: BaseModel, path: str = "") -> Iterator[str]:
    """The YAML path of every nested section (pydantic model) of a validated config, the root as ''."""
    yield path
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _sections(value, f"{path}.{name}" if path else name)


def _insert(data: dict[str, Any], path: str, key: str, value: Any) -> None:
    node = data
    for part in filter(None, path.split(".")):
        node = node[part]
    node[key] = value


@pytest.mark.parametrize("algorithm", sorted(MINIMAL))
def test_unknown_keys_are_errors_in_every_section(algorithm: str) -> None:
    full = validate_dict(minimal(algorithm)).model_dump(mode="json")  # every section, defaults filled in
    sections = list(_sections(validate_dict(full)))
    expected = {"", "algorithm", "trainer.optimizer", "trainer.scheduler", "hardware.fsdp"}
    expected |= {"data.train"} if "data" in MINIMAL[algorithm] else {"algorithm.env"}
    assert expected <= set(sections)
    for section in sections:
        data = validate_dict(minimal(algorithm)).model_dump(mode="json")
        _insert(data, section, "bogus_key", 1)
        where = f"{section}.bogus_key" if section else "bogus_key"
        assert problems(data)[where].startswith("unknown key 'bogus_key'; allowed: "), where


# -- error messages ---------------------------------------------------------------------------------------


def test_acceptance_every_problem_with_path_value_allowed_and_suggestion(
    write_yaml: WriteYaml, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelled key, a wrong type and an unknown algorithm: `alignkit validate` exits 2, names all three."""
    path = write_yaml(
        "bad.yaml",
        """
        algorithm: {name: sftt}
        policy: {preset: tiny-llama}
        data: {preset: reverse-words}
        trainer:
          max_step: 10
          micro_batch_size: lots
        """,
    )
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{path}: 3 problems in the config" in err
    lines = {line.split(": ", 1)[0].removeprefix("  - "): line for line in err.splitlines()[1:]}
    assert set(lines) == {"trainer.max_step", "trainer.micro_batch_size", "algorithm.name"}
    assert re.fullmatch(
        r"  - trainer\.max_step: unknown key 'max_step'; allowed: .*max_epochs, max_steps, micro_batch_size.*; "
        r"did you mean 'max_steps'\?",
        lines["trainer.max_step"],
    )
    assert re.fullmatch(
        r"  - trainer\.micro_batch_size: should be a valid integer.* \(got 'lots'\); allowed: an integer > 0; "
        r"e\.g\. `micro_batch_size: 8` \(the default\)",
        lines["trainer.micro_batch_size"],
    )
    assert lines["algorithm.name"] == (
        f"  - algorithm.name: unknown algorithm 'sftt'; allowed: {', '.join(ALGORITHMS.names())}; did you mean 'sft'?"
    )


@pytest.mark.parametrize(
    ("section", "value", "path", "message"),
    [
        (
            "trainer",
            {"scheduler": {"name": "cosin"}},
            "trainer.scheduler.name",
            "invalid value (got 'cosin'); allowed: constant, constant_with_warmup, linear, cosine; "
            "did you mean 'cosine'?",
        ),
        (
            "hardware",
            {"devices": "atuo"},
            "hardware.devices",
            "invalid value (got 'atuo'); allowed: an integer or auto; did you mean 'auto'?",
        ),
        (
            "trainer",
            {"optimizer": {"lr": 0}},
            "trainer.optimizer.lr",
            "should be greater than 0 (got 0); allowed: a number > 0; e.g. `lr: 1e-05` (the default)",
        ),
        (
            "trainer",
            {"optimizer": {"betas": [0.9]}},
            "trainer.optimizer.betas",
            "too few items (no item 1); allowed: a list of 2 values (a number, a number)",
        ),
        (
            "trainer",
            {"max_steps": 1.5},
            "trainer.max_steps",
            "should be a valid integer, got a number with a fractional part (got 1.5); "
            "allowed: an integer > 0, or null",
        ),
        (
            "checkpoint",
            {"export_hf": "maybe"},
            "checkpoint.export_hf",
            "should be a valid boolean, unable to interpret input (got 'maybe'); allowed: true or false; "
            "e.g. `export_hf: true` (the default)",
        ),
        (
            "algorithm",
            {"name": "sft", "loss_agregation": "token_mean"},
            "algorithm.loss_agregation",
            "unknown key 'loss_agregation'; allowed: loss_aggregation, name; did you mean 'loss_aggregation'?",
        ),
        (
            "algorithm",
            {"name": "sft", "loss_aggregation": "token_men"},
            "algorithm.loss_aggregation",
            "invalid value (got 'token_men'); allowed: token_mean, sequence_mean; did you mean 'token_mean'?",
        ),
        (
            "algorithm",
            {"loss_aggregation": "token_mean"},
            "algorithm.name",
            "missing 'name' (which registered component to use); see `alignkit list`",
        ),
        (
            "policy",
            "tiny-llama",
            "policy",
            "should be a valid dictionary or instance of ModelSpec (got 'tiny-llama'); allowed: a mapping with "
            "keys preset, path, architecture, tokenizer, hidden_size, num_layers, num_heads, num_kv_heads, "
            "intermediate_size, max_position_embeddings, init_seed, dtype, attn_implementation, or null; "
            "to use a preset, write `policy: {preset: tiny-llama}`",
        ),
        (
            "trainer",
            {"scheduler": {"warmup_steps": 2, "warmup_ratio": 0.1}},
            "trainer.scheduler.warmup_ratio",
            "set warmup_steps or warmup_ratio, not both (got warmup_steps=2, warmup_ratio=0.1)",
        ),
        (
            "hardware",
            {"strategy": "single", "devices": 2},
            "hardware.strategy",
            "'single' runs on one device (got devices=2, num_nodes=1); set devices: 1 and num_nodes: 1, "
            "or strategy: ddp",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and "." in v else None,
)
def test_messages_name_path_value_and_what_is_allowed(section: str, value: Any, path: str, message: str) -> None:
    assert problems(minimal(**{section: value}))[path] == message


def test_algorithm_section_that_is_not_a_mapping() -> None:
    found = problems(minimal(algorithm="sft"))
    assert found == {
        "algorithm": "should be a valid dictionary or object to extract fields from (got 'sft'); allowed: a "
        f"mapping with `name` (one of {', '.join(ALGORITHMS.names())}) and its options"
    }


# -- cross-section checks ---------------------------------------------------------------------------------


def test_missing_model_section_for_the_algorithm() -> None:
    assert problems(minimal(policy=None)) == {"policy": "required by algorithm 'sft'"}
    assert problems(minimal("reward_model", reward_model=None)) == {
        "reward_model": "required by algorithm 'reward_model'"
    }


def test_model_section_the_algorithm_does_not_use() -> None:
    spec = {"architecture": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2}
    assert problems(minimal(critic=spec)) == {
        "critic": "not used by algorithm 'sft' (it uses: policy); remove this section"
    }
    assert problems(minimal("reward_model", policy=spec)) == {
        "policy": "not used by algorithm 'reward_model' (it uses: reward_model); remove this section"
    }


def test_reward_section_required_by_online_algorithms_only() -> None:
    missing = problems(minimal("grpo", reward=None))
    assert missing["reward"].startswith("required by algorithm 'grpo'; e.g. `reward: {source: {kind: rule")
    rule = {"source": {"kind": "rule", "name": "length_target"}}
    assert problems(minimal(reward=rule)) == {
        "reward": "not used by algorithm 'sft' (it uses: policy); remove this section"
    }


def test_kto_says_which_records_it_reads() -> None:
    assert problems(minimal("kto", data=None)) == {
        "data": "required by algorithm 'kto', which trains on unpaired or preference records"
    }


def test_missing_data_section() -> None:
    assert problems(minimal(data=None)) == {"data": "required by algorithm 'sft', which trains on completion records"}


def test_prompts_per_step_must_divide_by_micro_batch_size_and_devices() -> None:
    one_device = minimal(trainer={"prompts_per_step": 12, "micro_batch_size": 8})
    assert problems(one_device) == {
        "trainer.prompts_per_step": "must be a multiple of micro_batch_size (8) (got 12); "
        "e.g. set prompts_per_step to 16 or micro_batch_size to 6"
    }
    two_devices = minimal(
        trainer={"prompts_per_step": 12, "micro_batch_size": 4}, hardware={"devices": 2, "strategy": "ddp"}
    )
    assert problems(two_devices) == {
        "trainer.prompts_per_step": "must be a multiple of micro_batch_size x devices x num_nodes = "
        "4 x 2 = 8 (got 12); e.g. set prompts_per_step to 16 or micro_batch_size to 3"
    }
    # devices: auto is only known at launch; run.py checks it there
    validate_dict(minimal(trainer={"prompts_per_step": 12, "micro_batch_size": 4}, hardware={"devices": "auto"}))


def test_model_spec_problems_are_reported_under_the_section_path() -> None:
    found = problems(minimal(policy={"architecture": "llama", "hidden_size": 64, "num_heads": 3}))
    assert found["policy.num_heads"] == (
        "must divide hidden_size (got num_heads=3, hidden_size=64); allowed: 1, 2, 4, 8, 16, 32, 64"
    )
    found = problems(minimal("reward_model", reward_model={"architecture": "lama"}))
    assert found == {
        "reward_model.architecture": "unknown model architecture 'lama'; allowed: gpt2, llama, qwen2; "
        "did you mean 'llama'?"
    }
    assert "policy.path, architecture" not in problems(minimal(policy={"hidden_size": 64}))


def test_every_problem_is_reported_at_once() -> None:
    """Field errors and cross-section errors together (pydantic alone skips the latter when a field fails)."""
    data = minimal(
        policy={"architecture": "llama", "num_heads": 3},
        critic={"architecture": "llama"},
        trainer={"prompts_per_step": 12, "micro_batch_size": 4, "max_step": 3},
        hardware={"devices": 2},
    )
    with pytest.raises(ConfigError) as err:
        validate_dict(data, source="exp.yaml")
    assert [p.path for p in err.value.problems] == [
        "policy.num_heads",
        "policy.num_kv_heads",
        "trainer.max_step",
        "critic",
        "trainer.prompts_per_step",
    ]
    assert str(err.value).startswith("exp.yaml: 5 problems in the config\n  - policy.num_heads: must divide")


@pytest.mark.parametrize("algorithm", sorted(MINIMAL))
def test_saved_config_loads_back_unchanged(algorithm: str, tmp_path: Path) -> None:
    """run.py writes model_dump() as config.yaml; loading that file gives the same config (`preset: null` too)."""
    cfg = validate_dict(minimal(algorithm))
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    assert load_config(saved).model_dump() == cfg.model_dump()


def test_schema_has_one_algorithm_config_per_registered_algorithm() -> None:
    from alignkit.algorithms import ALGORITHMS

    assert set(MINIMAL) == set(ALGORITHMS.names()), "add the new algorithm's smallest config to conftest.MINIMAL"
    for name in ALGORITHMS.names():
        assert type(validate_dict(minimal(name)).algorithm) is ALGORITHMS.get(name).Config
    assert experiment_schema() is experiment_schema()  # built once
