"""Rollouts: generate against a hand-written decoder, scoring against generate's own logits, masks, layout."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_bigram
from transformers import GenerationConfig

from alignkit.models import ARCHITECTURES, ModelSpec, build_causal_lm, byte_tokenizer
from alignkit.ops import model_logits
from alignkit.rollout.generate import generate
from alignkit.rollout.rollout import Rollout, decode_prompts, decode_responses, score
from alignkit.rollout.rollout import rollout_from_sequences as _rollout

PAD, EOS = 0, 2
PROMPTS = ["a somewhat longer prompt", "hi", "mid length"]  # different lengths: left padding in every batch


def tiny(arch: str = "llama") -> torch.nn.Module:
    return build_causal_lm(ModelSpec(architecture=arch, hidden_size=32, num_layers=1, num_heads=2), byte_tokenizer())


def prompts(texts: list[str] = PROMPTS) -> tuple[torch.Tensor, torch.Tensor]:
    tok = byte_tokenizer()
    tok.padding_side = "left"
    batch = tok(texts, return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"]


def byte_id(char: str) -> int:
    return byte_tokenizer()(char, add_special_tokens=False)["input_ids"][0]


def bigram_model(successor: dict[int, int]) -> torch.nn.Module:
    """A llama whose greedy next token is successor[current token], whatever came before.

    Attention and MLP outputs are zeroed, so the last hidden state is RMSNorm(embedding of the current
    token). Token k of the table embeds as the basis vector e_k (RMSNorm makes it sqrt(32) e_k) and the
    lm_head row of its successor is 10 e_k: its successor's logit is 10 sqrt(32) ~ 57, every other logit
    0. Sampling from it is as good as greedy (the runner-up is e^-57 less likely).
    """
    model = tiny("llama")
    return make_bigram(model, successor)


def greedy_by_hand(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Argmax decoding with a full forward per step (no KV cache), positions from the mask; [B, steps]."""
    with torch.no_grad():
        for _ in range(steps):
            nxt = model_logits(model, ids, mask)[:, -1].argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids[:, -steps:]


def cut_after_first_eos(response: torch.Tensor) -> torch.Tensor:
    out = response.clone()
    for row in out:
        hits = (row == EOS).nonzero()
        if len(hits):
            row[hits[0, 0] + 1 :] = PAD
    return out


