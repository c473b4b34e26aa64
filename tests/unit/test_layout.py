"""Packed rows and shared prompts give the padded batch's log-probs, values and gradients (llama, qwen2, gpt2;
sdpa and eager), and lay tokens out as written by hand."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_lm_head import MODELS, SMALL, batch, grads_of, plain
from transformers import LlamaConfig, LlamaForSequenceClassification

from alignkit.models.values import sequence_scores
from alignkit.ops.layout import common_prefix, consecutive_groups, lay_out, pair_groups
from alignkit.ops.lm_head import laid_out_plain_logprobs, lean_token_logprobs, token_logprobs_and_entropy
from alignkit.rollout.rollout import Rollout, score

LAYOUTS = {
    "packed": {"pack": True},
    "shared": {"groups": pair_groups(2, 2)},
    "packed+shared": {"pack": True, "groups": pair_groups(2, 2)},
}


def pairs(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4 rows = 2 pairs (rows i and i + 2): row 0 left-padded by 4, row 2 shares its first 9 real tokens; rows 1
    and 3 share their first 8; completion masks over the second half."""
    ids, attention, mask = batch(vocab, b=4, t=17)
    ids[2, :9] = ids[0, 4:13]
    ids[3, :8] = ids[1, :8]
    return ids, attention, mask * attention


def test_a_shared_pair_is_laid_out_as_prompt_chosen_rejected() -> None:
    """Chosen [5 6 7 8], rejected [5 6 9] (right-padded): one row [5 6 | 7 8 | 9], positions [0 1 | 2 3 | 2],
    the rejected token seeing the prompt and itself only; each input token's place in `where`."""
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 9, 0]])
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    layout = lay_out(ids, attention, groups=torch.tensor([0, 0]))
    assert layout.kind == "shared"
    assert layout.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 2]]
    assert layout.where.tolist() == [[0, 1, 2, 3], [0, 1, 4, -1]]
    allowed = layout.attention_mask[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # the rejected token: prompt and itself, not the chosen tokens
    ]


def test_packing_concatenates_real_tokens_and_restarts_positions() -> None:
    ids = torch.tensor([[0, 3, 4], [7, 8, 9]])
    attention = torch.tensor([[0, 1, 1], [1, 1, 1]])  # left padding
    layout = lay_out(ids, attention, pack=True)
    assert layout.kind == "packed" and layout.attention_mask is None  # sequences told apart by positions
    assert layout.input_ids.tolist() == [[3, 4, 7, 8, 9]]
    assert layout.position_ids.tolist() == [[0, 1, 0, 1, 2]]
    assert layout.where.tolist() == [[-1, 0, 1], [2, 3, 4]]


def test_groups_with_nothing_in_common_keep_the_padded_batch() -> None:
    ids, attention = torch.tensor([[1, 2], [3, 4]]), torch.ones(2, 2, dtype=torch.long)
    assert lay_out(ids, attention, groups=torch.tensor([0, 0])).kind == "padded"
    assert common_prefix(torch.tensor([1, 2, 3]), torch.tensor([1, 2])) == 2
    assert common_prefix(torch.tensor([1]), torch.tensor([2])) == 0


def test_consecutive_groups_follow_equal_prompts() -> None:
    prompts = torch.tensor([[1, 2], [1, 2], [3, 4], [3, 4], [1, 2]])
    assert consecutive_groups(prompts).tolist() == [0, 0, 1, 1, 2]
    assert pair_groups(2, 2).tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("layout_name", LAYOUTS)
@pytest.mark.parametrize("head", ["lean", "plain"])
def test_layouts_equal_the_padded_batch(name: str, kernel: str, layout_name: str, head: str) -> None:
    """Log-probs, entropies and every parameter's gradient within 1e-5 of the padded batch's plain logits."""
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    model.config._attn_implementation = kernel
    ids, attention, mask = pairs(1000)
    (lp, ent), g_padded = grads_of(model, lambda: plain(model, ids, attention, mask))
    layout = lay_out(ids, attention, **LAYOUTS[layout_name])
    fn = lean_token_logprobs if head == "lean" else None

    def laid_out() -> Any:
        if fn is None:
            return laid_out_plain_logprobs(model, ids, attention, mask, layout)
        return fn(model, ids, attention, mask, layout=layout)

    (lp2, ent2), g_laid = grads_of(model, laid_out)
    torch.testing.assert_close(lp2, lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent2, ent, atol=1e-5, rtol=0)
    for key, grad in g_padded.items():
        torch.testing.assert_close(g_laid[key], grad, atol=1e-5, rtol=1e-4, msg=key)


