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
        "unknown preset 'tiny-lama' (in registry/models/); allowed: llama-1b-like, qwen2-90m-vocab, qwen25-05b-like, "
        "small-llama, tiny-gpt2, tiny-llama, tiny-qwen2-bpe, tiny-qwen2; did you mean 'tiny-llama'?"
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
        r"  - trainer\.max_step: unknown key 'max_step'; allowed: "
        r".*max_epochs, max_steps, max_tokens_per_micro_batch, micro_batch_size.*; "
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
            "intermediate_size, max_position_embeddings, vocab_size, tie_embeddings, init_seed, dtype, "
            "attn_implementation, lora, or null; to use a preset, write `policy: {preset: tiny-llama}`",
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


# -- hostile input: every bad file ends in ConfigError with its path and a fix ---------------------------


def test_a_base_section_of_another_kind_is_replaced_and_checked(write_yaml: WriteYaml) -> None:
    """A list or scalar over the base file's mapping replaces it (omegaconf's merge raised TypeError)."""
    write_yaml("base.yaml", SFT_YAML + "trainer: {max_steps: 3}\n")
    for value, got in (("[1, 2]", "[1, 2]"), ("3", "3")):
        found = load_problems(write_yaml("child.yaml", f"base: base.yaml\ntrainer: {value}\n"))
        assert found["trainer"].startswith(f"should be a valid dictionary or instance of TrainerSpec (got {got})")
    write_yaml("base2.yaml", SFT_YAML + "description: [a]\nhardware: {fsdp: {cpu_offload: false}}\n")
    child = write_yaml("child2.yaml", "base: base2.yaml\ndescription: {x: 1}\nhardware: {fsdp: [1]}\n")
    found = load_problems(child)
    assert found["description"].startswith("should be a valid string (got {'x': 1})")
    assert found["hardware.fsdp"].startswith("should be a valid dictionary or instance of FSDPSpec (got [1])")


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("true", {"base": "should be a YAML file name, relative to this file (got True); e.g. `base: ../"}),
        ("3", {"base": "should be a YAML file name, relative to this file (got 3)"}),
        ("{a: b}", {"base": "should be a YAML file name, relative to this file (got {'a': 'b'})"}),
        ("''", {"base": "should be a YAML file name, relative to this file (got '')"}),
        ("[1, null]", {"base[0]": "should be a YAML file name", "base[1]": "should be a YAML file name"}),
        ("[ok.yaml, nope.yaml, .]", {"base[1]": "config file not found: ", "base[2]": " is a directory, not a YAML"}),
        ("binary.yaml", {"": "not UTF-8 text: byte 0x80 at line 2, column 118 (is it a binary file?)"}),
    ],
)
def test_base_of_the_wrong_kind(write_yaml: WriteYaml, base: str, expected: dict[str, str]) -> None:
    ok = write_yaml("ok.yaml", SFT_YAML)
    (ok.parent / "binary.yaml").write_bytes(bytes(range(256)))
    found = load_problems(write_yaml("top.yaml", f"base: {base}\n" + SFT_YAML))
    assert found.keys() == expected.keys(), found
    for path, start in expected.items():
        assert start in found[path], found[path]


def test_base_in_a_symlink_loop(write_yaml: WriteYaml) -> None:
    top = write_yaml("top.yaml", "base: loop_a\n" + SFT_YAML)
    (top.parent / "loop_a").symlink_to(top.parent / "loop_b")
    (top.parent / "loop_b").symlink_to(top.parent / "loop_a")
    assert load_problems(top)["base"].startswith("cannot look up 'loop_a'")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x00\x01\x02", "not text: a NUL character at line 1 (is it a binary file?)"),
        (SFT_YAML.encode() + b"description: caf\xe9\n", "not UTF-8 text: byte 0xe9 at line 4, column 17"),
        (b"3\n", "the file must hold a mapping of sections (got 3); e.g. `algorithm: {name: sft}`"),
        (b"- a\n", "the file must hold a mapping of sections (got ['a'])"),
        (b"a: [1, 2\n", "not valid YAML at line 2, column 1: did not find expected ',' or ']'"),
        (SFT_YAML.encode() + b"algorithm: {}\n", "not valid YAML at line 4, column 1: found duplicate key algorithm"),
        (b"? [a, b]\n: x\n", "not valid YAML at line 1, column 3: found unhashable key"),
    ],
)
def test_files_that_are_not_a_yaml_mapping(write_yaml: WriteYaml, content: bytes, problem: str) -> None:
    path = write_yaml("x.yaml", "")
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_dict(path)
    assert [p.path for p in err.value.problems] == [""]  # the whole file is the problem
    assert err.value.problems[0].message.startswith(problem), err.value.problems[0].message
    assert str(err.value).startswith(f"{path}: 1 problem")


