"""The built-in rollout engine against `generate` and `score`: tokens, log-probs, rows leaving, the seam."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_bigram
from transformers.generation.logits_process import TopPLogitsWarper

from alignkit.models import ARCHITECTURES, ModelSpec, build_causal_lm, byte_tokenizer
from alignkit.rollout import ENGINES
from alignkit.rollout.engine import build_engine
from alignkit.rollout.generate import HFEngine, generate
from alignkit.rollout.rollout import SamplingParams, score
from alignkit.rollout.sampler import BuiltinEngine, _top_p, sample_tokens

PAD, EOS = 0, 2
# different lengths: every batch is left-padded, the longest prompt 3x the shortest
PROMPTS = ["a somewhat longer prompt", "hi", "mid length"]


def tiny(arch: str = "llama") -> torch.nn.Module:
    spec = ModelSpec(architecture=arch, hidden_size=32, num_layers=2, num_heads=2)
    return build_causal_lm(spec, byte_tokenizer())


def prompts(texts: list[str] = PROMPTS) -> tuple[torch.Tensor, torch.Tensor]:
    tok = byte_tokenizer()
    tok.padding_side = "left"
    batch = tok(texts, return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"]


def params(**kw) -> SamplingParams:
    return SamplingParams(**{"max_new_tokens": 16, "eos_token_id": EOS, "pad_token_id": PAD, **kw})


def byte_id(char: str) -> int:
    return byte_tokenizer()(char, add_special_tokens=False)["input_ids"][0]


def with_eos_head(model: torch.nn.Module) -> torch.nn.Module:
    """The model with EOS's head row along the mean final hidden state of the prompts, so that at temperature
    0.7 some rows end early and others run to the budget (3 to 6 of 12 end, for each architecture)."""
    ids, mask = prompts()
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        direction = hidden.mean((0, 1))
        model.lm_head.weight[EOS] = direction / direction.norm()
    return model


@pytest.mark.parametrize("static", [False, True], ids=["eager", "static"])
@pytest.mark.parametrize("g", [1, 3])
@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_greedy_matches_generate_token_for_token_and_logprobs_match_score(arch: str, g: int, static: bool) -> None:
    """Left-padded prompts of three lengths, G samples each: the same sequences, masks and `finished` as
    `generate`; the returned log-probs are `score`'s within 1e-5, and 0 off the response."""
    model = tiny(arch).eval()
    ids, mask = prompts()
    expected = generate(
        model, ids, mask, greedy=True, num_samples=g, max_new_tokens=16, eos_token_id=EOS, pad_token_id=PAD
    )
    got = BuiltinEngine(static=static).generate(model, ids, mask, params(greedy=True, num_samples=g))
    for field in ("sequences", "attention_mask", "response_mask", "finished"):
        assert torch.equal(getattr(got, field), getattr(expected, field)), field
    assert got.logprobs.dtype == torch.float32
    torch.testing.assert_close(got.logprobs, score(model, got)[0], atol=1e-5, rtol=0)
    assert not got.logprobs[got.response_mask == 0].any()


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_sampled_logprobs_are_scores_of_the_tempered_distribution(arch: str) -> None:
    """Sampling at temperature 0.7 with top-p 0.9 (which only restricts the draw): log-probs under
    softmax(logits / 0.7) equal `score(temperature=0.7)`; EOS mid-batch ends some rows and not others."""
    model = with_eos_head(tiny(arch).eval())
    ids, mask = prompts()
    torch.manual_seed(0)
    got = BuiltinEngine().generate(model, ids, mask, params(temperature=0.7, top_p=0.9, num_samples=4))
    assert got.sequences.shape[0] == 12 and 0 < got.finished.sum() < 12, got.finished
    torch.testing.assert_close(got.logprobs, score(model, got, temperature=0.7)[0], atol=1e-5, rtol=0)


