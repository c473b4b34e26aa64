"""The online RL tensor math in alignkit.ops.rl against numbers worked out by hand, plus limits and properties.

Layout used throughout: [B, T] over prompt + response, `mask` 1 on response tokens. Masked positions hold
junk (9, 100, ...) on purpose: none of it may reach an output.
"""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch

from alignkit.ops import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    AdaptiveKLController,
    Aggregation,
    FixedKLController,
    KLKind,
    aggregate,
    baseline_advantages,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    group_advantages,
    kl_penalty,
    leave_one_out_advantages,
    token_rewards,
    whiten,
)

LOG2 = math.log(2)


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def assert_close(actual: torch.Tensor, expected: list, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# --- KL estimators -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "expected"),
    [("k1", LOG2), ("k2", LOG2**2 / 2), ("k3", 0.5 - 1 + LOG2)],
)
def test_kl_estimators_at_log2_by_hand(kind: str, expected: float) -> None:
    """r = log pi - log ref = log 2 (pi twice ref): k1 = 0.693147; k2 = 0.693147^2 / 2 = 0.240227;
    k3 = e^-r - 1 + r = 1/2 - 1 + 0.693147 = 0.193147. At r = 0 all three are 0.
    """
    logprobs, ref = torch.tensor([LOG2 - 3.0, -1.0]), torch.tensor([-3.0, -1.0])
    kl = kl_penalty(logprobs, ref, kind)
    assert_close(kl, [expected, 0.0])


def test_k3_is_nonnegative_and_zero_only_at_zero() -> None:
    r = torch.linspace(-5, 5, 101)  # includes 0 exactly at index 50
    k3 = kl_penalty(r, torch.zeros_like(r), "k3")
    assert (k3 >= 0).all()
    assert k3[50].item() == 0.0 and (k3[torch.arange(101) != 50] > 0).all()


def test_k1_and_k3_are_unbiased_in_expectation() -> None:
    """Exact expectation over a categorical pi (no sampling): E_pi[k1] = sum pi log(pi/ref) = KL, and
    E_pi[k3] = sum pi (ref/pi - 1 + log(pi/ref)) = sum ref - 1 + KL = KL.
    """
    pi, ref = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    exact = (pi * (pi / ref).log()).sum()
    for kind in ("k1", "k3"):
        assert (pi * kl_penalty(pi.log(), ref.log(), kind)).sum().item() == pytest.approx(exact.item())


