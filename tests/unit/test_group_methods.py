"""The math of issue 16's group methods against hand-worked numbers, plus their properties: GSPO's sequence ratio,
REINFORCE++'s global normalisation, DAPO's dynamic sampling and overlong shaping (alignkit.ops.rl and the
algorithms' advantage functions)."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.ops import (
    clipped_policy_loss,
    informative_groups,
    overlong_penalty,
    reinforce_pp_advantages,
    reward_to_go,
    sequence_log_ratio,
    token_rewards,
)
from alignkit.rewards.normalize import merge_moments
from alignkit.rollout.rollout import Rollout, concat_rollouts


def assert_close(actual: torch.Tensor, expected: list, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def moments_of(x: torch.Tensor) -> tuple[float, float, float]:
    """batch_moments on one process, without torch.distributed: (count, mean, M2)."""
    x = x.double()
    return float(x.numel()), float(x.mean()), float(((x - x.mean()) ** 2).sum())


# --- GSPO: the sequence-level ratio ----------------------------------------------------------------------------
MASK = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1]])  # a prompt token, then 2 and 3 response tokens


def test_sequence_ratio_by_hand() -> None:
    """Row 0: token log-ratios log 2 and log 8 -> mean (log 2 + 3 log 2) / 2 = 2 log 2, s = 4 on both tokens.
    Row 1: log-ratios 0, log 2, -log 2 -> mean 0, s = 1. Clip 0.2 with A = +1: row 0 is clipped at 1.2 (loss -1.2
    per token, clipfrac 2 of 5 tokens), row 1 unclipped (-1). Token-level instead: row 0 ratios 2 and 8, both
    clipped to 1.2; row 1 ratios 1, 2, 0.5: min(0.5, 0.5) = 0.5 and 2 clipped to 1.2."""
    log2 = math.log(2)
    old = torch.zeros(2, 4)
    logps = torch.tensor([[9.0, log2, 3 * log2, 9.0], [9.0, 0.0, log2, -log2]])
    seq = sequence_log_ratio(logps, old, MASK)
    assert_close(seq * MASK, [[0, 2 * log2, 2 * log2, 0], [0, 0, 0, 0]], atol=1e-6)
    advantages = torch.tensor([1.0, 1.0])
    loss, metrics = clipped_policy_loss(logps, old, advantages, MASK, 0.2, ratio_level="sequence")
    assert_close(loss, [[0, -1.2, -1.2, 0], [0, -1.0, -1.0, -1.0]])
    assert metrics["clipfrac"] == pytest.approx(2 / 5)
    token_loss, _ = clipped_policy_loss(logps, old, advantages, MASK, 0.2)
    assert_close(token_loss, [[0, -1.2, -1.2, 0], [0, -1.0, -1.2, -0.5]])


def test_sequence_ratio_gradient_is_gspo_s_times_mean_token_gradient() -> None:
    """GSPO's gradient (Zheng et al. 2025, eq. 10), unclipped with A = 1: d/d logp_t of the response's mean per-token
    loss is -s / |y| for each of its tokens, s = exp(mean log-ratio)."""
    old = torch.tensor([[0.0, -1.0, -2.0, 0.0]])
    logps = torch.tensor([[0.0, -0.9, -2.1, 0.0]], requires_grad=True)
    mask = torch.tensor([[0, 1, 1, 0]])
    loss, _ = clipped_policy_loss(logps, old, torch.tensor([1.0]), mask, 10.0, ratio_level="sequence")
    (loss.sum() / 2).backward()  # the response's token mean (seq_mean_token_mean)
    s = math.exp(((-0.9 + 1.0) + (-2.1 + 2.0)) / 2)
    assert_close(logps.grad, [[0, -s / 2, -s / 2, 0]])


def test_sequence_ratio_equals_the_token_ratio_for_one_token_responses() -> None:
    """With one response token the length-normalised ratio is that token's ratio: losses and gradients agree."""
    torch.manual_seed(0)
    old = torch.randn(5, 3)
    mask = torch.tensor([[0, 0, 1]] * 5)
    advantages = torch.randn(5)
    grads = []
    for level in ("token", "sequence"):
        logps = (old + 0.3 * torch.randn(5, 3, generator=torch.Generator().manual_seed(1))).requires_grad_()
        loss, _ = clipped_policy_loss(logps, old, advantages, mask, 0.2, 0.28, ratio_level=level)
        loss.sum().backward()
        grads.append((loss.detach(), logps.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_unknown_ratio_level_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="allowed: token, sequence"):
        clipped_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), MASK[:1, :2], 0.2, ratio_level="seq")