def test_a_directory_an_unreadable_file_and_unicode_encodings(
    write_yaml: WriteYaml, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_yaml("x.yaml", SFT_YAML)
    with pytest.raises(ConfigError, match=r"is a directory, not a YAML file"):
        load_dict(path.parent)
    path.write_bytes(SFT_YAML.encode("utf-16"))  # YAML's other encodings work by their byte-order mark
    assert load_config(path).algorithm.name == "sft"
    path.write_bytes(b"\xef\xbb\xbf" + SFT_YAML.encode())
    assert load_config(path).algorithm.name == "sft"
    path.write_text("")
    assert "algorithm" in load_problems(path)  # an empty file is an empty config
    # tests run as root, whom chmod 000 does not stop: fail the read itself
    monkeypatch.setattr(
        Path, "read_bytes", lambda self: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
    )
    assert load_problems(path)[""] == "cannot read the file: Permission denied; check that it is readable (chmod +r)"


def test_anchors_aliases_and_merge_keys_work(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "x.yaml",
        SFT_YAML.replace("algorithm: {name: sft}", "algorithm: &algo {name: sft}")
        + "trainer: &t {max_steps: 5, seed: 3}\ncheckpoint: {every_n_steps: 2}\ndescription: &d text\n"
        + "logging: {root: *d}\nhardware:\n  <<: {devices: 1}\n  accelerator: cpu\n",
    )
    cfg = load_config(path)
    assert (cfg.trainer.max_steps, cfg.logging.root, cfg.hardware.accelerator) == (5, "text", "cpu")


def test_alias_bomb_and_endless_alias_are_refused_at_once(write_yaml: WriteYaml) -> None:
    """A billion-laughs file: 9 levels of 10 aliases each would expand to 10^9 values."""
    levels = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
    )
    found = load_problems(write_yaml("bomb.yaml", SFT_YAML + levels))
    (path, message), *_ = found.items()
    assert message.startswith("the file expands to more than 10000 values (line 7, column"), message
    assert "an alias (*name) repeats its anchor's whole value" in message and re.fullmatch(r"[a-i]\[\d\]", path)
    assert load_problems(write_yaml("loop.yaml", SFT_YAML + "x: &a [1, *a]\n")) == {
        "x[1]": "the alias *a is inside its own anchor &a (line 4, column 11), which makes an endless value; "
        "write the value out instead"
    }


@pytest.mark.parametrize(
    "text",
    [
        "description: " + "[" * 200 + "]" * 200,  # flow style
        "x:\n" + "".join("  " * (i + 1) + "a:\n" for i in range(300)),  # block style
        f"a: &a {'[' * 40}1{']' * 40}\nb: {'[' * 40}*a{']' * 40}\n",  # 80 deep once the alias is expanded
    ],
)
def test_very_deep_nesting_is_refused_before_anything_recurses(write_yaml: WriteYaml, text: str) -> None:
    found = load_problems(write_yaml("deep.yaml", SFT_YAML + text))
    assert len(found) == 1
    ((path, message),) = found.items()
    assert re.match(r"nested more than 64 levels deep \(line \d+, column \d+\)", message), message
    assert path.split(".")[0].split("[")[0] in ("description", "x", "b")


def test_deep_or_self_referring_python_dicts_are_config_errors() -> None:
    from alignkit.config.load import config_from_dict

    deep = minimal()
    node = deep
    for _ in range(3000):
        node["description"] = node = {}
    looped = minimal()
    looped["data"]["train"]["args"]["me"] = looped
    for data in (deep, looped):
        for load in (config_from_dict, validate_dict):
            with pytest.raises(ConfigError, match="nested more than 64 levels deep"):
                load(data)


