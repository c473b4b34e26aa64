"""The linear bandit against values known exactly (bandits.md) and the matched-feature optimum."""

import math

import pytest
import torch

from alignkit.bandits.data import preference_data
from alignkit.bandits.linear import best_in_class, features
from alignkit.bandits.objectives import build_env, policy_loss
from alignkit.bandits.optim import optimize, torch_threads
from alignkit.bandits.spec import AdaGradNormSpec, LBFGSSpec, LinearBanditSpec
from alignkit.bandits.study import run_study

F64 = torch.float64


def test_features_by_hand():
    """s = 1/4, a = 2: [(a+1) cos(pi/4), sin(pi/4)/(a+1)] = [3 r, r/3], r = sqrt(2)/2; flip swaps cos, sin."""
    s = torch.tensor([[0.25]], dtype=F64)
    r = math.sqrt(2) / 2
    assert torch.allclose(features(s, 4)[0, 2], torch.tensor([3 * r, r / 3], dtype=F64))
    s = torch.tensor([[1 / 3]], dtype=F64)  # cos = 1/2, sin = sqrt(3)/2
    assert torch.allclose(features(s, 4, flip=True)[0, 0], torch.tensor([math.sqrt(3) / 2, 0.5], dtype=F64))
    two = features(torch.tensor([[0.25, 1 / 3]], dtype=F64), 4)  # d_s = 2: coordinates interleaved
    assert two.shape == (1, 4, 4)
    assert torch.allclose(two[0, :, :2], features(s.new_tensor([[0.25]]), 4)[0])


def test_exact_values_d1_k4():
    """bandits.md: E_s max_a r(s,a) = 1.8634 and V(uniform) = 0.6631 for theta* = [1, 2].

    The uniform value in closed form: E cos(pi s) = 0, E sin(pi s) = 2/pi, mean 1/(a+1) = 25/48, so
    V = 2 (25/48)(2/pi) = 0.66315.
    """
    env = build_env(LinearBanditSpec(features="matched", evaluation="quadrature"), [0])
    out = env.evaluate({"theta": torch.zeros(1, 2, dtype=F64)}, beta=0.01)
    assert round(out["optimal_value"].item(), 4) == 1.8634
    assert round(out["value"].item(), 4) == 0.6631
    assert out["value"].item() == pytest.approx(2 * (25 / 48) * (2 / math.pi), abs=1e-12)


def test_monte_carlo_evaluation_is_close_to_quadrature():
    env = build_env(LinearBanditSpec(features="flip"), [0, 1])
    out = env.evaluate({"theta": torch.zeros(2, 2, dtype=F64)}, beta=0.01)
    assert torch.allclose(out["optimal_value"], torch.tensor(1.8634, dtype=F64), atol=0.03)
    assert torch.allclose(
        env.gap({"theta": torch.ones(2, 2, dtype=F64)}),
        env.evaluate({"theta": torch.ones(2, 2, dtype=F64)}, 0.01)["gap"],
    )


def test_best_in_class_gap():
    """bandits.md: with flipped policy features the best policy in the class has a gap of about 0.08."""
    flip = LinearBanditSpec(features="flip", evaluation="quadrature")
    gap = build_env(flip, [0]).best_in_class_gap().item()
    print(f"best-in-class gap (flip, quadrature): {gap:.5f}")
    assert 0.075 < gap < 0.085
    assert best_in_class(LinearBanditSpec(features="matched", evaluation="quadrature"))[1] == pytest.approx(
        1.86341853, abs=1e-7
    )


@pytest.mark.parametrize("spec", [AdaGradNormSpec(iterations=1000), LBFGSSpec()], ids=lambda s: s.name)
def test_rmbpo_with_true_reward_reaches_theta_star_over_beta(spec):
    """Matched features: pi ∝ exp(phi . theta*/beta) is the exact maximiser, and it is in the class."""
    beta = 0.5
    env = build_env(LinearBanditSpec(features="matched"), [0, 1, 2])
    data = preference_data(env, n=20, m=0)
    loss_fn, num_items = policy_loss(env, "rmb_po", data, env.true_rewards, beta)
    with torch_threads(1):
        params, _ = optimize(env.init_policy(), loss_fn, spec, num_items)
    assert torch.allclose(params["theta"], (env.theta_star / beta).expand(3, -1), atol=1e-7)


def test_dpo_rmbpo_rmbpo_plus_share_the_matched_optimum():
    """Matched features, same data: all three converge to theta_hat_MLE / beta (bandits.md), here at the
    released beta = 0.01 through the converged budget (L-BFGS with beta continuation)."""
    beta = 0.01
    fits = run_study(
        LinearBanditSpec(features="matched"), [0, 1, 2], n=[40], budgets=["converged"], beta=beta, log_every=0
    )
    res = {fit.method: fit.out for fit in fits}
    target = res["rmb_po"]["rm/theta_hat"] / beta
    assert not res["rmb_po"]["rm/separable"].any()
    for method in ("dpo", "rmb_po", "rmb_po_plus"):
        assert torch.allclose(res[method]["policy/theta"], target, rtol=1e-6), method
        assert res[method]["gap"].std() > 0  # the seeds differ
    assert torch.allclose(res["dpo"]["gap"], res["rmb_po"]["gap"], atol=1e-6)
