"""Bandit losses against hand-computed numbers and exact properties."""

import math

import pytest
import torch

from alignkit.bandits.losses import dpo_bandit_loss, evaluate_policy, kl_to_reference, rmbpo_objective


def test_dpo_loss_hand_computed():
    """One seed, two pairs, beta = 0.5.

    pair 1: logp+ = -1, logp- = -2, ref+ = ref- = -1.5
        chosen = 0.5 (-1 + 1.5) = 0.25, rejected = 0.5 (-2 + 1.5) = -0.25, margin = 0.5
        loss = log(1 + e^-0.5) = 0.474077
    pair 2: logp+ = -3, logp- = -1, ref+ = -2, ref- = -1
        chosen = 0.5 (-3 + 2) = -0.5, rejected = 0.5 (-1 + 1) = 0, margin = -0.5
        loss = log(1 + e^0.5) = 0.974077
    mean = 0.724077; accuracies 1/2; margins mean 0.
    """
    loss, metrics = dpo_bandit_loss(
        torch.tensor([[-1.0, -3.0]]),
        torch.tensor([[-2.0, -1.0]]),
        torch.tensor([[-1.5, -2.0]]),
        torch.tensor([[-1.5, -1.0]]),
        beta=0.5,
    )
    assert loss.shape == (1,)
    expected = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(0.5))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.724077, abs=1e-6)
    assert metrics["rewards/chosen"].item() == pytest.approx(-0.125)
    assert metrics["rewards/rejected"].item() == pytest.approx(-0.125)
    assert metrics["rewards/margins"].item() == pytest.approx(0.0)
    assert metrics["rewards/accuracies"].item() == pytest.approx(0.5)


def test_dpo_loss_is_log2_when_policy_equals_reference_and_as_beta_vanishes():
    logp = torch.randn(3, 7, dtype=torch.float64)
    other = torch.randn(3, 7, dtype=torch.float64)
    loss, _ = dpo_bandit_loss(logp, other, logp, other, beta=0.1)
    assert torch.allclose(loss, torch.full((3,), math.log(2), dtype=torch.float64))
    loss, _ = dpo_bandit_loss(logp, other, torch.zeros_like(logp), torch.zeros_like(logp), beta=1e-9)
    assert torch.allclose(loss, torch.full((3,), math.log(2), dtype=torch.float64), atol=1e-8)


def test_dpo_loss_gradient_is_minus_beta_sigmoid_of_minus_margin():
    logp_plus = torch.tensor([[-1.0, -0.2]], dtype=torch.float64, requires_grad=True)
    logp_minus = torch.tensor([[-2.0, -0.7]], dtype=torch.float64)
    beta = 0.3
    loss, _ = dpo_bandit_loss(logp_plus, logp_minus, torch.zeros_like(logp_minus), torch.zeros_like(logp_minus), beta)
    loss.sum().backward()
    margin = beta * (logp_plus.detach() - logp_minus)
    assert torch.allclose(logp_plus.grad, -beta * torch.sigmoid(-margin) / 2)


def test_rmbpo_exact_and_stopgrad_forms_agree_in_value_and_gradient():
    torch.manual_seed(0)
    r_hat = torch.randn(2, 5, 4, dtype=torch.float64)
    log_ref = torch.log_softmax(torch.randn(4, dtype=torch.float64), dim=0)
    grads, values = [], []
    for form in ("exact", "stopgrad"):
        logits = torch.randn(2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        logits.requires_grad_(True)
        loss, _ = rmbpo_objective(logits, r_hat, log_ref, beta=0.3, form=form)
        loss.sum().backward()
        grads.append(logits.grad)
        values.append(loss.detach())
    assert torch.allclose(values[0], values[1])
    assert torch.allclose(grads[0], grads[1], atol=1e-12)


def test_rmbpo_optimum_is_the_gibbs_policy_with_the_log_partition_value():
    """At pi = pi_ref exp(r/beta) / Z the loss is -beta mean_s log Z(s) and its gradient vanishes."""
    torch.manual_seed(0)
    beta = 0.5
    r_hat = torch.randn(1, 6, 4, dtype=torch.float64)
    log_ref = torch.log_softmax(torch.randn(4, dtype=torch.float64), dim=0)
    logits = (log_ref + r_hat / beta).requires_grad_(True)
    loss, metrics = rmbpo_objective(logits, r_hat, log_ref, beta)
    log_z = torch.logsumexp(log_ref + r_hat / beta, dim=-1)
    assert loss.item() == pytest.approx(-(beta * log_z).mean().item(), abs=1e-12)
    loss.sum().backward()
    assert logits.grad.abs().max() < 1e-12
    assert metrics["kl/ref"].item() > 0


def test_evaluate_policy_hand_computed():
    """One state, rewards [1, 3], pi = [1/4, 3/4] (logits log 1, log 3), uniform reference, beta 0.1.

    value = 1/4 + 9/4 = 2.5; optimal 3; gap 0.5;
    KL = 1/4 log(1/4 / 1/2) + 3/4 log(3/4 / 1/2) = -0.173287 + 0.304099 = 0.130812; objective 2.5 - 0.0130812.
    """
    logits = torch.log(torch.tensor([[[1.0, 3.0]]], dtype=torch.float64))
    rewards = torch.tensor([[[1.0, 3.0]]], dtype=torch.float64)
    log_ref = torch.full((2,), math.log(0.5), dtype=torch.float64)
    out = evaluate_policy(logits, rewards, log_ref, beta=0.1)
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert out["value"].item() == pytest.approx(2.5)
    assert out["optimal_value"].item() == pytest.approx(3.0)
    assert out["gap"].item() == pytest.approx(0.5)
    assert out["kl_ref"].item() == pytest.approx(kl)
    assert kl == pytest.approx(0.130812, abs=1e-6)
    assert out["objective"].item() == pytest.approx(2.5 - 0.1 * kl)
    assert kl_to_reference(logits, log_ref).item() == pytest.approx(kl)