def test_bf16_layouts_agree_within_bf16_rounding() -> None:
    torch.manual_seed(0)
    model = MODELS["llama"]().to(torch.bfloat16)
    ids, attention, mask = pairs(1000)
    padded = lean_token_logprobs(model, ids, attention, mask)[0]
    shared = lean_token_logprobs(
        model, ids, attention, mask, layout=lay_out(ids, attention, **LAYOUTS["packed+shared"])
    )
    torch.testing.assert_close(shared[0], padded, atol=5e-2, rtol=0)


def test_the_model_options_choose_the_layout() -> None:
    """`trainer.padding_free` / `shared_prompts` mark the models; unmarked sdpa models keep padded rows."""
    torch.manual_seed(0)
    model = MODELS["qwen2-tied"]().eval()
    ids, attention, mask = pairs(1000)
    calls = []
    model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    reference = token_logprobs_and_entropy(model, ids, attention, mask, groups=pair_groups(2, 2))
    model.alignkit_padding_free, model.alignkit_shared_prompts = True, True
    laid = token_logprobs_and_entropy(model, ids, attention, mask, groups=pair_groups(2, 2))
    assert calls[0] == ids.shape and calls[1][0] == 1 and calls[1][1] < ids.numel() - 9 - 8
    torch.testing.assert_close(laid[0], reference[0], atol=1e-5, rtol=0)


def test_a_reward_models_scores_are_the_same_on_shared_pairs() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, num_key_value_heads=2, num_labels=1, pad_token_id=0, **SMALL)
    model = LlamaForSequenceClassification(config).eval()
    ids, attention, _ = pairs(1000)
    expected = sequence_scores(model, ids, attention)
    for options in ((True, False), (False, True), (True, True)):
        model.alignkit_padding_free, model.alignkit_shared_prompts = options
        got = sequence_scores(model, ids, attention, pair_groups(2, 2))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=str(options))


def test_a_groups_samples_share_their_prompt_when_scored() -> None:
    """A rollout of 2 prompts x 3 samples (left-padded prompts, responses of different lengths): the sampler's
    scoring on [prompt, 3 responses] rows equals the padded rows', values and entropies."""
    torch.manual_seed(0)
    model = MODELS["llama"]().eval()
    gen = torch.Generator().manual_seed(3)
    prompts = torch.randint(3, 1000, (2, 6), generator=gen).repeat_interleave(3, 0)
    responses = torch.randint(3, 1000, (6, 5), generator=gen)
    attention = torch.ones(6, 11, dtype=torch.long)
    attention[3:, :2] = 0  # the second prompt is 4 tokens long
    response_mask = torch.zeros(6, 11, dtype=torch.long)
    response_mask[:, 6:] = 1
    for row, length in enumerate([5, 2, 4, 1, 5, 3]):
        attention[row, 6 + length :] = 0
        response_mask[row, 6 + length :] = 0
    rollout = Rollout(
        sequences=torch.cat([prompts, responses], 1),
        attention_mask=attention,
        response_mask=response_mask,
        prompt_length=6,
        finished=torch.ones(6, dtype=torch.bool),
    )
    expected = score(model, rollout, with_entropy=True)
    model.alignkit_shared_prompts = True
    got = score(model, rollout, with_entropy=True)
    for mine, reference in zip(got, expected, strict=True):
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=0)


def test_an_online_update_keeps_a_prompts_samples_together() -> None:
    """Rows 0-5 are 3 prompts x 2 samples; the drawn order [3 0 5 2 1 4] becomes [3 2 | 0 1 | 5 4]: groups in the
    order their first row was drawn, rows within a group in drawn order."""
    from alignkit.algorithms.online import keep_groups_together

    prompts = torch.tensor([[1, 1], [1, 1], [2, 2], [2, 2], [3, 3], [3, 3]])
    rollout = Rollout(prompts, torch.ones(6, 2), torch.zeros(6, 2), 2, torch.ones(6, dtype=torch.bool))
    assert keep_groups_together(torch.tensor([3, 0, 5, 2, 1, 4]), rollout).tolist() == [3, 2, 0, 1, 5, 4]