def test_a_real_vocabulary_samples_and_scores_alike() -> None:
    """Qwen 2.5's 151,936 entries: greedy tokens are generate's, sampled log-probs are score's within 1e-5."""
    spec = ModelSpec(architecture="qwen2", hidden_size=32, num_layers=1, num_heads=2, vocab_size=151_936)
    model = build_causal_lm(spec, byte_tokenizer()).eval()
    ids, mask = prompts()
    kw = {"max_new_tokens": 6, "eos_token_id": EOS, "pad_token_id": PAD, "num_samples": 2}
    greedy = BuiltinEngine().generate(model, ids, mask, params(greedy=True, **kw))
    assert torch.equal(greedy.sequences, generate(model, ids, mask, greedy=True, **kw).sequences)
    torch.manual_seed(0)
    sampled = BuiltinEngine().generate(model, ids, mask, params(temperature=0.9, **kw))
    torch.testing.assert_close(sampled.logprobs, score(model, sampled, temperature=0.9)[0], atol=1e-5, rtol=0)


def test_eos_mid_batch_rows_leave_and_each_prompt_is_prefilled_once() -> None:
    """Chain v -> w -> a -> b -> c -> d -> EOS (a bigram model), G = 2, 4 new tokens: a prompt ending in d stops
    after 1 token, in b after 3, in a after 4, in v never. The model sees the 4 prompts once (prefill batch 4,
    not 8), then decode batches of the rows still going: 6 (after d's two leave), 6, 4 (after b's leave)."""
    v, w, a, b, c, d = (byte_id(ch) for ch in "vwabcd")
    model = make_bigram(tiny("llama"), {v: w, w: a, a: b, b: c, c: d, d: EOS}).eval()
    ids, mask = prompts(["xxd", "b", "xa", "xxxv"])
    batches: list[tuple[int, int]] = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, i, o: batches.append(tuple(i[0].shape)))
    try:
        got = BuiltinEngine().generate(model, ids, mask, params(greedy=True, num_samples=2, max_new_tokens=4))
    finally:
        hook.remove()
    p = ids.shape[1]
    responses = [[EOS, PAD, PAD, PAD], [c, d, EOS, PAD], [b, c, d, EOS], [w, a, b, c]]
    assert got.sequences[:, p:].tolist() == [r for r in responses for _ in range(2)]
    assert got.finished.tolist() == [True] * 6 + [False] * 2
    assert batches == [(4, p), (6, 1), (6, 1), (4, 1)]
    expected = generate(
        model, ids, mask, greedy=True, num_samples=2, max_new_tokens=4, eos_token_id=EOS, pad_token_id=PAD
    )
    assert torch.equal(got.sequences, expected.sequences)


def test_static_cache_is_kept_across_calls_of_different_prompt_widths() -> None:
    """The static path keeps one cache per (model, rows, capacity): prompts of other widths (same bucket of 64)
    reuse it, its old columns masked, and still decode `generate`'s tokens."""
    model = tiny().eval()
    engine = BuiltinEngine(static=True)
    for texts in (PROMPTS, ["short", "x", "yy"], PROMPTS[::-1]):
        ids, mask = prompts(texts)
        got = engine.generate(model, ids, mask, params(greedy=True, num_samples=2))
        expected = generate(
            model, ids, mask, greedy=True, num_samples=2, max_new_tokens=16, eos_token_id=EOS, pad_token_id=PAD
        )
        assert torch.equal(got.sequences, expected.sequences)
    assert len(engine._static) == 1


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    """probs (0.5, 0.3, 0.15, 0.05): mass before each token 0, 0.5, 0.8, 0.95, kept while below top_p, so
    top_p 0.8 keeps the first two, 0.81 three, 0.5 one (0.5 already reaches it), 1.0 all four."""
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    kept = {tp: (_top_p(probs, tp) > 0).int().tolist()[0] for tp in (0.8, 0.81, 0.5, 1.0)}
    assert kept == {0.8: [0, 1, 0, 1], 0.81: [1, 1, 0, 1], 0.5: [0, 1, 0, 0], 1.0: [1, 1, 1, 1]}


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99])
def test_top_p_keeps_what_transformers_keeps(top_p: float) -> None:
    logits = torch.randn(64, 300, generator=torch.Generator().manual_seed(1)) * 3
    ours = _top_p(logits.softmax(-1), top_p) > 0
    theirs = TopPLogitsWarper(top_p)(None, logits.clone()) > -math.inf
    assert torch.equal(ours, theirs)