def test_huge_and_non_finite_numbers(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "x.yaml",
        SFT_YAML
        + f"trainer: {{max_steps: {10**400}, seed: {2**63}, prompts_per_step: {10**30}, micro_batch_size: 3}}\n"
        + "checkpoint: {keep: -9223372036854775809}\nreward_model: {}\n",
    )
    found = load_problems(
        path, "trainer.optimizer.lr=.inf", "trainer.optimizer.eps=.nan", "trainer.gradient_clip_val=1e400"
    )
    int64 = "allowed: -9223372036854775808 to 9223372036854775807 (int64)"
    assert found["trainer.max_steps"] == f"integer too large (got an integer of 401 digits); {int64}"
    assert found["trainer.seed"] == f"integer too large (got 9223372036854775808); {int64}"
    assert found["trainer.prompts_per_step"] == f"integer too large (got {10**30}); {int64}"
    assert found["checkpoint.keep"].startswith("integer too large (got -9223372036854775809)")
    for key, got in (("optimizer.lr", "inf"), ("optimizer.eps", "nan"), ("gradient_clip_val", "inf")):
        assert found[f"trainer.{key}"].startswith(f"should be a finite number (got {got}); allowed: a number > 0")
    assert "reward_model" in found  # the other problems are still reported
    # past Python's 4300-digit limit on reading an int, the file cannot be read on
    path.write_text(SFT_YAML + f"trainer: {{seed: 1{'0' * 5000}}}\n")
    assert load_problems(path) == {"trainer.seed": f"integer too large (got an integer of 5001 digits); {int64}"}


def test_no_section_accepts_inf_or_nan() -> None:
    """`gt=0` alone lets .inf through; every float of every section is a rate, weight, size or threshold."""
    from alignkit.config.base import Spec

    def subclasses(cls: type) -> Iterator[type]:
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    experiment_schema()  # every registered algorithm's Config is imported
    specs = list(subclasses(Spec))
    assert len(specs) > 20
    assert [s.__name__ for s in specs if s.model_config.get("allow_inf_nan") is not False] == []


@pytest.mark.parametrize(
    ("line", "path", "message"),
    [
        ("1: x", "1", "keys must be strings (got 1, an integer); quote it, e.g. '1': ..."),
        ("null: x", "null", "keys must be strings (got None, null); quote it, e.g. 'null': ..."),
        ("trainer: {on: 1}", "trainer.true", "keys must be strings (got True, a boolean); quote it, e.g. 'true': ..."),
        ("trainer: {1.5: x}", "trainer.1.5", "keys must be strings (got 1.5, a number)"),
    ],
)
def test_keys_yaml_reads_as_numbers_booleans_or_null(write_yaml: WriteYaml, line: str, path: str, message: str) -> None:
    assert load_problems(write_yaml("x.yaml", SFT_YAML + line + "\n"))[path].startswith(message)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["trainer=3", "trainer.max_steps=1"],
            {
                "trainer": "override 'trainer.max_steps=1' sets a key inside a value that is not a mapping (got 3, "
                "set by override 'trainer=3'); set the whole value instead, e.g. trainer={max_steps: 1}"
            },
        ),
        (
            ["description.a.b=1"],
            {"description": "override 'description.a.b=1' sets a key inside a value that is not a mapping (got 'd')"},
        ),
        (["trainer=[1]"], {"trainer": "should be a valid dictionary or instance of TrainerSpec (got [1])"}),
        (["algorithm.name=[1, 2]"], {"algorithm.name": "unknown algorithm '[1, 2]'; allowed: bandit_study, "}),
        (["trainer.max_steps=[1"], {"trainer.max_steps": "override 'trainer.max_steps=[1': not valid YAML at line"}),
        (["a..b=1", "=1"], {"": "override '=1' is not key=value, e.g. trainer.max_steps=10"}),
        (
            ["trainer.seed=\udcff"],
            {"": "override 'trainer.seed=\\udcff' holds '\\udcff' at character 14, which is not"},
        ),
        (["trainer.seed=" + "[" * 70 + "]" * 70], {"trainer.seed" + "[0]" * 62: "override 'trainer.seed=[[[[[[[["}),
    ],
)
def test_overrides_that_clash_with_the_file_or_do_not_parse(
    write_yaml: WriteYaml, overrides: list[str], expected: dict[str, str]
) -> None:
    found = load_problems(write_yaml("x.yaml", SFT_YAML + "description: d\n"), *overrides)
    for path, start in expected.items():
        assert found[path].startswith(start), found


