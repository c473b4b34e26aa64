"""Pipeline files: defaults merging, `from_stage` references, run order, reuse decisions and error paths."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from alignkit.cli import main
from alignkit.config.errors import ConfigError
from alignkit.pipeline import (
    PENDING,
    derive_seed,
    find_run,
    load_pipeline,
    merge_defaults,
    plan,
    replace_refs,
    run_pipeline,
    stage_config,
    stage_refs,
)

WriteYaml = Callable[[str, str], Path]
TINY = "{architecture: llama, hidden_size: 32, num_layers: 1, num_heads: 2}"
PIPELINE = f"""
    name: pipe
    defaults:
      data: {{max_length: 64}}
      trainer: {{max_steps: 3, prompts_per_step: 4, micro_batch_size: 4, seed: 7}}
      hardware: {{accelerator: cpu, strategy: single}}
      logging: {{root: ROOT, progress_bar: false}}
    stages:
      dpo:                                   # declared before the stage it reads from
        algorithm: {{name: dpo}}
        policy: {{from_stage: sft}}
        data: {{train: {{generator: sentiment_pairs, args: {{n: 16}}}}}}
        trainer: {{max_steps: 2}}
      sft:
        algorithm: {{name: sft}}
        policy: {TINY}
        data: {{train: {{generator: reverse_words, args: {{n: 16}}}}}}