# --- REINFORCE++ -------------------------------------------------------------------------------------------------
def test_reward_to_go_by_hand() -> None:
    """Rewards on response tokens [-0.1, -0.2, 1 - 0.3] (row 0, prompt column junk): to go [0.4, 0.5, 0.7]."""
    rewards = torch.tensor([[9.0, -0.1, -0.2, 0.7], [9.0, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 0]])
    assert_close(reward_to_go(rewards, mask), [[0, 0.4, 0.5, 0.7], [0, 2.0, 0, 0]])


def test_reinforce_pp_advantages_by_hand() -> None:
    """Two responses, scores [1, 0], per-token KL row 0 [1, 2] and row 1 [2] (one token), kl_coef 0.1.
    Token rewards: row 0 [-0.1, -0.2 + 1] -> to go [0.7, 0.8]; row 1 [-0.2 + 0] -> [-0.2].
    Over the 3 tokens: mean (0.7 + 0.8 - 0.2) / 3 = 1.3 / 3 = 0.433333; deviations 0.266667, 0.366667, -0.633333;
    M2 = 0.071111 + 0.134444 + 0.401111 = 0.606667; var (Bessel) 0.303333, std 0.550757.
    Normalised: 0.484182, 0.665750, -1.149932."""
    scores = torch.tensor([1.0, 0.0])
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    kl = torch.tensor([[5.0, 1.0, 2.0], [5.0, 2.0, 7.0]]) * mask
    adv = reinforce_pp_advantages(scores, kl, mask, 0.1, moments_of)
    assert_close(adv, [[0, 0.484182, 0.665750], [0, -1.149932, 0]], atol=2e-6)


def test_reinforce_pp_baseline_subtracts_the_group_mean_first() -> None:
    """Scores [3, 1 | 5, 5], no KL, one token each, group_mean: [1, -1, 0, 0]; mean 0, var (1 + 1) / 3, std
    0.816497 -> [1.224745, -1.224745, 0, 0]. Without the baseline [3, 1, 5, 5]: mean 3.5, deviations
    [-0.5, -2.5, 1.5, 1.5], var 11 / 3, std 1.914854 -> [-0.261116, -1.305582, 0.783349, 0.783349]."""
    mask = torch.tensor([[0, 1]] * 4)
    scores = torch.tensor([3.0, 1.0, 5.0, 5.0])
    with_baseline = reinforce_pp_advantages(scores, None, mask, 0.0, moments_of, group_size=2)
    assert_close(with_baseline[:, 1], [1.224745, -1.224745, 0.0, 0.0])
    plain = reinforce_pp_advantages(scores, None, mask, 0.0, moments_of)
    assert_close(plain[:, 1], [-0.261116, -1.305582, 0.783349, 0.783349])


