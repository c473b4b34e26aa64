"""Models: spec validation, seeded builds, HF round trips, scalar heads, padding-side invariance, presets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from alignkit.models import (
    ARCHITECTURES,
    ModelSpec,
    build_causal_lm,
    build_scalar_model,
    byte_tokenizer,
    count_parameters,
    load_tokenizer,
    model_config,
    save_hf,
    sequence_scores,
    token_values,
)

PRESETS = sorted((Path(__file__).parents[2] / "registry" / "models").glob("*.yaml"))
TEXTS = ["hello world", "hi", "a longer sentence here"]


def tiny(architecture: str, **kw) -> ModelSpec:
    return ModelSpec(architecture=architecture, **kw)


def batch(tokenizer, side: str) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = side
    return tokenizer(TEXTS, return_tensors="pt", padding=True)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- building -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_architecture_builds_seeded_with_tokenizer_vocab(arch):
    spec = tiny(arch)
    tok = load_tokenizer(spec)
    model = build_causal_lm(spec, tok)
    assert model.config.vocab_size == len(tok) == 259
    assert (model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id) == (0, 1, 2)
    assert 100_000 <= count_parameters(model) <= 1_000_000
    assert same_weights(model, build_causal_lm(spec, tok))
    assert not same_weights(model, build_causal_lm(tiny(arch, init_seed=1), tok))
    ids = tok(TEXTS[:1], return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], 259)


def test_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_causal_lm(tiny("llama"), load_tokenizer(tiny("llama")))
    assert torch.equal(torch.rand(3), expected)


def test_dtype_and_attention_are_applied():
    spec = tiny("qwen2", dtype="bfloat16", attn_implementation="eager", hidden_size=32, num_layers=1)
    model = build_causal_lm(spec, load_tokenizer(spec))
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1


def test_gpt2_maps_generic_names():
    spec = tiny("gpt2", hidden_size=32, num_layers=3, num_heads=2)
    config = model_config(spec, load_tokenizer(spec))
    assert (config.n_embd, config.n_layer, config.n_head, config.n_positions) == (32, 3, 2, 256)
    assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.0


# -- saving and loading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_causal_lm_round_trip(tmp_path, arch):
    spec = tiny(arch)
    tok = load_tokenizer(spec)
    model = build_causal_lm(spec, tok).eval()
    save_hf(model, tok, tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    enc = loaded_tok(TEXTS[0], return_tensors="pt")
    assert enc.input_ids.tolist() == tok(TEXTS[0], return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc).logits, model(**enc).logits, rtol=0, atol=0)
    # Through our own spec too: the tokenizer defaults to the one saved beside the checkpoint.
    spec2 = ModelSpec(path=str(tmp_path))
    assert spec2.tokenizer == str(tmp_path)
    tok2 = load_tokenizer(spec2)
    text = "e\u0301 <|endoftext|> x"  # AutoTokenizer on a qwen2 directory would NFC-normalise and add a token
    assert len(tok2) == 259 and tok2(text).input_ids == tok(text).input_ids
    assert tok2.chat_template == tok.chat_template
    assert same_weights(build_causal_lm(spec2, tok2), model)


def test_scalar_model_round_trip(tmp_path):
    spec = tiny("llama")
    tok = load_tokenizer(spec)
    model = build_scalar_model(spec, tok).eval()
    save_hf(model, tok, tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.num_labels == 1
    enc = batch(AutoTokenizer.from_pretrained(tmp_path), "right")
    with torch.no_grad():
        torch.testing.assert_close(sequence_scores(loaded, **enc), sequence_scores(model, **enc))


def test_scalar_model_from_causal_checkpoint_keeps_backbone(tmp_path):
    spec = tiny("llama")
    tok = load_tokenizer(spec)
    lm = build_causal_lm(spec, tok)
    save_hf(lm, tok, tmp_path)
    scalar = build_scalar_model(ModelSpec(path=str(tmp_path), init_seed=3), tok)
    assert same_weights(scalar.base_model, lm.base_model)
    assert scalar.score.weight.shape == (1, 64)
    again = build_scalar_model(ModelSpec(path=str(tmp_path), init_seed=3), tok)
    assert torch.equal(again.score.weight, scalar.score.weight)  # the fresh head is seeded too


# -- values and scores ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_sequence_scores_are_last_real_token_and_padding_side_free(arch, attn):
    spec = tiny(arch, attn_implementation=attn)
    tok = load_tokenizer(spec)
    model = build_scalar_model(spec, tok).eval()
    with torch.no_grad():
        right, left = batch(tok, "right"), batch(tok, "left")
        values = token_values(model, **left)
        assert values.shape == left.input_ids.shape and values.dtype == torch.float32
        assert torch.isfinite(values).all()
        scores_right, scores_left = sequence_scores(model, **right), sequence_scores(model, **left)
        alone = []
        for text in TEXTS:  # each sequence on its own, no padding: its value at its last token
            enc = tok(text, return_tensors="pt")
            alone.append(token_values(model, **enc)[0, -1])
    assert scores_right.shape == (len(TEXTS),)
    torch.testing.assert_close(scores_right, torch.stack(alone), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores_left, scores_right, rtol=1e-4, atol=1e-5)


# -- spec errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"path": "ckpt", "architecture": "llama"}, "set exactly one (got both)"),
        ({}, "set exactly one (got neither)"),
        (
            {"architecture": "lama"},
            "unknown model architecture 'lama'; allowed: gpt2, llama, qwen2; did you mean 'llama'?",
        ),
        (
            {"architecture": "llama", "num_heads": 3},
            "num_heads: must divide hidden_size (got num_heads=3, hidden_size=64)",
        ),
        (
            {"architecture": "llama", "num_kv_heads": 3},
            "num_kv_heads: must divide num_heads (got num_kv_heads=3",
        ),
        ({"architecture": "gpt2", "num_kv_heads": 2}, "architecture 'gpt2' has no grouped-query attention"),
        ({"path": "ckpt", "hidden_size": 64}, "hidden_size: sizes apply only to a model built from"),
        ({"architecture": "llama", "hidden_sise": 64}, "hidden_sise"),
    ],
)
def test_spec_errors_say_what_and_how_to_fix(fields, expected):
    with pytest.raises(ValidationError) as info:
        ModelSpec(**fields)
    assert expected in str(info.value)


def test_explicit_tokenizer_wins_over_path():
    assert ModelSpec(path="ckpt", tokenizer="byte").tokenizer == "byte"
    assert ModelSpec(architecture="llama").tokenizer == "byte"


# -- presets --------------------------------------------------------------------------------------------


def test_presets_exist():
    expected = {"tiny-llama", "tiny-qwen2", "tiny-gpt2", "small-llama", "llama-1b-like"}
    assert expected <= {p.stem for p in PRESETS}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_validates_and_builds(preset):
    raw = yaml.safe_load(preset.read_text())
    assert isinstance(raw.pop("description"), str)
    spec = ModelSpec(**raw, preset=preset.stem)
    tok = load_tokenizer(spec)
    with torch.device("meta"):  # the size without allocating it: ~1B stays cheap
        size = count_parameters(AutoModelForCausalLM.from_config(model_config(spec, tok)))
    if size > 50_000_000:
        pytest.skip(f"{preset.stem}: {size / 1e9:.2f}B parameters, validated only")
    assert count_parameters(build_causal_lm(spec, tok)) == size


def test_spec_imports_without_torch():
    """`alignkit validate` stays fast: the spec and registry load neither torch nor transformers."""
    code = "import sys, alignkit.models; assert not {'torch', 'transformers'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_a_real_vocabulary_size_and_tied_embeddings_on_a_byte_tokenizer_model() -> None:
    """vocab_size pads the embedding and the head past the tokenizer's 259 tokens, as real checkpoints pad
    theirs (what the real-vocabulary benchmarks need); tie_embeddings shares the two; neither applies to a
    checkpoint at `path`."""
    spec = ModelSpec(
        architecture="qwen2", hidden_size=32, num_layers=1, num_heads=2, vocab_size=1000, tie_embeddings=True
    )
    model = build_causal_lm(spec, byte_tokenizer())
    assert model.config.vocab_size == 1000 and model.get_output_embeddings().weight.shape == (1000, 32)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    small = build_causal_lm(
        ModelSpec(architecture="qwen2", hidden_size=32, num_layers=1, num_heads=2), byte_tokenizer()
    )
    assert small.config.vocab_size == len(byte_tokenizer())  # never below the tokenizer's size
    with pytest.raises(ValueError, match="vocab_size: sizes apply only to a model built from `architecture`"):
        ModelSpec(path="/some/checkpoint", vocab_size=1000)


def test_attention_kernels_that_cannot_run_here_are_refused_with_what_to_use() -> None:
    """flash_attention_2 needs the flash-attn package (not installed on the CI machines); FlexAttention and
    FlashAttention train on GPUs only (torch's FlexAttention has no backward on CPU)."""
    import importlib.util

    from alignkit.config.errors import ConfigError
    from alignkit.config.load import validate_dict

    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(ValidationError, match="needs the flash-attn package, which is not installed"):
            ModelSpec(architecture="llama", attn_implementation="flash_attention_2")
    config = {
        "name": "t",
        "algorithm": {"name": "sft"},
        "policy": {"architecture": "llama", "attn_implementation": "flex_attention"},
        "data": {"train": {"generator": "reverse_words"}},
        "hardware": {"accelerator": "cpu"},
    }
    with pytest.raises(ConfigError, match=r"policy\.attn_implementation: 'flex_attention' runs on GPUs only"):
        validate_dict(config)
    validate_dict({**config, "hardware": {"accelerator": "gpu"}})  # the same model on a GPU is fine
