"""Log-probs through the LM head in chunks equal the plain path (values and gradients), and never build the
[tokens x vocabulary] logits: a real vocabulary's forward and backward stays under a memory bound the plain
path exceeds."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from alignkit.ops.lm_head import chunked_token_logprobs, lean_supported, lean_token_logprobs, sequence_logprobs
from alignkit.ops.logprobs import masked_sum, model_logits, token_logprobs
from alignkit.ops.rl import entropy_from_logits
from alignkit.rollout.rollout import Rollout, score

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def llama(vocab: int = 1000, tied: bool = False) -> Any:
    config = LlamaConfig(vocab_size=vocab, num_key_value_heads=2, tie_word_embeddings=tied, **SMALL)
    return LlamaForCausalLM(config)


MODELS = {
    "llama": lambda: llama(),
    "qwen2-tied": lambda: Qwen2ForCausalLM(
        Qwen2Config(vocab_size=1000, num_key_value_heads=2, tie_word_embeddings=True, **SMALL)
    ),
    "gpt2": lambda: GPT2LMHeadModel(
        GPT2Config(vocab_size=1000, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    ),
}


def batch(vocab: int, b: int = 3, t: int = 17) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ids, a left-padded first row, and a completion mask over the second half (shorter in row 2)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (b, t), generator=gen)
    attention = torch.ones(b, t, dtype=torch.long)
    attention[0, :4] = 0
    mask = torch.zeros(b, t, dtype=torch.long)
    mask[:, t // 2 :] = 1
    mask[b - 1, t - 4 :] = 0
    return ids, attention, mask * attention


def plain(model: Any, ids: torch.Tensor, attention: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0):
    logits = model_logits(model, ids, attention).float() / temperature
    logps = token_logprobs(logits, ids) * mask
    entropy = F.pad(entropy_from_logits(logits[:, :-1]), (1, 0)) * mask
    return logps, entropy


def grads_of(model: Any, fn: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    model.zero_grad()
    logps, entropy = fn()
    (logps.sum() + 0.3 * entropy.sum()).backward()
    return (logps.detach(), entropy.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_lean_equals_plain_values_and_gradients(name: str, temperature: float) -> None:
    """llama (untied head), qwen2 (tied: the embedding's gradient gets both uses) and gpt2, float32."""
    torch.manual_seed(0)
    model = MODELS[name]().eval()  # eval: gpt2's dropout would draw differently in the two passes
    ids, attention, mask = batch(1000)
    (lp, ent), g_plain = grads_of(model, lambda: plain(model, ids, attention, mask, temperature))
    (lp2, ent2), g_lean = grads_of(
        model, lambda: lean_token_logprobs(model, ids, attention, mask, temperature=temperature)
    )
    assert lp2.shape == ids.shape and (lp2[mask == 0] == 0).all() and (lp2[mask == 1] < 0).all()
    torch.testing.assert_close(lp2, lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent2, ent, atol=1e-5, rtol=0)
    assert g_plain.keys() == g_lean.keys()
    for key, grad in g_plain.items():
        torch.testing.assert_close(g_lean[key], grad, atol=1e-5, rtol=1e-4, msg=key)


def test_lean_in_bf16_accumulates_in_float32() -> None:
    """A bf16 model: the head's matmul in bf16 as the model's own, the log-sum-exp in float32; equal to the plain
    path's `logits.float()` within bf16's rounding of the gradient."""
    torch.manual_seed(0)
    model = llama().to(torch.bfloat16)
    ids, attention, mask = batch(1000)
    (lp, ent), g_plain = grads_of(model, lambda: plain(model, ids, attention, mask))
    (lp2, ent2), g_lean = grads_of(model, lambda: lean_token_logprobs(model, ids, attention, mask))
    assert lp2.dtype == torch.float32
    torch.testing.assert_close(lp2, lp, atol=1e-4, rtol=0)
    torch.testing.assert_close(ent2, ent, atol=1e-4, rtol=0)
    for key, grad in g_plain.items():
        torch.testing.assert_close(g_lean[key].float(), grad.float(), atol=2e-2, rtol=2e-2, msg=key)


def test_chunks_over_tokens_and_vocabulary_equal_one_block() -> None:
    """50 rows in chunks of 7, a 300-word vocabulary in chunks of 64 (the online log-sum-exp carries its max
    and sum across chunks), with a bias and a temperature: the same values and gradients as log_softmax."""
    gen = torch.Generator().manual_seed(1)
    h, w, b = (torch.randn(*s, generator=gen, requires_grad=True) for s in ((50, 16), (300, 16), (300,)))
    y = torch.randint(0, 300, (50,), generator=gen)
    logp, entropy = chunked_token_logprobs(h, w, b, y, temperature=1.3, token_chunk=7, vocab_chunk=64)
    (logp.sum() + 0.3 * entropy.sum()).backward()
    lean = [t.grad.clone() for t in (h, w, b)]
    for t in (h, w, b):
        t.grad = None
    z = (h @ w.T + b) / 1.3
    ref, ref_entropy = torch.log_softmax(z, -1).gather(1, y[:, None]).squeeze(1), entropy_from_logits(z)
    (ref.sum() + 0.3 * ref_entropy.sum()).backward()
    torch.testing.assert_close(logp, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-5, rtol=0)
    for mine, t in zip(lean, (h, w, b), strict=True):
        torch.testing.assert_close(mine, t.grad, atol=1e-5, rtol=1e-5)


def test_a_one_hot_head_gives_the_hand_computed_numbers() -> None:
    """hidden [1, 2] with W = I (vocab 2): logits (1, 2) at temperature 1; log p(y=1) = 2 - log(e + e^2) =
    -0.313262; entropy = lse - E[z] = 2.313262 - (e*1 + e^2*2)/(e + e^2) = 2.313262 - 1.731059 = 0.582203."""
    logp, entropy = chunked_token_logprobs(torch.tensor([[1.0, 2.0]]), torch.eye(2), None, torch.tensor([1]))
    assert logp.item() == pytest.approx(-0.313262, abs=1e-6)
    assert entropy.item() == pytest.approx(0.582203, abs=1e-6)


def test_sequence_logprobs_and_score_take_the_lean_path_and_agree_with_the_plain_one() -> None:
    torch.manual_seed(0)
    model = llama(tied=True).eval()
    ids, attention, mask = batch(1000)
    lean = sequence_logprobs(model, ids, attention, mask)
    expected = masked_sum(token_logprobs(model_logits(model, ids, attention), ids), mask, dim=-1)
    torch.testing.assert_close(lean, expected, atol=1e-5, rtol=0)
    rollout = Rollout(
        sequences=ids,
        attention_mask=attention,
        response_mask=mask,
        prompt_length=ids.shape[1] // 2,
        finished=torch.ones(3, dtype=torch.bool),
    )
    lean_scores = score(model, rollout, temperature=0.8, with_entropy=True)
    model.alignkit_plain_head = True  # what trainer.chunked_logprobs: false sets
    plain_scores = score(model, rollout, temperature=0.8, with_entropy=True)
    for mine, reference in zip(lean_scores, plain_scores, strict=True):
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=0)