"""


def pipeline_file(write_yaml: WriteYaml, tmp_path: Path, text: str = PIPELINE) -> Path:
    return write_yaml("pipe.yaml", text.replace("ROOT", str(tmp_path / "runs")))


def test_merge_defaults_merges_settings_and_replaces_what_names_itself() -> None:
    defaults = {
        "trainer": {"max_steps": 3, "optimizer": {"lr": 0.1}},
        "policy": {"preset": "tiny-llama", "dtype": "float32"},
        "hardware": {"preset": "cpu"},
    }
    stage = {"trainer": {"optimizer": {"name": "sgd"}}, "policy": {"from_stage": "sft"}, "hardware": {"devices": 1}}
    merged = merge_defaults(defaults, stage)
    assert merged["trainer"] == {"max_steps": 3, "optimizer": {"lr": 0.1, "name": "sgd"}}
    assert merged["policy"] == {"from_stage": "sft"}  # a from_stage model is not mixed with a preset
    assert merged["hardware"] == {"preset": "cpu", "devices": 1}
    assert defaults["trainer"]["optimizer"] == {"lr": 0.1}  # not modified


def test_refs_found_and_replaced_at_any_depth() -> None:
    stage = {
        "policy": {"from_stage": "sft", "dtype": "bfloat16"},
        "reward": {"source": {"kind": "model", "model": {"from_stage": "rm", "output": "reward_model"}}},
    }
    assert [p for p, _ in stage_refs(stage)] == ["policy", "reward.source.model"]
    out = replace_refs(stage, lambda s, o: f"/runs/{s}/hf/{o or 'policy'}")
    assert out["policy"] == {"path": "/runs/sft/hf/policy", "dtype": "bfloat16"}
    assert out["reward"]["source"]["model"] == {"path": "/runs/rm/hf/reward_model"}


def test_load_orders_stages_and_validates_each(write_yaml: WriteYaml, tmp_path: Path) -> None:
    pipeline = load_pipeline(pipeline_file(write_yaml, tmp_path))
    assert list(pipeline.stages) == ["sft", "dpo"]  # dpo reads sft, so sft runs first
    dpo = pipeline.stages["dpo"]
    assert dpo.needs == ["sft"] and dpo.config.trainer.max_steps == 2 and dpo.config.trainer.seed == 7
    assert dpo.config.policy.path == str(tmp_path / "runs" / "pipe" / "sft" / PENDING / "hf" / "policy")
    assert dpo.config.logging.root == str(tmp_path / "runs" / "pipe") and dpo.config.name == "dpo"
    assert pipeline.upstream(["dpo"]) == ["sft", "dpo"] and pipeline.upstream(["sft"]) == ["sft"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("from_stage: sft", "from_stage: sfd"), "stages.dpo.policy.from_stage: unknown stage 'sfd'"),
        (("from_stage: sft", "from_stage: sft, output: critic"), "stages.dpo.policy.output: stage 'sft' trains no"),
        (("max_steps: 2", "max_stepz: 2"), "stages.dpo.trainer.max_stepz: unknown key 'max_stepz'"),
        (("    name: pipe", "    name: pipe\n    stagez: {}"), "stagez: unknown pipeline key"),
        ((f"policy: {TINY}", "policy: {from_stage: dpo}"), "cycle: dpo -> sft -> dpo"),
        (("      sft:\n", "      compare:\n"), "stages.compare: 'compare' is a directory name alignkit reserves"),
        (("      sft:\n", "      seed_1:\n"), "stages.seed_1: 'seed_1' is a directory name alignkit reserves"),
    ],
)
def test_problems_name_their_path(write_yaml: WriteYaml, tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    text = PIPELINE.replace(*edit, 1)
    with pytest.raises(ConfigError) as err:
        load_pipeline(pipeline_file(write_yaml, tmp_path, text))
    assert expected in str(err.value), str(err.value)


def test_an_adapter_is_read_only_from_a_stage_that_trains_one(write_yaml: WriteYaml, tmp_path: Path) -> None:
    """`output: policy_adapter` is the PEFT adapter beside the merged export, which only LoRA stages write."""
    text = PIPELINE.replace("from_stage: sft", "from_stage: sft, output: policy_adapter", 1)
    with pytest.raises(ConfigError) as err:
        load_pipeline(pipeline_file(write_yaml, tmp_path, text))
    assert "stage 'sft' trains no 'policy_adapter'; allowed: policy" in str(err.value)
    assert "policy_adapter" not in str(err.value).split("allowed:")[1]
    adapted = text.replace(f"policy: {TINY}", f"policy: {TINY[:-1]}, lora: {{rank: 4}}}}", 1)
    dpo = load_pipeline(pipeline_file(write_yaml, tmp_path, adapted)).stages["dpo"]
    assert dpo.config.policy.path == str(tmp_path / "runs" / "pipe" / "sft" / PENDING / "hf" / "policy_adapter")


def test_compare_section_checked(write_yaml: WriteYaml, tmp_path: Path) -> None:
    text = PIPELINE + (
        "    compare:\n      baseline: sfx\n      runs: [dpo, sft2]\n"
        "      prompts: {generator: reverse_words}\n      true_reward: {kind: rule, name: length_target}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline(pipeline_file(write_yaml, tmp_path, text))
    assert "compare.baseline: unknown stage 'sfx'" in str(err.value)
    assert "compare.runs[1]: unknown stage 'sft2'" in str(err.value)


def test_compare_pass_at_k_needs_as_many_samples_as_its_largest_k(write_yaml: WriteYaml, tmp_path: Path) -> None:
    text = PIPELINE + (
        "    compare:\n      prompts: {generator: reverse_words}\n"
        "      true_reward: {kind: rule, name: length_target}\n"
        "      pass_at_k: {k: [1, 4, 16], samples: 8, by: null}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline(pipeline_file(write_yaml, tmp_path, text))
    assert [str(p) for p in err.value.problems] == [
        "compare.pass_at_k.samples: pass@16 needs at least 16 samples per prompt (got 8); set "
        "compare.pass_at_k.samples to 16 or more, or drop the k above 8"
    ]
    spec = load_pipeline(pipeline_file(write_yaml, tmp_path, text), ["compare.pass_at_k.samples=16"]).compare
    assert spec is not None and spec.pass_at_k is not None and spec.pass_at_k.by is None


def _fake_run(stage_root: Path, version: int, config: dict, status: str, *, ckpt: bool = False) -> Path:
    run = stage_root / f"version_{version}"
    (run / "hf" / "policy").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "run.json").write_text(json.dumps({"status": status}))
    if ckpt:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    return run


def test_find_run_reuses_only_a_finished_run_of_the_same_config(write_yaml: WriteYaml, tmp_path: Path) -> None:
    stage = load_pipeline(pipeline_file(write_yaml, tmp_path)).stages["sft"]
    config = stage.config
    same = config.model_dump(mode="json")
    assert find_run(stage, config) == ("new", None)
    other = {**same, "trainer": {**same["trainer"], "max_steps": 99}}
    _fake_run(stage.root, 0, other, "finished")
    assert find_run(stage, config) == ("new", None)  # another config is never reused
    crashed = _fake_run(stage.root, 1, {**same, "description": "edited text only"}, "failed", ckpt=True)
    assert find_run(stage, config) == ("resume", crashed / "checkpoints" / "last.ckpt")
    done = _fake_run(stage.root, 2, same, "finished")
    assert find_run(stage, config) == ("reuse", done)


def test_cli_validate_and_show_a_pipeline(
    write_yaml: WriteYaml, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline_file(write_yaml, tmp_path)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid pipeline" in out and "  sft: sft (runs into" in out and "  dpo: dpo, reads sft (runs into" in out
    assert out.count("(runs into") == 2
    assert main(["show", str(path), "stages.dpo.trainer.max_steps=5"]) == 0
    shown = capsys.readouterr().out
    assert "# dpo (new: " in shown and "max_steps: 5" in shown
    assert main(["run", str(path), "--stages", "ppo"]) == 2
    assert "--stages: unknown stage(s) ppo" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("    name: pipe", "    name: [pipe]"), {"name": "should be a string (got ['pipe'])"}),
        (("    name: pipe", "    name: pipe\n    description: 3"), {"description": "should be a string (got 3)"}),
        (
            ("    name: pipe", "    name: pipe\n    stages: [sft]"),
            {"": "not valid YAML at line 9, column 1: found duplicate key stages"},
        ),
        (
            ("logging: {root: ROOT, progress_bar: false}", "logging: [ROOT]"),
            {"defaults.logging": "should be a mapping"},
        ),
        (
            ("logging: {root: ROOT, progress_bar: false}", "logging: {root: [ROOT]}"),
            {"defaults.logging.root": "should"},
        ),
        (
            ("logging: {root: ROOT, progress_bar: false}", 'logging: {root: "a\\0b"}'),  # YAML's \0: a NUL
            {"defaults.logging.root": "not a"},
        ),
        (("    name: pipe", f"    name: {'p' * 300}"), {"name": "not a usable directory name (got 'ppppppppp"}),
        (("    defaults:\n", "    defaults:\n      name: x\n"), {"defaults.name": "not allowed in defaults: each"}),
        (
            ("trainer: {max_steps: 2}", "trainer: {max_steps: 2}\n        logging: 3"),
            {"stages.dpo.logging": "should be"},
        ),
        (
            ("trainer: {max_steps: 2}", "trainer: {max_steps: 2}\n        logging: {root: elsewhere}"),
            {"stages.dpo.logging.root": "not allowed in a stage: every stage runs under <defaults.logging.root>/"},
        ),
        (("algorithm: {name: dpo}", "algorithm: {name: [dpo]}"), {"stages.dpo.algorithm.name": "unknown algorithm"}),
        (("      sft:\n", f"      {'s' * 300}:\n"), {f"stages.{'s' * 300}": "a stage name must be a short Python"}),
    ],
)
def test_pipeline_sections_of_the_wrong_kind(
    write_yaml: WriteYaml, tmp_path: Path, edit: tuple[str, str], expected: dict[str, str]
) -> None:
    """Each of these raised AttributeError, TypeError or OSError (a name too long to look up) before."""
    with pytest.raises(ConfigError) as err:
        load_pipeline(pipeline_file(write_yaml, tmp_path, PIPELINE.replace(*edit, 1)))
    found = {p.path: p.message for p in err.value.problems}
    for path, start in expected.items():
        assert found.get(path, "").startswith(start), found


def test_pipeline_overrides_and_compare_numbers(write_yaml: WriteYaml, tmp_path: Path) -> None:
    path = pipeline_file(write_yaml, tmp_path)
    with pytest.raises(ConfigError) as err:
        load_pipeline(path, ["stages=3", "stages.sft.trainer.seed=1"])
    assert str(err.value).endswith(
        "stages: override 'stages.sft.trainer.seed=1' sets a key inside a value that is not a mapping (got 3, set by "
        "override 'stages=3'); set the whole value instead, e.g. stages={sft: {trainer: {seed: 1}}}"
    )
    compare = "compare: {prompts: {generator: reverse_words}, true_reward: {kind: rule, name: length_target}}"
    path = pipeline_file(write_yaml, tmp_path, PIPELINE + "    " + compare + "\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(path, [f"compare.max_new_tokens={10**30}", "compare.temperature=.inf", "stages.dpo.x=1"])
    found = {p.path: p.message for p in err.value.problems}
    assert found["compare.max_new_tokens"].startswith(f"integer too large (got {10**30})")
    assert found["compare.temperature"].startswith("should be a finite number (got inf)")
    assert found["stages.dpo.x"].startswith("unknown key 'x'")


def test_cli_validate_of_a_hostile_pipeline_is_an_error_not_a_traceback(
    write_yaml: WriteYaml, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline_file(write_yaml, tmp_path, PIPELINE.replace("logging: {root: ROOT", 'logging: {root: "a\\0b"', 1))
    assert main(["validate", str(path)]) == 2
    assert "defaults.logging.root: not a usable directory name" in capsys.readouterr().err
    path.write_bytes(path.read_bytes().replace(b"name: pipe", b"name: \xff"))
    assert main(["validate", str(path)]) == 2
    assert "not UTF-8 text: byte 0xff at line 2, column 7" in capsys.readouterr().err


SEEDED = (
    PIPELINE
    + """
      rm:
        algorithm: {name: reward_model}
        reward_model: {from_stage: sft}
        data: {train: {generator: sentiment_pairs, args: {n: 16, seed: 5}}}
    compare:
      prompts: {generator: reverse_words}
      true_reward: {kind: rule, name: length_target}
      seeds: [0, 3]
      shared: [sft]