def test_draws_follow_the_tempered_distribution() -> None:
    """20,000 draws from 3 logits at temperature 2: frequencies within 4 standard errors of softmax(l / 2)."""
    logits = torch.tensor([1.0, 2.0, 4.0]).expand(20_000, 3)
    torch.manual_seed(0)
    tokens, logprobs = sample_tokens(logits, params(temperature=2.0))
    expected = torch.softmax(torch.tensor([0.5, 1.0, 2.0]), -1)
    freq = torch.bincount(tokens, minlength=3).float() / len(tokens)
    assert ((freq - expected).abs() < 4 * (expected * (1 - expected) / len(tokens)).sqrt()).all()
    torch.testing.assert_close(logprobs, expected.log()[tokens])


def test_engines_leave_the_model_in_its_modes_and_record_no_graph() -> None:
    model = tiny().train()
    ids, mask = prompts()
    for engine in (BuiltinEngine(), HFEngine()):
        got = engine.generate(model, ids, mask, params(num_samples=2))
        assert model.training and all(m.training for m in model.modules())
        assert not got.sequences.requires_grad and (got.logprobs is None or not got.logprobs.requires_grad)


def test_every_engine_is_built_by_name_and_keeps_the_contract() -> None:
    """Every registered engine returns B*G rows, responses up to EOS then padding, log-probs iff it says so."""
    from alignkit.config.schema import RolloutSpec

    model = with_eos_head(tiny().eval())
    ids, mask = prompts()
    for name in ENGINES.names():
        engine = build_engine(RolloutSpec(engine=name))
        torch.manual_seed(0)
        got = engine.generate(model, ids, mask, params(num_samples=2))
        assert got.sequences.shape[0] == 6 and got.prompt_length == ids.shape[1]
        assert torch.equal(got.sequences[:, : ids.shape[1]], ids.repeat_interleave(2, 0))
        assert (got.logprobs is not None) == engine.returns_logprobs
        after_response = (got.attention_mask[:, ids.shape[1] :] == 0) & (got.sequences[:, ids.shape[1] :] != PAD)
        assert not after_response.any()


def test_a_model_without_a_plain_kv_cache_is_refused_with_the_fix(monkeypatch) -> None:
    import alignkit.rollout.sampler as sampler

    monkeypatch.setattr(sampler, "supports_slot_cache", lambda model: "its layers keep LinearAttentionLayer state")
    ids, mask = prompts()
    with pytest.raises(ValueError, match=r"LinearAttentionLayer state; set rollout\.engine: hf"):
        BuiltinEngine().generate(tiny(), ids, mask, params())


def test_bad_prompts_are_refused_by_every_engine() -> None:
    ids, mask = prompts()
    right_padded = mask.flip(-1)
    for engine in (BuiltinEngine(), HFEngine()):
        with pytest.raises(ValueError, match="left-padded"):
            engine.generate(tiny(), ids, right_padded, params())
        with pytest.raises(ValueError, match="temperature > 0"):
            engine.generate(tiny(), ids, mask, params(temperature=0.0))


def test_draws_over_a_large_vocabulary_skip_zero_probabilities_and_match_the_mass() -> None:
    """A 20,000-entry row with mass 0.5 on token 7, 0.3 on the last token, the rest spread over tokens 1000-1999
    and 0 elsewhere: 8,000 draws (16 calls of 500 rows) never hit a zero and land on 7, the last token and the
    block at 0.5 / 0.3 / 0.2 within 4 standard errors."""
    probs = torch.zeros(20_000)
    probs[7], probs[-1] = 0.5, 0.3
    probs[1000:2000] = 0.2 / 1000
    torch.manual_seed(0)
    tokens = torch.cat([sample_tokens(probs.log().expand(500, -1), params())[0] for _ in range(16)])
    assert probs[tokens].gt(0).all()
    for hit, mass in ((tokens == 7, 0.5), (tokens == 19_999, 0.3), ((tokens >= 1000) & (tokens < 2000), 0.2)):
        assert abs(hit.float().mean() - mass) < 4 * (mass * (1 - mass) / 8000) ** 0.5