def test_heads_that_scale_or_cap_their_logits_keep_the_plain_path() -> None:
    model = llama()
    assert lean_supported(model)
    model.config.final_logit_softcapping = 30.0  # Gemma 2: tanh-capped logits the chunks do not reproduce
    assert not lean_supported(model)


class LargestTensor(TorchDispatchMode):
    """The largest tensor (bytes) any operation creates while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def test_a_real_vocabulary_never_builds_the_logits() -> None:
    """Vocabulary 151,936 (Qwen 2.5's), 2 x 96 tokens of which half are completion: the plain path's float32
    logits are 2 x 96 x 151,936 x 4 B = 117 MB; the lean forward and backward create nothing larger than the
    head's weight or its gradient (151,936 x 32 x 4 B = 19.4 MB) or one chunk (96 x 32,768 x 4 B = 12.6 MB)."""
    torch.manual_seed(0)
    model = llama(vocab=151_936, tied=False)
    ids, attention, mask = batch(151_936, b=2, t=96)
    logits_bytes = 2 * 96 * 151_936 * 4
    weight_bytes = 151_936 * 32 * 4
    for path, bound in (("plain", None), ("lean", weight_bytes)):
        model.zero_grad()
        with LargestTensor() as seen:
            logps = (
                plain(model, ids, attention, mask)[0]
                if path == "plain"
                else lean_token_logprobs(model, ids, attention, mask)[0]
            )
            logps.sum().backward()
        if bound is None:
            assert seen.largest >= logits_bytes
        else:
            assert seen.largest <= bound, f"{path}: {seen.largest / 1e6:.1f} MB"