def test_reinforce_pp_normalisation_is_the_same_however_rows_are_split() -> None:
    """The moments are of the whole step's tokens: merged from any split of the rows into processes (as
    batch_moments' all-reduce does), the advantages of each part equal those of the whole batch. The real
    all-reduce on 1, 2 and 4 processes is tests/distributed/test_global_normalisation.py."""
    torch.manual_seed(0)
    scores = torch.randn(8)
    mask = torch.zeros(8, 6, dtype=torch.long)
    for row, length in enumerate([1, 5, 3, 2, 5, 4, 1, 3]):
        mask[row, 1 : 1 + length] = 1
    kl = torch.rand(8, 6) * mask
    whole = reinforce_pp_advantages(scores, kl, mask, 0.05, moments_of)
    for spans in ([(i, i + 1) for i in range(8)], [(0, 3), (3, 8)], [(0, 2), (2, 4), (4, 6), (6, 8)]):
        merged = (0.0, 0.0, 0.0)
        for a, b in spans:
            returns = reward_to_go(token_rewards(scores[a:b], kl[a:b], mask[a:b], 0.05), mask[a:b])
            merged = merge_moments(merged, moments_of(returns[mask[a:b].bool()]))
        split = torch.cat(
            [
                reinforce_pp_advantages(scores[a:b], kl[a:b], mask[a:b], 0.05, moments=lambda _, m=merged: m)
                for a, b in spans
            ]
        )
        torch.testing.assert_close(split, whole, atol=1e-6, rtol=0)


# --- DAPO: dynamic sampling and overlong shaping -----------------------------------------------------------------
def test_informative_groups_by_hand() -> None:
    """G = 3: [1, 1, 1] all equal -> dropped; [0, 1, 0] kept; [0.5, 0.5, 0.5000001] kept (any difference)."""
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5000001], dtype=torch.float64)
    assert informative_groups(scores, 3).tolist() == [False, True, True]


def test_overlong_penalty_by_hand() -> None:
    """max_len 20, buffer 4: penalty starts after 16 tokens. Lengths 10, 16 -> 0; 17 -> -(1/4); 18 -> -0.5; 20 -> -1
    (factor 1); with factor 0.5, 19 -> -0.375."""
    assert_close(overlong_penalty(torch.tensor([10, 16, 17, 18, 20]), 20, 4), [0.0, 0.0, -0.25, -0.5, -1.0])
    assert_close(overlong_penalty(torch.tensor([19]), 20, 4, 0.5), [-0.375])
    with pytest.raises(ValueError, match=r"buffer must be in 1\.\.max_len"):
        overlong_penalty(torch.tensor([3]), 20, 0)


def rollout(prompts: list[list[int]], responses: list[list[int]], pad: int = 0) -> Rollout:
    """A hand-made rollout: prompts left-padded, responses right-padded, log-probs -0.5 per response token."""
    p, r = max(map(len, prompts)), max(map(len, responses))
    seq, att, resp = [], [], []
    for prompt, response in zip(prompts, responses, strict=True):
        seq.append([pad] * (p - len(prompt)) + prompt + response + [pad] * (r - len(response)))
        att.append([0] * (p - len(prompt)) + [1] * (len(prompt) + len(response)) + [0] * (r - len(response)))
        resp.append([0] * p + [1] * len(response) + [0] * (r - len(response)))
    resp_t = torch.tensor(resp)
    return Rollout(
        torch.tensor(seq), torch.tensor(att), resp_t, p, torch.ones(len(prompts), dtype=torch.bool), -0.5 * resp_t
    )


def test_concat_rollouts_repads_prompts_left_and_responses_right() -> None:
    a = rollout([[5, 6]], [[7]])
    b = rollout([[8, 9, 10]], [[11, 12, 13]])
    both = concat_rollouts([a, b], pad_token_id=0)
    assert both.prompt_length == 3
    assert both.sequences.tolist() == [[0, 5, 6, 7, 0, 0], [8, 9, 10, 11, 12, 13]]
    assert both.attention_mask.tolist() == [[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert both.response_mask.tolist() == [[0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1]]
    assert both.logprobs.tolist() == [[0, 0, 0, -0.5, 0, 0], [0, 0, 0, -0.5, -0.5, -0.5]]
    assert concat_rollouts([a, b.index([])], 0).sequences.tolist() == [[0, 5, 6, 7, 0, 0]]