"""
)


def test_seeds_expand_every_stage_once_per_seed_and_shared_stages_once(write_yaml: WriteYaml, tmp_path: Path) -> None:
    """seeds [0, 3], shared [sft]: sft once (the file's seed 7, <root>/pipe/sft), dpo and rm per seed under
    seed_<k>/ with trainer.seed = k and generator seeds derived (seed 0 keeps the file's 5), both reading the
    one sft; a planned run's path is known before anything runs, so downstream configs hold real paths."""
    pipeline = load_pipeline(pipeline_file(write_yaml, tmp_path, SEEDED))
    root = tmp_path / "runs" / "pipe"
    assert list(pipeline.nodes) == ["sft", "seed_0/dpo", "seed_3/dpo", "seed_0/rm", "seed_3/rm"]
    steps = plan(pipeline)
    assert {label: (s.action, s.run) for label, s in steps.items()} == {
        "sft": ("new", root / "sft" / "version_0"),
        "seed_0/dpo": ("new", root / "seed_0" / "dpo" / "version_0"),
        "seed_3/dpo": ("new", root / "seed_3" / "dpo" / "version_0"),
        "seed_0/rm": ("new", root / "seed_0" / "rm" / "version_0"),
        "seed_3/rm": ("new", root / "seed_3" / "rm" / "version_0"),
    }
    config = {label: s.node.config for label, s in steps.items()}
    assert config["sft"].trainer.seed == 7 and config["seed_3/dpo"].trainer.seed == 3
    assert (
        config["seed_0/dpo"].policy.path
        == config["seed_3/rm"].reward_model.path
        == str(root / "sft" / "version_0" / "hf" / "policy")
    )
    seeds = [config[f"seed_{k}/rm"].data.train.args["seed"] for k in (0, 3)]
    assert seeds[0] == 5 and seeds[1] not in (5, 3, 8) and seeds[1] == derive_seed(5, 3)
    assert config["seed_3/dpo"].logging.root == str(root / "seed_3") and config["seed_3/dpo"].name == "dpo"
    assert pipeline.reads(pipeline.nodes["seed_3/rm"]) == ["sft"]
    assert [label for label in pipeline.upstream_nodes(["dpo"])] == ["sft", "seed_0/dpo", "seed_3/dpo"]
    job = stage_config(steps["seed_3/dpo"])  # what the stage's process runs: the planned version
    assert job.logging.version == "version_0" and job.trainer.seed == 3

    count = load_pipeline(pipeline_file(write_yaml, tmp_path, SEEDED), ["compare.seeds=2", "compare.shared=[]"])
    assert list(count.nodes) == ["seed_0/sft", "seed_1/sft", "seed_0/dpo", "seed_1/dpo", "seed_0/rm", "seed_1/rm"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["compare.shared=[rm]"], "compare.shared[0]: stage 'rm' reads sft, which runs once per seed; share sft too"),
        (
            ["compare.shared=[sfx]"],
            "compare.shared[0]: unknown stage 'sfx'; allowed: sft, dpo, rm; did you mean 'sft'?",
        ),
        (["compare.seeds=[1, 1]"], "compare.seeds: a seed appears twice (got [1, 1])"),
        (["compare.seeds=null"], "compare.shared: shares stages across seeds, and compare.seeds is not set"),
        (["compare.seeds=0"], "compare.seeds"),
    ],
)
def test_seed_settings_that_cannot_work(
    write_yaml: WriteYaml, tmp_path: Path, overrides: list[str], expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_pipeline(pipeline_file(write_yaml, tmp_path, SEEDED), overrides)
    assert expected in str(err.value), str(err.value)


def test_jobs_resume_into_their_own_log_and_cpu_ddp_shares_its_cores(
    write_yaml: WriteYaml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unfinished sft run resumes: its job runs a config with checkpoint.resume, logged to
    version_1.resume1.log so version_1.log of the first attempt stays; dpo on two CPU processes gets
    cores / (2 jobs x 2 processes) threads per process (at least 1)."""
    import alignkit.executor

    path = pipeline_file(write_yaml, tmp_path)
    ddp = ["stages.dpo.hardware={accelerator: cpu, strategy: ddp, devices: 2}", "stages.dpo.trainer.micro_batch_size=2"]
    pipeline = load_pipeline(path, ddp)
    sft = pipeline.stages["sft"]
    _fake_run(sft.root, 0, {"other": 1}, "finished")
    _fake_run(sft.root, 1, sft.config.model_dump(mode="json"), "failed", ckpt=True)
    (sft.root / "version_1.log").write_text("first attempt\n")
    seen = {}

    def fake_run_jobs(jobs: list, **kwargs: object) -> dict:
        seen.update({job.name: job for job in jobs})
        return {}

    monkeypatch.setattr(alignkit.executor, "run_jobs", fake_run_jobs)
    monkeypatch.setattr(alignkit.executor, "usable_cores", lambda: 8)
    result = run_pipeline(pipeline, jobs=2, log=lambda _: None)
    assert seen["sft"].log == sft.root / "version_1.resume1.log"
    config = yaml.safe_load((sft.root / "version_1.resume1.yaml").read_text())
    assert config["checkpoint"]["resume"] == str(sft.root / "version_1" / "checkpoints" / "last.ckpt")
    assert (sft.root / "version_1.log").read_text() == "first attempt\n"
    assert seen["dpo"].env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"} and seen["sft"].env == {}
    assert seen["dpo"].needs == ("sft",)
    assert set(result.failed) == {"sft", "dpo"}  # nothing finished: both reported, not raised