def test_kl_table_covers_the_literal_and_unknown_kinds_are_named() -> None:
    assert set(KL_ESTIMATORS) == set(get_args(KLKind))
    with pytest.raises(ValueError, match=r"got 'k4'.*allowed: k1, k2, k3"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")


# --- whiten --------------------------------------------------------------------------------------------------
def test_whiten_by_hand() -> None:
    """x = [1, 2, 3, 6]: mean 3, deviations [-2, -1, 0, 3], squares sum to 14, var = 14 / 3 (Bessel),
    std = 2.160247. Whitened: [-0.925820, -0.462910, 0, 1.388730]; shift_mean=False adds 3 back:
    [2.074180, 2.537090, 3, 4.388730].
    """
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert_close(whiten(x), [-0.925820, -0.462910, 0.0, 1.388730])
    assert_close(whiten(x, shift_mean=False), [2.074180, 2.537090, 3.0, 4.388730])


def test_whiten_uses_only_masked_entries_and_zeroes_the_rest() -> None:
    """The same four numbers spread over two rows, with junk (100, -50) in the masked-out column."""
    x, mask = t([1, 2, 100], [3, 6, -50]), t([1, 1, 0], [1, 1, 0])
    assert_close(whiten(x, mask), [[-0.925820, -0.462910, 0], [0, 1.388730, 0]])
    assert_close(whiten(x, mask, shift_mean=False), [[2.074180, 2.537090, 0], [3, 4.388730, 0]])


def test_whitened_entries_have_mean_zero_and_unit_std() -> None:
    x, mask = torch.randn(4, 7, generator=torch.Generator().manual_seed(0)), torch.rand(4, 7) > 0.3
    w = whiten(x, mask)[mask]
    assert w.mean().item() == pytest.approx(0.0, abs=1e-6) and w.std().item() == pytest.approx(1.0, abs=1e-5)


def test_whiten_with_fewer_than_two_entries_only_centres() -> None:
    """One entry (7): x - mean = 0, nothing to scale by; shift_mean=False gives 7 back. None: all 0, no NaN."""
    x = t([5, 7])
    assert whiten(x, t([0, 1])).tolist() == [[0.0, 0.0]]
    assert whiten(x, t([0, 1]), shift_mean=False).tolist() == [[0.0, 7.0]]
    assert whiten(x, t([0, 0])).tolist() == [[0.0, 0.0]]


# --- GAE -----------------------------------------------------------------------------------------------------
# Two rows of T = 5 holding the same 3-token response: row 0 after a 1-token prompt and before a pad,
# row 1 after a 2-token left-padded prompt. Junk (5, 9) sits where mask is 0.
GAE_MASK = t([0, 1, 1, 1, 0], [0, 0, 1, 1, 1])
GAE_REWARDS = t([5, 0, 0, 1, 5], [5, 5, 0, 0, 1])
GAE_VALUES = t([9, 0.5, 0.6, 0.7, 9], [9, 9, 0.5, 0.6, 0.7])


def on_response(x: list[float]) -> list[list[float]]:
    """The 3 per-token numbers placed where GAE_MASK puts the response in each row."""
    return [[0.0, *x, 0.0], [0.0, 0.0, *x]]


def test_gae_gamma_1_by_hand() -> None:
    """rewards [0, 0, 1], values [0.5, 0.6, 0.7], gamma 1, lam 0.95, V after the last token = 0:
    t=2: delta = 1 + 0 - 0.7 = 0.3, A = 0.3;
    t=1: delta = 0 + 0.7 - 0.6 = 0.1, A = 0.1 + 0.95 x 0.3 = 0.385;
    t=0: delta = 0 + 0.6 - 0.5 = 0.1, A = 0.1 + 0.95 x 0.385 = 0.46575.
    returns = A + V = [0.96575, 0.985, 1.0].
    """
    advantages, returns = gae(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=1.0, lam=0.95)
    assert_close(advantages, on_response([0.46575, 0.385, 0.3]))
    assert_close(returns, on_response([0.96575, 0.985, 1.0]))


def test_gae_gamma_09_by_hand() -> None:
    """gamma 0.9, lam 0.95 (gamma lam = 0.855):
    t=2: delta = 1 - 0.7 = 0.3, A = 0.3;
    t=1: delta = 0.9 x 0.7 - 0.6 = 0.03, A = 0.03 + 0.855 x 0.3 = 0.2865;
    t=0: delta = 0.9 x 0.6 - 0.5 = 0.04, A = 0.04 + 0.855 x 0.2865 = 0.2849575.
    returns = [0.7849575, 0.8865, 1.0].
    """
    advantages, returns = gae(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=0.9, lam=0.95)
    assert_close(advantages, on_response([0.2849575, 0.2865, 0.3]))
    assert_close(returns, on_response([0.7849575, 0.8865, 1.0]))


def test_gae_limits() -> None:
    """lam = 0 gives the one-step TD error [0.1, 0.1, 0.3]; gamma = lam = 1 gives Monte Carlo returns (the
    reward-to-go, 1 everywhere) and A = return - V = [0.5, 0.4, 0.3].
    """
    td, _ = gae(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=1.0, lam=0.0)
    assert_close(td, on_response([0.1, 0.1, 0.3]))
    advantages, returns = gae(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma=1.0, lam=1.0)
    assert_close(returns, on_response([1.0, 1.0, 1.0]))
    assert_close(advantages, on_response([0.5, 0.4, 0.3]))


def test_gae_targets_carry_no_gradient() -> None:
    values = GAE_VALUES.clone().requires_grad_()
    advantages, returns = gae(GAE_REWARDS, values, GAE_MASK, gamma=1.0, lam=0.95)
    assert not advantages.requires_grad and not returns.requires_grad


# --- rewards and advantages ----------------------------------------------------------------------------------
def test_token_rewards_by_hand() -> None:
    """kl_coef 0.1. Row 0 (response at 1..3, score 2): -0.1 x [0.1, 0.2, 0.3] = [-0.01, -0.02, -0.03], then
    -0.03 + 2 = 1.97 on its last token. Row 1 (response at 2..4, score -1): -0.1 x [0.5, -0.5, 1] =
    [-0.05, 0.05, -0.1], -0.1 - 1 = -1.1 at the end. Row 2 has no response: no KL, no score.
    """
    kl = t([7, 0.1, 0.2, 0.3, 7], [7, 7, 0.5, -0.5, 1.0], [7, 7, 7, 7, 7])
    mask = t([0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0])
    rewards = token_rewards(torch.tensor([2.0, -1.0, 3.0]), kl, mask, kl_coef=0.1)
    assert_close(rewards, [[0, -0.01, -0.02, 1.97, 0], [0, 0, -0.05, 0.05, -1.1], [0, 0, 0, 0, 0]])


def test_group_advantages_g2_by_hand() -> None:
    """Groups (1, 3) and (2, 2). (1, 3): mean 2, r - mean = [-1, 1], unbiased std sqrt((1 + 1) / 1) = 1.414214,
    A = [-1, 1] / 1.414314 = [-0.707057, 0.707057]. (2, 2): r - mean = 0, std 0, A = 0 / 1e-4 = 0.
    """
    a = group_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), group_size=2)
    assert_close(a, [-0.707057, 0.707057, 0.0, 0.0])


