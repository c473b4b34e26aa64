"""DPO and KTO end to end: the reference model (copy, own path, precomputed), KTO's data kinds, bad data; DPO's
loss types that need more than log-probs (token counts, BCO's running shift); the methods with no reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import minimal, tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import alignkit.algorithms.dpo as dpo_module
from alignkit.algorithms import ALGORITHMS
from alignkit.algorithms.dpo import dpo_loss
from alignkit.config.errors import ConfigError
from alignkit.config.load import validate_dict
from alignkit.data import DataError
from alignkit.data.generators import sentiment_pairs, sentiment_unpaired, write_jsonl
from alignkit.models import ModelSpec, build_causal_lm, byte_tokenizer, save_hf
from alignkit.run import build_models, run
from alignkit.rundir import RunError

TINY = {"architecture": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2}


def cfg_for(algorithm: str, root: Path, /, **overrides: Any) -> Any:
    return tiny_config(algorithm, root, eval_fraction=0.25, **overrides)


def curve(run_dir: Path, tag: str) -> list[float]:
    return [e.value for e in EventAccumulator(str(run_dir)).Reload().Scalars(tag)]


@pytest.mark.parametrize("algorithm", ["dpo", "kto"])
def test_precomputed_reference_logps_give_the_same_run(algorithm: str, tmp_path: Path) -> None:
    """The reference is frozen: one pass before training gives the numbers a forward per step would."""
    live = run(cfg_for(algorithm, tmp_path / "live"))
    cached = run(cfg_for(algorithm, tmp_path / "cached", algorithm={"precompute_ref_logps": True}))
    for tag in ("train/loss", "train/rewards/margins"):
        assert curve(cached.run_dir, tag) == pytest.approx(curve(live.run_dir, tag), rel=1e-5, abs=1e-6)
    for key in ("eval/loss", "eval/rewards/accuracies", "eval/logps/chosen"):
        assert cached.metrics[key] == pytest.approx(live.metrics[key], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("algorithm", ["dpo", "kto"])
def test_precomputed_reference_skips_the_reference_forward(
    algorithm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted by a forward hook: reference forwards happen before training starts, and never after."""
    module_cls = ALGORITHMS.get(algorithm).load()
    calls: list[int] = []
    original = module_cls.on_fit_start

    def count_reference_calls(self: Any) -> None:
        self.reference.register_forward_hook(lambda *_: calls.append(1))
        original(self)
        calls.append(0)  # marks the end of the precompute pass

    monkeypatch.setattr(module_cls, "on_fit_start", count_reference_calls)
    run(cfg_for(algorithm, tmp_path, algorithm={"precompute_ref_logps": True}))
    assert sum(calls) > 0 and calls[-1] == 0  # forwards happened, all of them before the marker


def test_the_default_reference_is_the_starting_policy(tmp_path: Path) -> None:
    """Policy == reference at step 1: every log-ratio is 0, so DPO's first loss is exactly log 2."""
    result = run(cfg_for("dpo", tmp_path))
    assert curve(result.run_dir, "train/loss")[0] == pytest.approx(0.693147, abs=1e-6)
    assert curve(result.run_dir, "train/rewards/margins")[0] == 0.0


def test_a_reference_from_its_own_path(tmp_path: Path) -> None:
    """A reference saved elsewhere (other weights) is loaded from its path: the first loss is no longer log 2."""
    tok = byte_tokenizer()
    ref_dir = save_hf(build_causal_lm(ModelSpec(**TINY, init_seed=7), tok), tok, tmp_path / "ref")
    result = run(cfg_for("dpo", tmp_path / "runs", reference={"path": str(ref_dir)}))
    assert curve(result.run_dir, "train/loss")[0] != pytest.approx(0.693147, abs=1e-4)


def test_a_reference_with_another_vocabulary_is_refused(tmp_path: Path) -> None:
    tok = byte_tokenizer()
    tok.add_tokens(["<extra>"])
    ref_dir = save_hf(build_causal_lm(ModelSpec(**TINY), tok), tok, tmp_path / "ref")
    with pytest.raises(RunError, match=r"reference: its vocabulary has \d+ tokens, the policy's \d+"):
        run(cfg_for("dpo", tmp_path / "runs", reference={"path": str(ref_dir)}))


@pytest.mark.parametrize(("rows", "kind"), [(sentiment_pairs, "preference"), (sentiment_unpaired, "unpaired")])
def test_kto_reads_pairs_or_labelled_examples_from_files(rows: Any, kind: str, tmp_path: Path) -> None:
    path = write_jsonl(rows(n=24), tmp_path / "data.jsonl")
    cfg = cfg_for("kto", tmp_path / "runs", data={"train": {"path": str(path)}})
    assert ALGORITHMS.get("kto").load().record_kind(cfg) == kind
    result = run(cfg)
    assert {"train/kl/z0", "eval/rewards/accuracies"} <= set(result.metrics)


