"""Every registered algorithm trains 3 optimizer steps on CPU and leaves a complete, self-describing run."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import MINIMAL, minimal
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from alignkit.algorithms import ALGORITHMS
from alignkit.config.load import load_config, validate_dict
from alignkit.models import build_causal_lm, build_scalar_model, load_tokenizer
from alignkit.run import run
from alignkit.rundir import RunError

# How each model section is exported and loaded back.
HF_CLASS = {
    "policy": AutoModelForCausalLM,
    "reference": AutoModelForCausalLM,
    "critic": AutoModelForSequenceClassification,
    "reward_model": AutoModelForSequenceClassification,
}


def tiny_run(algorithm: str, root: Path, **sections: Any) -> Any:
    """MINIMAL[algorithm] (tests/conftest.py) for 3 steps of 4 examples, with a small held-out split."""
    assert algorithm in MINIMAL, (
        f"algorithm '{algorithm}' has no entry in tests/conftest.py MINIMAL: add its smallest valid config "
        "(tiny model, generated data) so that it is trained here and validated in the unit tests"
    )
    data = minimal(algorithm)
    data["data"] = {**data["data"], "eval_fraction": 0.125}
    data.update(
        trainer={
            "max_steps": 3,
            "prompts_per_step": 4,
            "micro_batch_size": 4,
            "log_every_n_steps": 1,
            "limit_eval_batches": 1,
            "optimizer": {"lr": 1e-2},
        },
        hardware={"accelerator": "cpu", "strategy": "single"},
        logging={"root": str(root), "progress_bar": False},
    )
    data.update(sections)
    return validate_dict(data)


def test_every_registered_algorithm_has_a_tiny_config() -> None:
    assert set(MINIMAL) == set(ALGORITHMS.names())


TRAINED = [name for name in ALGORITHMS.names() if not hasattr(ALGORITHMS.get(name).load(), "launch")]
STUDIES = [name for name in ALGORITHMS.names() if hasattr(ALGORITHMS.get(name).load(), "launch")]


@pytest.mark.parametrize("algorithm", STUDIES)
def test_study_runs_and_writes_its_report(algorithm: str, tmp_path: Path) -> None:
    """A study trains each method on every setting and writes tables, per-method TensorBoard runs, a run record."""
    data = minimal(algorithm, logging={"root": str(tmp_path), "progress_bar": False})
    result = run(validate_dict(data))
    run_dir = result.run_dir
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    with open(run_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"dpo", "rmb_po", "rmb_po_plus"}
    assert all(float(r["gap_mean"]) > 0 for r in rows)  # a gap to the optimum is positive for finite beta
    assert "DPO" in (run_dir / "results.md").read_text()
    events = sorted(p.parent.name for p in run_dir.rglob("events.out.tfevents.*"))
    assert events == ["dpo", "rmb_po", "rmb_po_plus_m10"]  # one TensorBoard run per method and setting
    curve = EventAccumulator(str(next((run_dir / "adagrad_norm-20" / "n10" / "dpo").glob("events.*")))).Reload()
    assert [e.step for e in curve.Scalars("eval/gap")] == [0, 5, 10, 15, 20]
    assert {"eval/objective", "eval/kl_ref", "eval/value"} <= set(curve.Tags()["scalars"])


@pytest.mark.parametrize("algorithm", TRAINED)
def test_algorithm_trains_and_writes_a_complete_run(algorithm: str, tmp_path: Path) -> None:
    cfg = tiny_run(algorithm, tmp_path)
    algo = ALGORITHMS.get(algorithm)
    result = run(cfg)

    run_dir = tmp_path / cfg.name / "version_0"
    assert result.run_dir == run_dir and result.global_step == 3
    online = algo.records == "prompt"
    # online algorithms sample with the default engine, the built-in one (tests/unit/test_sampler.py)
    assert not online or cfg.rollout.engine == "builtin"
    assert torch.isfinite(torch.tensor(result.metrics["train/loss"]))

    # the run describes itself
    assert load_config(run_dir / "config.yaml").model_dump() == cfg.model_dump()
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["versions"]["torch"] == torch.__version__ and env["versions"]["alignkit"]
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "finished" and status["global_step"] == 3

    # TensorBoard: train and eval tags, train per step
    events = list(run_dir.glob("events.out.tfevents.*"))
    assert events, "no TensorBoard events in the run directory"
    acc = EventAccumulator(str(run_dir)).Reload()
    tags = set(acc.Tags()["scalars"])
    # online algorithms evaluate by sampling held-out prompts; every one logs the same core tags
    core = {"train/reward/mean", "train/reward/std", "train/kl/ref", "train/response/length", "train/entropy"}
    expected = {"train/loss", *(core | {"eval/reward/mean", "eval/kl/ref"} if online else {"eval/loss"})}
    assert expected <= tags, expected - tags
    assert [e.step for e in acc.Scalars("train/loss")] == [0, 1, 2]

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 3 * cfg.algorithm.updates_per_step()  # Lightning counts optimizer steps

    # every trained model is exported in Hugging Face format, equal to the final weights, and has trained
    assert set(result.exports) == set(algo.trained)
    for section in algo.trained:
        out = run_dir / "hf" / section
        assert result.exports[section] == out
        model = HF_CLASS[section].from_pretrained(out)
        tokenizer = AutoTokenizer.from_pretrained(out)
        state = model.state_dict()
        for key, value in state.items():
            torch.testing.assert_close(value, ckpt["state_dict"][f"{section}.{key}"], msg=key)
        spec = getattr(cfg, section)
        if spec is not None:  # (PPO's default critic is built from other sections)
            build = build_causal_lm if HF_CLASS[section] is AutoModelForCausalLM else build_scalar_model
            initial = build(spec, load_tokenizer(spec)).state_dict()
            assert any(not torch.equal(initial[k], state[k]) for k in state), f"{section} did not change"
        ids = tokenizer(["hello"], return_tensors="pt")
        assert model(**ids).logits.shape[0] == 1


def test_runs_never_overwrite_each_other(tmp_path: Path) -> None:
    cfg = tiny_run(
        "sft",
        tmp_path,
        trainer={"max_steps": 1, "prompts_per_step": 4, "micro_batch_size": 4},
        checkpoint={"export_hf": False},
    )
    first, second = run(cfg), run(cfg)
    assert (first.run_dir.name, second.run_dir.name) == ("version_0", "version_1")
    for r in (first, second):
        assert json.loads((r.run_dir / "run.json").read_text())["status"] == "finished"


def test_existing_explicit_version_is_a_run_error(tmp_path: Path) -> None:
    cfg = tiny_run("sft", tmp_path, logging={"root": str(tmp_path), "version": "mine", "progress_bar": False})
    existing = tmp_path / cfg.name / "mine"
    existing.mkdir(parents=True)
    (existing / "notes.txt").write_text("keep me")
    with pytest.raises(RunError, match=r"mine exists and runs are never overwritten: set another logging\.version"):
        run(cfg)
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]  # untouched