def test_group_advantages_g3_by_hand() -> None:
    """Groups (0, 1, 2) and (1, 1, 4). First: mean 1, r - mean = [-1, 0, 1], var (1 + 0 + 1) / 2 = 1,
    A = [-1, 0, 1] / 1.0001 = [-0.999900, 0, 0.999900]. Second: mean 2, r - mean = [-1, -1, 2],
    var (1 + 1 + 4) / 2 = 3, std 1.732051, A = [-1, -1, 2] / 1.732151 = [-0.577317, -0.577317, 1.154634].
    scale "none" (Dr. GRPO) stops at r - mean: [-1, 0, 1, -1, -1, 2].
    """
    rewards = torch.tensor([0.0, 1.0, 2.0, 1.0, 1.0, 4.0])
    assert_close(group_advantages(rewards, 3), [-0.999900, 0.0, 0.999900, -0.577317, -0.577317, 1.154634])
    assert_close(group_advantages(rewards, 3, scale="none"), [-1, 0, 1, -1, -1, 2])


def test_group_advantages_reject_bad_layouts() -> None:
    with pytest.raises(ValueError, match="5 entries, not a multiple of group_size 2"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="group_size must be at least 2"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="did you mean 'std'"):
        group_advantages(torch.zeros(4), 2, scale="sdt")


def test_remax_baseline_by_hand() -> None:
    """Sampled rewards [1, 0.5, -0.2] minus the greedy responses' [0.8, 0.5, 0.3] = [0.2, 0, -0.5]."""
    a = baseline_advantages(torch.tensor([1.0, 0.5, -0.2]), torch.tensor([0.8, 0.5, 0.3]))
    assert a.tolist() == pytest.approx([0.2, 0.0, -0.5])


# --- clipped losses ------------------------------------------------------------------------------------------
# ratios 0.5 (below 1 - 0.2), 1.1 (inside), 1.5 (above 1 + 0.2), and a masked token with ratio 3.
RATIOS = t([0.5, 1.1, 1.5, 3.0], [0.5, 1.1, 1.5, 3.0])
POLICY_MASK = t([1, 1, 1, 0], [1, 1, 1, 0])
SEQ_ADVANTAGES = torch.tensor([1.0, -1.0])