def test_dpo_on_conversational_pairs(tmp_path: Path) -> None:
    """Prompt as messages, chosen/rejected as assistant messages: only the assistant turn counts."""
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Review {i}?"}],
            "chosen": [{"role": "assistant", "content": " great fun"}],
            "rejected": [{"role": "assistant", "content": " dull and weak"}],
        }
        for i in range(16)
    ]
    path = write_jsonl(rows, tmp_path / "chat.jsonl")
    result = run(cfg_for("dpo", tmp_path / "runs", data={"train": {"path": str(path)}}))
    assert result.global_step == 3 and result.metrics["eval/logps/chosen"] < 0


# Each: a file with one bad row (row 2), the algorithm, and what the error must say.
BAD = [
    ("dpo", [{"prompt": "p", "chosen": " a"}], r"row 2: missing 'rejected'"),
    ("kto", [{"prompt": "p", "completion": " a", "label": "yes"}], r"row 2: 'label' must be true or false"),
    ("kto", [{"prompt": "p", "completion": "  ", "label": True}], r"row 2: 'completion' is empty"),
    ("dpo", [{"prompt": "p", "chosen": "", "rejected": " b"}], r"row 2: 'chosen' is empty"),
]


@pytest.mark.parametrize(("algorithm", "bad", "message"), BAD)
def test_bad_rows_fail_before_training_with_file_and_row(
    algorithm: str, bad: list[dict], message: str, tmp_path: Path
) -> None:
    good = sentiment_pairs(n=1)[0] if algorithm == "dpo" else sentiment_unpaired(n=1)[0]
    path = write_jsonl([good, *bad, good], tmp_path / "bad.jsonl")
    cfg = cfg_for(algorithm, tmp_path / "runs", data={"train": {"path": str(path)}})
    with pytest.raises(DataError, match=rf"{path}: {message}"):
        run(cfg)
    assert not (tmp_path / "runs").exists()  # the data is checked before anything is written


@pytest.mark.parametrize("algorithm", ["simpo", "orpo", "cpo"])
def test_reference_free_methods_build_and_hold_no_reference(algorithm: str, tmp_path: Path) -> None:
    """Their cards use the policy alone: run.py builds no reference (no copy of the policy in memory), the module
    has none, and a `reference:` section is refused before anything loads."""
    cfg = cfg_for(algorithm, tmp_path)
    module_cls = ALGORITHMS.get(algorithm).load()
    models, tokenizer = build_models(cfg, module_cls)
    assert set(models) == {"policy"}
    module = module_cls(cfg, models, tokenizer)
    assert not hasattr(module, "reference") and module.frozen == []
    with pytest.raises(ConfigError, match=rf"reference: not used by algorithm '{algorithm}'"):
        validate_dict(minimal(algorithm, reference=TINY))


def test_reference_free_run_logs_the_core_tags(tmp_path: Path) -> None:
    result = run(cfg_for("orpo", tmp_path))
    core = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "nll")
    assert {f"{split}/{tag}" for split in ("train", "eval") for tag in core} <= set(result.metrics)
    assert "eval/log_odds_ratio" in result.metrics


def test_ipo_gets_token_counts_unless_told_to_sum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DPO passes the batch's completion token counts to the loss for ipo (logps_normalize auto), not with none."""
    seen: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["chosen_tokens"])
        return dpo_loss(*args, **kwargs)

    monkeypatch.setattr(dpo_module, "dpo_loss", spy)
    one_step = {"max_steps": 1, "prompts_per_step": 4, "micro_batch_size": 4}
    run(cfg_for("dpo", tmp_path / "auto", algorithm={"loss_type": "ipo"}, trainer=one_step))
    counts = [t for t in seen if t is not None]
    assert counts and all(int(t.min()) > 0 for t in counts)
    seen.clear()
    run(cfg_for("dpo", tmp_path / "none", algorithm={"loss_type": "ipo", "logps_normalize": "none"}, trainer=one_step))
    assert seen and all(t is None for t in seen)


def test_bco_pair_shift_is_the_running_mean_reward_and_is_checkpointed(tmp_path: Path) -> None:
    """Each step's delta is the mean reward of every training completion before it: 0 at steps 1 and 2 (at step 1
    the policy is the reference, so its rewards are 0), then the mean of the earlier steps' batch means (equal
    batches); the (sum, count) goes into the checkpoint, 3 steps x 4 pairs x 2 completions."""
    cfg = cfg_for("dpo", tmp_path, algorithm={"loss_type": "bco_pair"}, checkpoint={"export_hf": False})
    result = run(cfg)
    shift = curve(result.run_dir, "train/rewards/shift")
    chosen, rejected = curve(result.run_dir, "train/rewards/chosen"), curve(result.run_dir, "train/rewards/rejected")
    batch_means = [(c + r) / 2 for c, r in zip(chosen, rejected, strict=True)]
    assert shift[:2] == [0.0, pytest.approx(batch_means[0], abs=1e-7)]
    assert shift[2] == pytest.approx((batch_means[0] + batch_means[1]) / 2, abs=1e-6)
    ckpt = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    total, count = ckpt["bco_rewards"].tolist()
    assert count == 24 and total / 24 == pytest.approx(sum(batch_means) / 3, abs=1e-6)
