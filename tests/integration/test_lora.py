"""LoRA through PEFT: every algorithm trains adapters; the reference is the policy with them off; exports;
checkpoints that hold only what trains."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import MINIMAL, minimal
from peft import PeftModel
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_algorithms import HF_CLASS, tiny_run
from transformers import AutoModelForCausalLM

from alignkit.algorithms import ALGORITHMS
from alignkit.config.errors import ConfigError
from alignkit.config.load import validate_dict
from alignkit.models import (
    ModelSpec,
    build_causal_lm,
    build_scalar_model,
    byte_tokenizer,
    load_tokenizer,
    save_hf,
)
from alignkit.models.lora import AdaptersOff, apply_lora, peft_model
from alignkit.models.spec import LoraSpec
from alignkit.ops.lm_head import completion_logprobs
from alignkit.run import run

LORA = {"rank": 4, "alpha": 8, "dropout": 0.1}
TRAINED = [n for n in ALGORITHMS.names() if not hasattr(ALGORITHMS.get(n).load(), "launch")]


def curve(run_dir: Path, tag: str) -> list[float]:
    return [e.value for e in EventAccumulator(str(run_dir)).Reload().Scalars(tag)]


def with_lora(algorithm: str, root: Path, **sections: Any) -> Any:
    """The tiny run of `algorithm` (test_algorithms.tiny_run) with LoRA on every model it trains."""
    data = minimal(algorithm)
    trained = ALGORITHMS.get(algorithm).trained
    adapted = {s: {**data[s], "lora": LORA} for s in trained if s in data}
    return tiny_run(algorithm, root, **{**adapted, **sections})


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_the_policy_with_adapters_off_is_a_frozen_copy_of_its_start(arch: str) -> None:
    """After its adapters have moved, the policy with them off still computes its starting log-probs, bit for bit
    (gpt2 has dropout: the view runs in eval mode, as a frozen copy does, and leaves the policy's mode alone)."""
    tok = byte_tokenizer()
    policy = build_causal_lm(ModelSpec(architecture=arch, hidden_size=32, num_layers=2, num_heads=4), tok)
    frozen = copy.deepcopy(policy).eval()
    policy = apply_lora(policy, LoraSpec(**LORA), scalar=False)
    reference = AdaptersOff(policy)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    policy.train()
    ids = torch.randint(3, 259, (3, 12), generator=torch.Generator().manual_seed(0))
    attention = torch.ones_like(ids)
    attention[1, :4] = 0  # left padding
    mask = attention.clone()
    mask[:, :6] = 0
    with torch.no_grad():
        expected = completion_logprobs(frozen, ids, attention, mask)
        got = completion_logprobs(reference, ids, attention, mask)
        adapted = completion_logprobs(policy, ids, attention, mask)
    assert torch.equal(got, expected)
    assert not torch.allclose(adapted, expected)
    assert policy.training and all(m.training for m in policy.modules())
    assert list(reference.parameters()) == []  # nothing held twice


def test_dpo_with_adapters_starts_at_log_2_and_matches_a_separate_frozen_reference(tmp_path: Path) -> None:
    """Adapters start at zero (B = 0): policy == reference at step 1, every log-ratio 0, the loss exactly log 2.
    Later steps equal a run whose reference is a separate frozen model built from the same spec."""
    viewed = run(with_lora("dpo", tmp_path / "view"))
    copied = run(with_lora("dpo", tmp_path / "copy", reference=MINIMAL["dpo"]["policy"]))
    losses = curve(viewed.run_dir, "train/loss")
    assert losses[0] == pytest.approx(math.log(2), abs=1e-7)
    assert curve(viewed.run_dir, "train/rewards/margins")[0] == 0.0
    assert losses == pytest.approx(curve(copied.run_dir, "train/loss"), rel=1e-6, abs=1e-7)
    assert losses[-1] != pytest.approx(math.log(2), abs=1e-4)  # and the adapters did train


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", TRAINED)
def test_every_algorithm_trains_adapters_and_exports_merged_and_adapter(algorithm: str, tmp_path: Path) -> None:
    cfg = with_lora(algorithm, tmp_path)
    result = run(cfg)
    trained = ALGORITHMS.get(algorithm).trained
    assert set(result.exports) == {*trained, *(f"{s}_adapter" for s in trained)}
    ckpt = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    # the checkpoint: adapters (and a scalar model's new score head) only; no frozen weight of any model
    assert ckpt and all(("lora_" in k or "modules_to_save" in k) for k in ckpt if k.endswith("weight")), list(ckpt)
    for section in trained:
        merged = HF_CLASS[section].from_pretrained(result.exports[section])
        spec = getattr(cfg, section)
        if spec is None:  # PPO's default critic starts from the policy's body: no spec builds its base
            continue
        build = build_scalar_model if section in ("critic", "reward_model") else build_causal_lm
        base = build(spec, load_tokenizer(spec))
        ids = torch.randint(3, 259, (2, 10), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            before = base(input_ids=ids).logits
            adapted = PeftModel.from_pretrained(base, result.exports[f"{section}_adapter"]).eval()  # into `base`
            torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits)
            assert not torch.allclose(merged(input_ids=ids).logits, before)


def checkpoint_bytes(result: Any) -> int:
    return (result.run_dir / "checkpoints" / "last.ckpt").stat().st_size


def test_checkpoints_hold_what_trains_and_its_optimizer_state_only(tmp_path: Path) -> None:
    """AdamW keeps two float32 moments per trained number: a checkpoint is 12 bytes per trained parameter plus
    a fixed part (loop and RNG states, names), whatever frozen models (DPO's reference, LoRA's base) exist."""
    full = run(tiny_run("dpo", tmp_path / "full"))
    lora = run(with_lora("dpo", tmp_path / "lora"))
    sizes = {}
    for name, result in (("full", full), ("lora", lora)):
        state = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        assert not any(k.startswith("reference.") for k in state)
        sizes[name] = sum(v.numel() for v in state.values())
    policy = build_causal_lm(ModelSpec(**MINIMAL["dpo"]["policy"]), byte_tokenizer())
    assert sizes["full"] == sum(v.numel() for v in policy.state_dict().values())  # the policy, once
    fixed = checkpoint_bytes(full) - 12 * sizes["full"]
    assert 0 < fixed < 100_000
    assert checkpoint_bytes(lora) - 12 * sizes["lora"] == pytest.approx(fixed, abs=40_000)
    assert checkpoint_bytes(lora) < checkpoint_bytes(full) / 2


@pytest.mark.parametrize(
    ("sections", "path"),
    [
        ({"reference": {**MINIMAL["dpo"]["policy"], "lora": LORA}}, "reference.lora"),
        (
            {"reward": {"source": {"kind": "model", "model": {**MINIMAL["dpo"]["policy"], "lora": LORA}}}},
            "reward.source.model.lora",
        ),
    ],
)
def test_adapters_on_a_frozen_model_are_refused(sections: dict[str, Any], path: str) -> None:
    algorithm = "dpo" if "reference" in sections else "grpo"
    with pytest.raises(ConfigError, match=rf"{path}: .*frozen"):
        validate_dict({**minimal(algorithm), **sections})


def test_the_header_says_what_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = with_lora("dpo", tmp_path, logging={"root": str(tmp_path), "progress_bar": True})
    result = run(cfg)
    out = capsys.readouterr().out
    assert "trained in adapters" in out and "reference (the policy with its adapters off)" in out
    assert peft_model(AutoModelForCausalLM.from_pretrained(result.exports["policy"])) is None  # merged: plain


def test_an_adapter_directory_loads_as_its_base_with_the_adapter_merged(tmp_path: Path) -> None:
    """A model section whose path is an exported adapter (a pipeline's `output: policy_adapter`) is the base it
    was trained on with the adapter merged in: the stage's merged export, in other words."""
    tok = byte_tokenizer()
    base = save_hf(build_causal_lm(ModelSpec(**MINIMAL["sft"]["policy"]), tok), tok, tmp_path / "base")
    result = run(with_lora("sft", tmp_path / "runs", policy={"path": str(base), "lora": LORA}))
    loaded = build_causal_lm(ModelSpec(path=str(result.exports["policy_adapter"])), tok)
    merged = AutoModelForCausalLM.from_pretrained(result.exports["policy"])
    ids = torch.randint(3, 259, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, merged(input_ids=ids).logits)
    built = run(with_lora("sft", tmp_path / "built"))  # its base came from `architecture`: never saved
    with pytest.raises(ValueError, match="built from `architecture`"):
        build_causal_lm(ModelSpec(path=str(built.exports["policy_adapter"])), tok)


def test_compare_reads_a_lora_checkpoint_as_base_plus_its_adapters(tmp_path: Path) -> None:
    """`alignkit compare` evaluates saved step checkpoints; a LoRA run's hold the adapters alone, so the policy is
    rebuilt from its spec and given them: at the last step it is the merged export."""
    from alignkit.compare import _load_policy_weights

    cfg = with_lora("dpo", tmp_path, checkpoint={"every_n_steps": 3})
    result = run(cfg)
    merged = AutoModelForCausalLM.from_pretrained(result.exports["policy"])
    policy = _load_policy_weights(merged, result.run_dir / "checkpoints" / "step000003.ckpt", cfg.policy)
    ids = torch.randint(3, 259, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(policy(input_ids=ids).logits, merged(input_ids=ids).logits)