def test_clipped_policy_loss_by_hand() -> None:
    """clip_eps 0.2, -min(ratio A, clip(ratio, 0.8, 1.2) A).
    A = +1: 0.5 -> -min(0.5, 0.8) = -0.5; 1.1 -> -1.1; 1.5 -> -min(1.5, 1.2) = -1.2 (clipped).
    A = -1: 0.5 -> -min(-0.5, -0.8) = 0.8 (clipped); 1.1 -> 1.1; 1.5 -> -min(-1.5, -1.2) = 1.5.
    clipfrac 2/6. ratio mean (0.5 + 1.1 + 1.5) / 3 = 1.033333. approx_kl, (r - 1) - log r:
    0.5 -> 0.193147, 1.1 -> 0.004690, 1.5 -> 0.094535; mean 0.097457.
    """
    loss, metrics = clipped_policy_loss(RATIOS.log(), torch.zeros(2, 4), SEQ_ADVANTAGES, POLICY_MASK, clip_eps=0.2)
    assert_close(loss, [[-0.5, -1.1, -1.2, 0], [0.8, 1.1, 1.5, 0]])
    assert {k: v.item() for k, v in metrics.items()} == pytest.approx(
        {"clipfrac": 1 / 3, "ratio": 1.033333, "approx_kl": 0.097457}, abs=1e-6
    )


def test_clipped_policy_loss_token_advantages_match_sequence_advantages() -> None:
    token_advantages = SEQ_ADVANTAGES[:, None].expand(2, 4)
    per_seq, _ = clipped_policy_loss(RATIOS.log(), torch.zeros(2, 4), SEQ_ADVANTAGES, POLICY_MASK, 0.2)
    per_token, _ = clipped_policy_loss(RATIOS.log(), torch.zeros(2, 4), token_advantages, POLICY_MASK, 0.2)
    assert torch.equal(per_seq, per_token)


def test_clipped_policy_loss_clip_higher() -> None:
    """clip_eps_high 0.6: A = +1 at ratio 1.5 is inside [0.8, 1.6] now, loss -1.5; A = -1 at 0.5 is still
    clipped below (0.8). clipfrac 1/6.
    """
    loss, metrics = clipped_policy_loss(RATIOS.log(), torch.zeros(2, 4), SEQ_ADVANTAGES, POLICY_MASK, 0.2, 0.6)
    assert_close(loss, [[-0.5, -1.1, -1.5, 0], [0.8, 1.1, 1.5, 0]])
    assert metrics["clipfrac"].item() == pytest.approx(1 / 6)


def test_clipped_tokens_get_no_gradient() -> None:
    """d(-ratio A)/d log pi = -ratio A where unclipped: A = +1 -> [-0.5, -1.1, 0], A = -1 -> [0, 1.1, 1.5];
    the clipped term is constant in log pi, and the masked token gets nothing.
    """
    logprobs = RATIOS.log().requires_grad_()
    loss, _ = clipped_policy_loss(logprobs, torch.zeros(2, 4), SEQ_ADVANTAGES, POLICY_MASK, 0.2)
    loss.sum().backward()
    assert_close(logprobs.grad, [[-0.5, -1.1, 0, 0], [0, 1.1, 1.5, 0]])


def test_clipped_value_loss_by_hand() -> None:
    """clip_eps 0.2, old V 0.5, return 1; 0.5 max((V - R)^2, (0.5 + clamp(V - 0.5, -0.2, 0.2) - R)^2):
    V = 0.6 (inside): both 0.4^2 = 0.16 -> 0.08.
    V = 1.0 (clipped to 0.7): max(0, 0.3^2 = 0.09) -> 0.045, the clipped branch.
    V = 0.0 (clipped to 0.3): max(1, 0.7^2 = 0.49) -> 0.5, the unclipped branch.
    The fourth token is masked.
    """
    values = torch.tensor([[0.6, 1.0, 0.0, 9.0]])
    loss = clipped_value_loss(values, torch.full((1, 4), 0.5), torch.ones(1, 4), t([1, 1, 1, 0]), clip_eps=0.2)
    assert_close(loss, [[0.08, 0.045, 0.5, 0.0]])


