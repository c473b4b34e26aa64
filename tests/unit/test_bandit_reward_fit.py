"""Reward-model fits: the batched logistic-regression MLE against independent solutions, and Bradley-Terry."""

import math

import pytest
import torch

from alignkit.bandits.data import PreferenceData, preference_data
from alignkit.bandits.objectives import build_env
from alignkit.bandits.optim import torch_threads
from alignkit.bandits.reward_fit import bradley_terry_loss, fit_logistic_mle, fit_neural_reward
from alignkit.bandits.spec import NeuralBanditSpec

F64 = torch.float64


def score_1d(w: float, x: list[float]) -> float:
    """d/dw mean_i log sigmoid(w x_i) = mean_i sigmoid(-w x_i) x_i, decreasing in w."""
    return sum(x_i / (1 + math.exp(w * x_i)) for x_i in x) / len(x)


def test_logistic_mle_1d_matches_bisection_on_the_score():
    x = [1.3, 0.4, -0.7, 2.1, -0.2, 0.9]
    lo, hi = -50.0, 50.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if score_1d(mid, x) > 0 else (lo, mid)
    fit = fit_logistic_mle(torch.tensor(x, dtype=F64)[None, :, None])
    assert fit.converged.item() and not fit.separable.item()
    assert fit.theta_hat.item() == pytest.approx((lo + hi) / 2, abs=1e-10)


def test_logistic_mle_2d_matches_long_gradient_descent():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 30, 2, generator=gen, dtype=F64) + torch.tensor([0.5, -0.3], dtype=F64)
    w = torch.zeros(2, dtype=F64)
    step = 4 / torch.linalg.eigvalsh((x[0].T @ x[0]) / 30).max()  # 1/L, L = lambda_max / 4
    for _ in range(20_000):
        w = w + step * (torch.sigmoid(-(x[0] @ w))[:, None] * x[0]).mean(0)
    fit = fit_logistic_mle(x)
    assert torch.allclose(fit.theta_hat[0], w, atol=1e-8)


def test_separable_pairs_are_flagged_and_capped():
    x = torch.tensor([[[0.5], [1.0], [2.0]], [[0.5], [-1.0], [2.0]]], dtype=F64)  # seed 0 separable
    fit = fit_logistic_mle(x, max_norm=100.0)
    assert fit.separable.tolist() == [True, False]
    assert fit.converged.tolist() == [False, True]
    assert fit.theta_hat[0].item() == pytest.approx(100.0)


def test_batched_fit_equals_single_fits():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 15, 2, generator=gen, dtype=F64) + 0.4
    together = fit_logistic_mle(x)
    for s in range(4):
        alone = fit_logistic_mle(x[s : s + 1])
        assert torch.allclose(together.theta_hat[s], alone.theta_hat[0], atol=1e-12)


def test_bradley_terry_loss_by_hand():
    """r_hat = [0, 1, 3]; pairs (1 over 0), (0 over 2): log(1 + e^-1) = 0.313262, log(1 + e^3) = 3.048587."""
    r_hat = torch.tensor([[[0.0, 1.0, 3.0], [0.0, 1.0, 3.0]]])
    loss = bradley_terry_loss(r_hat, torch.tensor([[1, 0]]), torch.tensor([[0, 2]]))
    assert loss.item() == pytest.approx((0.313262 + 3.048587) / 2, abs=1e-5)


def test_neural_reward_model_fits_noise_free_preferences_at_the_released_budget():
    """Labels ordered by the true reward (the noise-free limit of Bradley-Terry): 20 epochs fit them."""
    env = build_env(NeuralBanditSpec(state_dim=5, num_actions=4, num_eval_states=10), [0, 1])
    data = preference_data(env, n=256, m=0)
    r = env.true_rewards(data.states)
    up = r.gather(-1, data.a_plus[..., None])[..., 0] > r.gather(-1, data.a_minus[..., None])[..., 0]
    a_hi, a_lo = torch.where(up, data.a_plus, data.a_minus), torch.where(up, data.a_minus, data.a_plus)
    with torch_threads(1):  # as run_study does: small tensors, shared cores
        r_hat, info = fit_neural_reward(env, PreferenceData(data.states, a_hi, a_lo, data.extra_states))
    assert r_hat(data.states).shape == (2, 256, 4)
    assert (info["rm/accuracy"] > 0.95).all() and (info["rm/loss"] < 0.3).all()