def test_interpolations_that_do_not_parse_or_recurse(write_yaml: WriteYaml) -> None:
    path = write_yaml("x.yaml", SFT_YAML + "description: ${a\nlogging: {root: '${logging.root}'}\n")
    found = load_problems(path)
    assert found["description"].startswith("invalid interpolation (got '${a'): no viable alternative at input")
    assert found["logging.root"] == "cannot resolve '${logging.root}': Recursive interpolation detected"


@pytest.mark.parametrize("name", ["../models/tiny-llama", "x" * 5000, "[1]", "''", ".hidden"])
def test_preset_names_are_names_not_paths(write_yaml: WriteYaml, name: str) -> None:
    found = load_problems(write_yaml("x.yaml", f"algorithm: {{name: sft}}\npolicy: {{preset: {name}}}\n"))
    assert found["policy.preset"].startswith("should be a preset name (got ")
    assert (
        "allowed: llama-1b-like, qwen2-90m-vocab, qwen25-05b-like, small-llama, tiny-gpt2, tiny-llama, tiny-qwen2"
        in found["policy.preset"]
    )


def test_an_item_of_a_plain_union_is_one_problem_at_the_item() -> None:
    """Bandit budgets are 'released', 'converged' or an optimiser section: not one problem per member."""
    data = minimal("bandit_study")
    data["algorithm"]["budgets"] = [3, "relased", {"name": "adamm"}, {"name": "adam", "lr": -1}]
    data["algorithm"]["methods"] = ["dpo", "dpp"]
    found = problems(data)
    allowed = "allowed: released, converged or a mapping with `name` (one of adagrad_norm, adam, adamw, lbfgs)"
    assert found["algorithm.budgets[0]"].startswith(f"invalid value (got 3); {allowed}")
    assert found["algorithm.budgets[1]"].endswith("; did you mean 'released'?")
    assert found["algorithm.budgets[2]"].endswith("; did you mean 'adam'?")
    assert found["algorithm.budgets[3].lr"].startswith("should be greater than 0 (got -1)")
    assert (
        found["algorithm.methods[1]"]
        == "invalid value (got 'dpp'); allowed: dpo, rmb_po, rmb_po_plus; did you mean 'dpo'?"
    )
    assert len(found) == 5


@pytest.mark.parametrize(
    "content", [bytes(range(256)), b"stages: " + b"[" * 3000 + b"]" * 3000, b"stages: {a: [1}", b"\xff\xfe\x00\x00"]
)
def test_cli_validate_of_a_hostile_file_is_an_error_not_a_traceback(
    write_yaml: WriteYaml, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    path = write_yaml("x.yaml", "")
    path.write_bytes(content)
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {path}: 1 problem in the config\n  - ")


def test_huge_sizes_are_answered_at_once_with_a_bounded_fix() -> None:
    """The fix for a size that does not divide is searched among small divisors: no loop up to the value."""
    found = problems(minimal("sft", trainer={"prompts_per_step": 3, "micro_batch_size": 2**40}))
    assert found["trainer.prompts_per_step"].endswith(f"set prompts_per_step to {2**40} or micro_batch_size to 3")
    policy = {"architecture": "llama", "hidden_size": 2**40, "num_layers": 1, "num_heads": 3, "num_kv_heads": 1}
    assert problems(minimal("sft", policy=policy))["policy.num_heads"].endswith(
        "allowed: " + ", ".join(str(2**k) for k in range(12)) + ", ..."
    )


@pytest.mark.parametrize("name", ["a/b", "..", ".", "", "x\x00y", "n" * 300])
def test_the_experiment_name_is_one_directory_name(name: str) -> None:
    assert problems(minimal("sft", name=name))["name"].startswith("must be a plain directory name")


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_lightning_cannot_use_is_refused(seed: int) -> None:
    assert (
        "allowed: an integer >= 0 and <= 4294967295" in problems(minimal("sft", trainer={"seed": seed}))["trainer.seed"]
    )