# --- aggregation ---------------------------------------------------------------------------------------------
# Row sums / token counts / token means: [6, 3, 2], [4, 1, 4], [4, 2, 2], [4, 4, 1]; 10 tokens, 4 rows, budget 4.
AGG_LOSS = t([1, 2, 3, 100], [4, 100, 100, 100], [2, 2, 100, 100], [1, 1, 1, 1])
AGG_MASK = t([1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1])
AGG_EXPECTED = {
    "token_mean": 1.8,  # (6 + 4 + 4 + 4) / 10
    "seq_mean_token_mean": 2.25,  # (2 + 4 + 2 + 1) / 4
    "seq_mean_token_sum_norm": 1.125,  # (6 + 4 + 4 + 4) / 4 / 4
}
COUNTS = {"num_tokens": 10.0, "num_sequences": 4.0, "max_len": 4}


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_aggregate_by_hand(mode: str) -> None:
    """Numbers beside AGG_EXPECTED; the 100s are masked out and never count."""
    assert aggregate(AGG_LOSS, AGG_MASK, mode, **COUNTS).item() == pytest.approx(AGG_EXPECTED[mode])


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_aggregate_over_two_micro_batches_sums_to_the_whole(mode: str) -> None:
    """Rows {0, 1} then {2, 3}, with the step's counts: the two shares add up to the one-batch value."""
    shares = [aggregate(AGG_LOSS[rows], AGG_MASK[rows], mode, **COUNTS) for rows in (slice(0, 2), slice(2, 4))]
    assert sum(shares).item() == pytest.approx(aggregate(AGG_LOSS, AGG_MASK, mode, **COUNTS).item())


def test_token_mean_weighs_long_rows_more_than_seq_mean() -> None:
    """Unequal lengths: token_mean 1.8 (the 1-token row's 4 counts once in 10) vs seq_mean_token_mean 2.25."""
    token_mean = aggregate(AGG_LOSS, AGG_MASK, "token_mean", **COUNTS).item()
    seq_mean = aggregate(AGG_LOSS, AGG_MASK, "seq_mean_token_mean", **COUNTS).item()
    assert token_mean != pytest.approx(seq_mean)


def test_aggregation_table_covers_the_literal_and_unknown_modes_are_named() -> None:
    assert set(AGGREGATIONS) == set(get_args(Aggregation))
    with pytest.raises(ValueError, match="did you mean 'token_mean'"):
        aggregate(AGG_LOSS, AGG_MASK, "token_means", **COUNTS)


# --- diagnostics ---------------------------------------------------------------------------------------------
def test_entropy_by_hand() -> None:
    """Uniform over 8: log 8 = 2.079442, whatever the constant logit. Logits [0, log 3]: p = [1/4, 3/4],
    H = 0.25 log 4 + 0.75 log(4/3) = 0.346574 + 0.215762 = 0.562335. [100, 0, 0, 0]: ~3 x 100 e^-100 ~ 0.
    """
    logits = torch.stack([torch.zeros(4), torch.full((4,), 5.0)])
    uniform = entropy_from_logits(torch.cat([logits, logits], dim=-1))
    assert uniform.tolist() == pytest.approx([math.log(8)] * 2, abs=1e-6)
    assert entropy_from_logits(torch.tensor([0.0, math.log(3)])).item() == pytest.approx(0.562335, abs=1e-6)
    assert entropy_from_logits(torch.tensor([100.0, 0, 0, 0])).item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_is_float32_for_half_precision_logits() -> None:
    assert entropy_from_logits(torch.zeros(2, 3, 8, dtype=torch.bfloat16)).dtype == torch.float32


def test_explained_variance_by_hand() -> None:
    """Returns [1, 2, 3, 4] (population var 1.25), junk in the masked column.
    V = R: 1. V = 2.5, the mean: Var(R - V) = Var(R), 0. V = [1, 2, 3, 3]: R - V = [0, 0, 0, 1], var 0.1875,
    1 - 0.1875 / 1.25 = 0.85 (the same with Bessel's correction, which cancels in the ratio).
    Constant returns: Var(R) = 0, reported as 0 rather than NaN.
    """
    returns, mask = t([1, 2, 3, 4, 50]), t([1, 1, 1, 1, 0])
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 5), 2.5), returns, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert explained_variance(t([1, 2, 3, 3, -9]), returns, mask).item() == pytest.approx(0.85)
    assert explained_variance(t([0, 1, 2, 3, 4]), torch.ones(1, 5), mask).item() == 0.0