# -- generate ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_greedy_equals_an_argmax_loop_without_cache(arch: str) -> None:
    """KV cache, left padding and positions in generate give the tokens a plain full-forward loop gives."""
    model = tiny(arch).eval()
    ids, mask = prompts()
    rollout = generate(model, ids, mask, max_new_tokens=12, eos_token_id=EOS, pad_token_id=PAD, greedy=True)
    expected = cut_after_first_eos(greedy_by_hand(model, ids, mask, 12))
    assert torch.equal(rollout.sequences[:, ids.shape[1] :], expected[:, : rollout.sequences.shape[1] - ids.shape[1]])
    assert torch.equal(rollout.sequences[:, : ids.shape[1]], ids)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_score_equals_the_distribution_generate_sampled_from(arch: str, temperature: float) -> None:
    """score's log-prob of each sampled token == log softmax(logits / T) of generate's step that drew it.

    Only gpt2 (learned positions) would show a position offset: rotary attention (llama, qwen2) depends
    on position differences, so a shifted start per row cancels.
    """
    model = tiny(arch).eval()
    ids, mask = prompts()
    kw = {"max_new_tokens": 10, "eos_token_id": EOS, "pad_token_id": PAD}
    torch.manual_seed(0)
    rollout = generate(model, ids, mask, temperature=temperature, **kw)
    torch.manual_seed(0)  # the same draws, from transformers itself, with its per-step logits
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        output_logits=True,
        return_dict_in_generate=True,
        **kw,
    )
    p, response = rollout.prompt_length, rollout.response_mask[:, ids.shape[1] :].bool()
    assert torch.equal(rollout.sequences, out.sequences)
    step_logits = torch.stack(out.logits, dim=1).float() / temperature  # [B, R, V]
    expected = torch.log_softmax(step_logits, -1).gather(-1, out.sequences[:, p:, None]).squeeze(-1)
    expected_entropy = -(step_logits.softmax(-1) * step_logits.log_softmax(-1)).sum(-1)

    logprobs, entropy = score(model, rollout, temperature=temperature, with_entropy=True)
    torch.testing.assert_close(logprobs[:, p:][response], expected[response], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(entropy[:, p:][response], expected_entropy[response], atol=1e-4, rtol=1e-4)
    assert logprobs.dtype == entropy.dtype == torch.float32
    assert not logprobs[:, :p].any() and not entropy[:, :p].any()


def test_masks_finished_and_lengths_follow_the_first_eos() -> None:
    """Chain v -> w -> a -> b -> c -> d -> EOS, 4 new tokens: a prompt ending in d stops after 1 (EOS),
    in b after 3 (c d EOS), in a after 4 (b c d EOS, the last allowed step), in v not at all (w a b c)."""
    v, w, a, b, c, d = (byte_id(ch) for ch in "vwabcd")
    model = bigram_model({v: w, w: a, a: b, b: c, c: d, d: EOS})
    ids, mask = prompts(["xxd", "b", "xa", "xxxv"])
    rollout = generate(model, ids, mask, max_new_tokens=4, eos_token_id=EOS, pad_token_id=PAD, greedy=True)
    p = ids.shape[1]
    assert rollout.prompt_length == p
    assert rollout.sequences[:, p:].tolist() == [[EOS, PAD, PAD, PAD], [c, d, EOS, PAD], [b, c, d, EOS], [w, a, b, c]]
    assert rollout.response_mask[:, p:].tolist() == [[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert not rollout.response_mask[:, :p].any()
    assert torch.equal(rollout.attention_mask, torch.cat([mask, rollout.response_mask[:, p:]], 1))
    assert rollout.finished.tolist() == [True, True, True, False]
    assert rollout.response_lengths.tolist() == [1.0, 3.0, 4.0, 4.0]
    assert rollout.response_lengths.dtype == torch.float32
    assert decode_responses(byte_tokenizer(), rollout) == ["", "cd", "bcd", "wabc"]
    assert decode_prompts(byte_tokenizer(), rollout) == ["xxd", "b", "xa", "xxxv"]


def test_masks_come_from_the_first_eos_not_from_what_generate_padded_with() -> None:
    """Tokens after the first EOS become padding even if generate left something else there, and a pad id
    sampled before the EOS is a response token."""
    prompt_mask = torch.tensor([[0, 1], [1, 1], [1, 1]])
    sequences = torch.tensor([[PAD, 7, 5, EOS, 9, EOS], [3, 4, PAD, 5, EOS, 6], [3, 4, 5, 6, 7, 8]])
    rollout = _rollout(sequences, prompt_mask, EOS, PAD)
    assert rollout.sequences.tolist() == [[PAD, 7, 5, EOS, PAD, PAD], [3, 4, PAD, 5, EOS, PAD], [3, 4, 5, 6, 7, 8]]
    assert rollout.response_mask.tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert rollout.attention_mask.tolist() == [[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    assert rollout.finished.tolist() == [True, True, False]


def test_samples_of_a_prompt_are_contiguous() -> None:
    model = tiny().eval()
    ids, mask = prompts()
    torch.manual_seed(0)
    rollout = generate(model, ids, mask, max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD, num_samples=3)
    p = ids.shape[1]
    assert rollout.sequences.shape[0] == 3 * len(PROMPTS)
    for i in range(len(PROMPTS)):
        group = rollout.sequences[3 * i : 3 * i + 3]
        assert torch.equal(group[:, :p], ids[i].expand(3, -1))
        assert torch.equal(rollout.attention_mask[3 * i : 3 * i + 3, :p], mask[i].expand(3, -1))
        assert len({tuple(row.tolist()) for row in group[:, p:]}) == 3  # three draws, not one copied


def test_sampling_is_reproducible_under_a_seed() -> None:
    model = tiny().eval()
    ids, mask = prompts()
    kw = {"max_new_tokens": 8, "eos_token_id": EOS, "pad_token_id": PAD, "temperature": 1.3}
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(generate(model, ids, mask, **kw).sequences)
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_a_tiny_nucleus_is_greedy() -> None:
    model = tiny().eval()
    ids, mask = prompts()
    kw = {"max_new_tokens": 8, "eos_token_id": EOS, "pad_token_id": PAD}
    greedy = generate(model, ids, mask, greedy=True, **kw)
    torch.manual_seed(0)
    nucleus = generate(model, ids, mask, top_p=1e-6, temperature=1.5, **kw)
    assert torch.equal(greedy.sequences, nucleus.sequences)


def test_the_checkpoint_generation_config_does_not_change_the_distribution() -> None:
    """Options a checkpoint's generation_config.json may set reshape the distribution; generate ignores them.

    (Here suppress_tokens leaves only the three special tokens to sample from.)
    """
    model = tiny().eval()
    ids, mask = prompts()
    kw = {"max_new_tokens": 8, "eos_token_id": EOS, "pad_token_id": PAD}
    torch.manual_seed(0)
    plain = generate(model, ids, mask, **kw).sequences
    model.generation_config = GenerationConfig(
        do_sample=True, top_k=1, repetition_penalty=3.0, suppress_tokens=list(range(3, 259))
    )
    torch.manual_seed(0)
    assert torch.equal(generate(model, ids, mask, **kw).sequences, plain)
    assert model.generation_config.top_k == 1  # put back


@pytest.mark.parametrize("training", [True, False])
def test_generates_in_eval_mode_and_restores_every_module_mode(training: bool) -> None:
    model = tiny().train(training)
    model.model.layers[0].mlp.eval()  # a mixed state must come back as it was, not as model.train(training)
    before = {name: m.training for name, m in model.named_modules()}
    seen = []
    model.model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    ids, mask = prompts()
    generate(model, ids, mask, max_new_tokens=3, eos_token_id=EOS, pad_token_id=PAD)
    assert seen and not any(seen)
    assert {name: m.training for name, m in model.named_modules()} == before


def test_right_padded_prompts_are_refused() -> None:
    tok = byte_tokenizer()
    batch = tok(PROMPTS, return_tensors="pt", padding=True)  # right padding, the tokenizer's default
    with pytest.raises(ValueError, match="left-padded"):
        generate(
            tiny(), batch["input_ids"], batch["attention_mask"], max_new_tokens=2, eos_token_id=EOS, pad_token_id=PAD
        )


# -- score and Rollout ------------------------------------------------------------------------------------


def test_score_keeps_gradients_and_zeroes_everything_off_the_response() -> None:
    """A uniform model (all logits 0) gives every response token log(1/259), entropy log(259)."""
    model = tiny()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    ids, mask = prompts(["ab", "c"])
    rollout = _rollout(torch.cat([ids, torch.tensor([[5, EOS, PAD], [6, 7, 8]])], 1), mask, EOS, PAD)
    logprobs, entropy = score(model, rollout, temperature=0.5, with_entropy=True)
    expected = rollout.response_mask.float()
    torch.testing.assert_close(logprobs, expected * -math.log(259))
    torch.testing.assert_close(entropy, expected * math.log(259))
    assert logprobs.requires_grad
    logprobs.sum().backward()
    assert model.lm_head.weight.grad is not None
    assert score(model, rollout)[1] is None


def test_rollout_index_and_repeat_interleave() -> None:
    rollout = _rollout(torch.tensor([[1, 5, EOS], [1, 6, 7]]), torch.tensor([[1], [1]]), EOS, PAD)
    twice = rollout.repeat_interleave(2)
    assert twice.sequences.tolist() == [[1, 5, EOS], [1, 5, EOS], [1, 6, 7], [1, 6, 7]]
    assert twice.finished.tolist() == [True, True, False, False]
    picked = rollout.index([1])
    assert picked.sequences.tolist() == [[1, 6, 7]] and picked.response_lengths.tolist() == [2.0]
    assert isinstance(picked, Rollout) and picked.prompt_length == 1
