"""The built-in rollout engine on CUDA: compiled decode steps (CUDA graphs) against `generate`, bf16, training.

Skipped without CUDA. The same checks run uncompiled on CPU in tests/unit/test_sampler.py; here the decode step
is captured with torch.compile(mode="reduce-overhead"), which only a GPU runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignkit.config.schema import RolloutSpec
from alignkit.models import ARCHITECTURES, ModelSpec, build_causal_lm, byte_tokenizer
from alignkit.rollout.generate import generate
from alignkit.rollout.rollout import SamplingParams, score
from alignkit.rollout.sampler import BuiltinEngine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PAD, EOS = 0, 2
PROMPTS = ["a somewhat longer prompt", "hi", "mid length", "four"]


def _model(arch: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    spec = ModelSpec(architecture=arch, hidden_size=64, num_layers=2, num_heads=4)
    return build_causal_lm(spec, byte_tokenizer()).to("cuda", dtype).eval()


def _prompts() -> tuple[torch.Tensor, torch.Tensor]:
    tok = byte_tokenizer()
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    return batch["input_ids"].cuda(), batch["attention_mask"].cuda()


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_compiled_greedy_matches_generate_and_logprobs_match_score(arch: str) -> None:
    model = _model(arch)
    ids, mask = _prompts()
    engine = BuiltinEngine(RolloutSpec(compile=True))
    params = SamplingParams(max_new_tokens=24, eos_token_id=EOS, pad_token_id=PAD, greedy=True, num_samples=3)
    for _ in range(2):  # the second call replays the captured graphs
        got = engine.generate(model, ids, mask, params)
    expected = generate(
        model, ids, mask, greedy=True, num_samples=3, max_new_tokens=24, eos_token_id=EOS, pad_token_id=PAD
    )
    assert torch.equal(got.sequences, expected.sequences)
    assert torch.equal(got.finished, expected.finished)
    torch.testing.assert_close(got.logprobs, score(model, got)[0], atol=1e-4, rtol=0)  # TF32 matmuls may be on


def test_compiled_sampling_in_bf16_keeps_float32_sampling_math() -> None:
    model = _model("qwen2", torch.bfloat16)
    ids, mask = _prompts()
    params = SamplingParams(
        max_new_tokens=16, eos_token_id=EOS, pad_token_id=PAD, temperature=0.8, top_p=0.95, num_samples=4
    )
    got = BuiltinEngine(RolloutSpec(compile=True)).generate(model, ids, mask, params)
    assert got.logprobs.dtype == torch.float32 and got.sequences.shape[0] == 16
    assert torch.isfinite(got.logprobs).all()
    # bf16 rounds a one-token step and a full forward differently: close, not equal
    torch.testing.assert_close(got.logprobs, score(model, got, temperature=0.8)[0], atol=0.1, rtol=0)


@pytest.mark.parametrize("engine", ["builtin", "hf"])
def test_grpo_trains_on_one_gpu_with_each_engine(tmp_path: Path, engine: str) -> None:
    from alignkit.config.load import load_config
    from alignkit.run import run

    overrides = [
        f"rollout.engine={engine}",
        "trainer.max_steps=3",
        "hardware.accelerator=gpu",
        "hardware.devices=1",
        "hardware.strategy=single",
        "hardware.precision=bf16-mixed",
        f"logging.root={tmp_path}",
        "logging.progress_bar=false",
    ]
    result = run(load_config(Path(__file__).parents[2] / "experiments" / "grpo_tiny.yaml", overrides))
    assert result.global_step == 3
    assert torch.isfinite(torch.tensor(result.metrics["train/loss"]))