# --- KL controllers ------------------------------------------------------------------------------------------
def test_adaptive_kl_controller_by_hand() -> None:
    """init 0.2, target 6, horizon 10000.
    KL 9, 512 steps: error 9/6 - 1 = 0.5, clipped to 0.2; 0.2 x (1 + 0.2 x 0.0512) = 0.202048.
    KL 5.4, 1000 steps: error 0.9 - 1 = -0.1; 0.202048 x (1 - 0.1 x 0.1) = 0.20002752.
    KL 0, 1000 steps: error -1, clipped to -0.2; 0.20002752 x 0.98 = 0.1960269696.
    """
    controller = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    expected = [0.202048, 0.20002752, 0.1960269696]
    for (kl, n_steps), value in zip([(9.0, 512), (5.4, 1000), (0.0, 1000)], expected, strict=True):
        controller.update(kl, n_steps)
        assert controller.value == pytest.approx(value, rel=1e-9)


def test_kl_controllers_resume_from_state_dict() -> None:
    """A controller rebuilt from its config and loaded with the state continues the coefficient exactly."""
    run = AdaptiveKLController(0.2, 6.0, 10000)
    run.update(9.0, 512)
    resumed = AdaptiveKLController(0.2, 6.0, 10000)
    resumed.load_state_dict(run.state_dict())
    run.update(5.4, 1000)
    resumed.update(5.4, 1000)
    assert resumed.value == run.value
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.05
    restored = FixedKLController(0.05)
    restored.load_state_dict(fixed.state_dict())
    assert restored.value == 0.05


def test_leave_one_out_advantages_by_hand() -> None:
    """k = 2: [1, 3 | 2, 2] -> each minus the other: [1 - 3, 3 - 1, 0, 0] = [-2, 2, 0, 0].
    k = 3: [1, 2, 6] -> others' means (2 + 6) / 2 = 4, (1 + 6) / 2 = 3.5, (1 + 2) / 2 = 1.5 -> [-3, -1.5, 4.5]."""
    assert_close(leave_one_out_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), 2), [-2.0, 2.0, 0.0, 0.0])
    assert_close(leave_one_out_advantages(torch.tensor([1.0, 2.0, 6.0]), 3), [-3.0, -1.5, 4.5])


def test_leave_one_out_baseline_excludes_the_sample_itself() -> None:
    """A sample's baseline (r_i - A_i) does not move when its own reward does, and A = k / (k - 1) (r - mean)."""
    rewards = torch.tensor([0.3, -1.2, 2.0, 0.7, 5.0, 1.0, 1.0, -2.0])
    baseline = rewards - leave_one_out_advantages(rewards, 4)
    moved = rewards.clone()
    moved[[1, 6]] += torch.tensor([10.0, -3.0])
    moved_baseline = moved - leave_one_out_advantages(moved, 4)
    torch.testing.assert_close(moved_baseline[[1, 6]], baseline[[1, 6]])
    expected = 4 / 3 * group_advantages(rewards, 4, scale="none")
    torch.testing.assert_close(leave_one_out_advantages(rewards, 4), expected)
    with pytest.raises(ValueError, match="group_size must be at least 2"):
        leave_one_out_advantages(rewards, 1)


def test_rloo_puts_the_kl_in_the_reward_before_the_baseline() -> None:
    """scores [1, 0 | 2, 2], KL per response [2, 0 | 1, 3], kl_coef 0.5, k = 2: rewards [1 - 1, 0 - 0 | 2 - 0.5,
    2 - 1.5] = [0, 0 | 1.5, 0.5]; advantages [0 - 0, 0 - 0 | 1.5 - 0.5, 0.5 - 1.5] = [0, 0, 1, -1]. Without KL
    the scores alone: [1, -1, 0, 0]."""
    from alignkit.algorithms.rloo import rloo_advantages

    scores, kl = torch.tensor([1.0, 0.0, 2.0, 2.0]), torch.tensor([2.0, 0.0, 1.0, 3.0])
    advantages, rewards = rloo_advantages(scores, kl, 2, 0.5)
    assert_close(rewards, [0.0, 0.0, 1.5, 0.5])
    assert_close(advantages, [0.0, 0.0, 1.0, -1.0])
    assert_close(rloo_advantages(scores, None, 2, 0.0)[0], [1.0, -1.0, 0.0, 0.0])
