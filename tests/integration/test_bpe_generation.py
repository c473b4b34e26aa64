"""Generation with the BPE tokenizer's ChatML: a rollout stops at <|im_end|>, as the data layer trains it to."""

from __future__ import annotations

import pytest
import torch
from conftest import make_bigram
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from alignkit.config.presets import load_preset
from alignkit.data import tokenize_records
from alignkit.models import ModelSpec, build_causal_lm, load_tokenizer
from alignkit.rollout.generate import HFEngine
from alignkit.rollout.rollout import SamplingParams, decode_responses
from alignkit.rollout.sampler import BuiltinEngine

CONVERSATIONS = [
    [{"role": "user", "content": "Say hello."}],
    [{"role": "system", "content": "You greet people."}, {"role": "user", "content": "Greet the world, please."}],
]


def bigram_model(spec: ModelSpec, tok: PreTrainedTokenizerBase, successor: dict[int, int]) -> torch.nn.Module:
    """A model whose greedy next token is successor[current token], whatever came before.

    Attention and MLP outputs are zeroed, so the last hidden state is RMSNorm(embedding of the current
    token). Token k of the table embeds as the basis vector e_k (RMSNorm makes it 8 e_k at width 64) and the
    LM head row of its successor is 10 e_k: the successor's logit is 80, every other logit 0.
    """
    model = build_causal_lm(spec, tok)
    return make_bigram(model, successor)


@pytest.mark.parametrize("engine", [HFEngine(), BuiltinEngine()], ids=["hf", "builtin"])
def test_a_chat_rollout_stops_at_im_end_and_matches_the_trained_tokens(engine) -> None:
    """Every ChatML generation prompt ends in "assistant" + "\\n"; the model then writes "hello", " world",
    <|im_end|>, and would go on ("hello" again) if the engine did not stop at the EOS."""
    # the preset untied: the bigram needs its own LM head
    spec = ModelSpec(**{**load_preset("models", "tiny-qwen2-bpe"), "tie_embeddings": False})
    tok = load_tokenizer(spec)
    newline, hello, world = tok("\nhello world", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens([newline, hello, world]) == ["Ċ", "hello", "Ġworld"]
    im_end = tok.eos_token_id
    model = bigram_model(spec, tok, {newline: hello, hello: world, world: im_end, im_end: hello})

    tok.padding_side = "left"
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CONVERSATIONS]
    batch = tok(texts, return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (ids[:, -1] == newline).all() and not mask.all()  # the prompts differ in length: left padding
    params = SamplingParams(max_new_tokens=8, eos_token_id=im_end, pad_token_id=tok.pad_token_id, greedy=True)
    rollout = engine.generate(model, ids, mask, params)
    p = rollout.prompt_length
    assert rollout.sequences[:, p:].tolist() == [[hello, world, im_end]] * 2  # stopped 5 tokens early
    assert rollout.response_mask[:, p:].tolist() == [[1, 1, 1]] * 2 and rollout.finished.all()
    assert decode_responses(tok, rollout) == ["hello world"] * 2  # <|im_end|> dropped

    # SFT on that reply trains exactly the tokens the rollout sampled, <|im_end|> included
    messages = [*CONVERSATIONS[0], {"role": "assistant", "content": "hello world"}]
    row = tokenize_records(Dataset.from_list([{"messages": messages}]), "completion", tok, max_length=64)[0]
    trained = [t for t, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m]
    assert trained == rollout.sequences[0, p:].tolist()
    assert row["input_ids"] == tok(texts[0])["input_ids"] + trained
