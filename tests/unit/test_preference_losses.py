"""DPO (every loss type) and KTO losses against numbers worked out by hand, plus their limits and gradients.

softplus(x) = log(1 + e^x) = -log sigmoid(-x) appears throughout:
softplus(-1) = 0.313262, softplus(1) = 1.313262, softplus(-0.5) = 0.474077, softplus(0.5) = 0.974077.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.algorithms.configs.dpo import DPOConfig
from alignkit.algorithms.dpo import LOSSES, dpo_loss
from alignkit.algorithms.kto import kto_loss

# Two pairs. Pair 1: chosen ratio -1 - (-2) = 1, rejected ratio -3 - (-2) = -1, h = 2.
# Pair 2: chosen ratio -2 - (-1.5) = -0.5, rejected ratio -1 - (-1.5) = 0.5, h = -1.
PI_W, PI_L = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
REF_W, REF_L = torch.tensor([-2.0, -1.5]), torch.tensor([-2.0, -1.5])
BETA = 0.5  # beta * h = [1, -0.5]


def loss_of(loss_type: str, eps: float = 0.0, beta: float = BETA) -> float:
    return dpo_loss(PI_W, PI_L, REF_W, REF_L, beta, loss_type, eps)[0].item()


def test_dpo_sigmoid_by_hand() -> None:
    """-log sigmoid(beta h) = softplus(-beta h): softplus(-1) = 0.313262, softplus(0.5) = 0.974077.

    loss = (0.313262 + 0.974077) / 2 = 0.643670. Rewards beta * ratio: chosen [0.5, -0.25] -> mean 0.125,
    rejected [-0.5, 0.25] -> -0.125; margins [1, -0.5] -> 0.25; accuracy 1/2; logps chosen (-1 - 2) / 2 = -1.5,
    rejected (-3 - 1) / 2 = -2.
    """
    loss, metrics = dpo_loss(PI_W, PI_L, REF_W, REF_L, BETA, "sigmoid")
    assert loss.item() == pytest.approx(0.643670, abs=1e-6)
    assert {k: v.item() for k, v in metrics.items()} == pytest.approx(
        {
            "loss": 0.643670,
            "rewards/chosen": 0.125,
            "rewards/rejected": -0.125,
            "rewards/margins": 0.25,
            "rewards/accuracies": 0.5,
            "logps/chosen": -1.5,
            "logps/rejected": -2.0,
        },
        abs=1e-6,
    )


def test_dpo_ipo_by_hand() -> None:
    """(h - 1 / (2 beta))^2 with 1 / (2 x 0.5) = 1: (2 - 1)^2 = 1, (-1 - 1)^2 = 4; mean 2.5."""
    assert loss_of("ipo") == pytest.approx(2.5)


def test_dpo_hinge_by_hand() -> None:
    """max(0, 1 - beta h): max(0, 1 - 1) = 0, max(0, 1 + 0.5) = 1.5; mean 0.75."""
    assert loss_of("hinge") == pytest.approx(0.75)


def test_conservative_dpo_by_hand() -> None:
    """eps = 0.1: (1 - eps) softplus(-x) + eps softplus(x), x = beta h, which equals softplus(-x) + eps x.

    x = 1: 0.9 x 0.313262 + 0.1 x 1.313262 = 0.413262; x = -0.5: 0.9 x 0.974077 + 0.1 x 0.474077 = 0.924077;
    mean 0.668670.
    """
    assert loss_of("sigmoid", 0.1) == pytest.approx(0.668670, abs=1e-6)


def test_robust_dpo_by_hand() -> None:
    """eps = 0.1: ((1 - eps) softplus(-x) - eps softplus(x)) / (1 - 2 eps).

    x = 1: (0.9 x 0.313262 - 0.1 x 1.313262) / 0.8 = 0.150610 / 0.8 = 0.188262;
    x = -0.5: (0.9 x 0.974077 - 0.1 x 0.474077) / 0.8 = 0.829261 / 0.8 = 1.036577; mean 0.612419.
    """
    assert loss_of("robust", 0.1) == pytest.approx(0.612419, abs=1e-6)


def test_dpo_loss_table_covers_the_config_literal() -> None:
    assert set(LOSSES) == set(DPOConfig.model_fields["loss_type"].annotation.__args__)


@pytest.mark.parametrize(
    ("loss_type", "eps", "expected"),
    [
        ("sigmoid", 0.0, math.log(2)),
        ("sigmoid", 0.2, math.log(2)),
        ("robust", 0.2, math.log(2)),
        ("hinge", 0.0, 1.0),
        ("ipo", 0.0, 1 / (4 * BETA**2)),  # (0 - 1 / (2 beta))^2
    ],
)
def test_dpo_symmetric_inputs(loss_type: str, eps: float, expected: float) -> None:
    """Chosen and rejected alike (h = 0): nothing to prefer; the loss is the value at h = 0, rewards 0."""
    logps = torch.tensor([-3.0, -7.5])
    loss, metrics = dpo_loss(logps, logps.clone(), logps - 1, logps - 1, BETA, loss_type, eps)
    assert loss.item() == pytest.approx(expected)
    assert metrics["rewards/margins"].item() == 0.0 and metrics["rewards/accuracies"].item() == 0.0


@pytest.mark.parametrize(("loss_type", "limit"), [("sigmoid", math.log(2)), ("robust", math.log(2)), ("hinge", 1.0)])
def test_dpo_beta_to_zero(loss_type: str, limit: float) -> None:
    """As beta -> 0 the policy is held at the reference: the loss no longer depends on h."""
    eps = 0.1 if loss_type == "robust" else 0.0
    assert loss_of(loss_type, eps, beta=1e-7) == pytest.approx(limit, abs=1e-6)


@pytest.mark.parametrize("loss_type", sorted(LOSSES))
def test_dpo_depends_on_the_reference_only_through_its_difference(loss_type: str) -> None:
    """Shifting both reference log-probs of a pair by the same constant leaves h, hence the loss, unchanged."""
    shifted = dpo_loss(PI_W, PI_L, REF_W + 3.0, REF_L + 3.0, BETA, loss_type)[0].item()
    assert shifted == pytest.approx(loss_of(loss_type))


def test_dpo_gradient_at_h_zero_by_hand() -> None:
    """d/dh [softplus(-beta h) + eps beta h] = -beta sigmoid(-beta h) + eps beta = -beta (1/2 - eps) at h = 0.

    beta 0.5, eps 0.1: -0.2 per pair; the mean over 2 pairs gives -0.1 on each chosen log-prob, +0.1 on each
    rejected one.
    """
    pi_w, pi_l = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    dpo_loss(pi_w, pi_l, torch.zeros(2), torch.zeros(2), BETA, "sigmoid", 0.1)[0].backward()
    torch.testing.assert_close(pi_w.grad, torch.full((2,), -0.1))
    torch.testing.assert_close(pi_l.grad, torch.full((2,), 0.1))


@pytest.mark.parametrize("x", [-2.0, -0.3, 0.0, 1.7])
def test_robust_dpo_is_unbiased_under_label_flips(x: float) -> None:
    """rDPO's point: a pair flipped with probability eps has expected loss equal to clean DPO's.

    (1 - eps) L_rob(h) + eps L_rob(-h) = softplus(-beta h) (Chowdhury et al. 2024, Lemma 3.1).
    """
    eps, h = 0.2, torch.tensor([x / BETA])
    expected = LOSSES["robust"](h, BETA, eps) * (1 - eps) + LOSSES["robust"](-h, BETA, eps) * eps
    torch.testing.assert_close(expected, LOSSES["sigmoid"](h, BETA, 0.0))


def test_label_smoothing_only_with_a_noise_model() -> None:
    with pytest.raises(ValueError, match="label_smoothing applies to loss_type sigmoid or robust"):
        DPOConfig(loss_type="ipo", label_smoothing=0.1)
    assert DPOConfig(loss_type="robust", label_smoothing=0.1).label_smoothing == 0.1


# -- KTO ----------------------------------------------------------------------------------------------------

POLICY, REF = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-2.0, -2.0, -2.0])  # ratios r = [1, 0, -1]
LABELS = torch.tensor([True, True, False])


def test_kto_by_hand() -> None:
    """beta 1, z0 = 0.5, lambda_D 2, lambda_U 1.

    Desirable: 2 (1 - sigmoid(1 - 0.5)) = 2 x 0.377541 = 0.755082; 2 (1 - sigmoid(0 - 0.5)) = 2 x 0.622459
    = 1.244918. Undesirable: 1 - sigmoid(0.5 - (-1)) = 1 - 0.817574 = 0.182426. Mean (2 + 0.182426) / 3
    = 0.727475. Rewards: chosen mean(1, 0) = 0.5, rejected -1, margins 1.5; both desirable rewards beat the
    undesirable one: accuracy 1. logps: chosen -1.5, rejected -3.
    """
    loss, metrics = kto_loss(POLICY, REF, LABELS, torch.tensor(0.5), beta=1.0, desirable_weight=2.0)
    assert loss.item() == pytest.approx(0.727475, abs=1e-6)
    assert {k: v.item() for k, v in metrics.items()} == pytest.approx(
        {
            "loss": 0.727475,
            "kl/z0": 0.5,
            "rewards/chosen": 0.5,
            "rewards/rejected": -1.0,
            "rewards/margins": 1.5,
            "rewards/accuracies": 1.0,
            "logps/chosen": -1.5,
            "logps/rejected": -3.0,
        },
        abs=1e-6,
    )


def test_kto_z0_is_clamped_at_zero_and_gets_no_gradient() -> None:
    """A negative KL estimate (noise: KL >= 0) counts as 0: same loss as kl = 0; the estimate is a constant."""
    kl, policy = torch.tensor(-0.3, requires_grad=True), POLICY.clone().requires_grad_()
    loss, metrics = kto_loss(policy, REF, LABELS, kl, beta=1.0)
    assert metrics["kl/z0"].item() == 0.0
    assert loss.item() == pytest.approx(kto_loss(POLICY, REF, LABELS, torch.tensor(0.0), beta=1.0)[0].item())
    loss.backward()
    assert kl.grad is None or kl.grad.abs().max() == 0


def test_kto_weights_scale_each_group() -> None:
    """Doubling lambda_U doubles only the undesirable term: 0.182426 more over 3 examples."""
    base = kto_loss(POLICY, REF, LABELS, torch.tensor(0.5), beta=1.0)[0].item()
    heavier = kto_loss(POLICY, REF, LABELS, torch.tensor(0.5), beta=1.0, undesirable_weight=2.0)[0].item()
    assert heavier - base == pytest.approx(0.182426 / 3, abs=1e-6)


@pytest.mark.parametrize("kl", [0.0, 0.7])
def test_kto_limits(kl: float) -> None:
    """beta -> 0, or every log-ratio equal to z0: each example sits at the sigmoid's midpoint, loss lambda / 2."""
    weights = {"desirable_weight": 1.5, "undesirable_weight": 0.5}
    expected = (1.5 / 2 + 1.5 / 2 + 0.5 / 2) / 3
    assert kto_loss(POLICY, REF, LABELS, torch.tensor(kl), beta=1e-7, **weights)[0].item() == pytest.approx(expected)
    at_z0 = REF + kl
    assert kto_loss(at_z0, REF, LABELS, torch.tensor(kl), **weights)[0].item() == pytest.approx(expected)


def test_kto_gradient_by_hand() -> None:
    """d/dr lambda_D (1 - sigmoid(beta (r - z0))) = -lambda_D beta s (1 - s), s = sigmoid(beta (r - z0)).

    beta 1, r = z0 = 0: s = 1/2, so -1/4 on the desirable example and +1/4 on the undesirable one, over 2.
    """
    policy = torch.zeros(2, requires_grad=True)
    kto_loss(policy, torch.zeros(2), torch.tensor([True, False]), torch.tensor(0.0), beta=1.0)[0].backward()
    torch.testing.assert_close(policy.grad, torch.tensor([-0.125, 0.125]))


def test_kto_accuracy_is_the_batch_auc_and_groups_may_be_missing() -> None:
    """Desirable rewards [1, -2] vs undesirable [0]: one of two (desirable, undesirable) pairs ordered right."""
    _, metrics = kto_loss(torch.tensor([1.0, -2.0, 0.0]), torch.zeros(3), LABELS, torch.tensor(0.0), beta=1.0)
    assert metrics["rewards/accuracies"].item() == 0.5
    _, only_desirable = kto_loss(POLICY[:2], REF[:2], LABELS[:2], torch.tensor(0.0))
    assert "rewards/chosen" in only_desirable
    assert not {"rewards/rejected", "rewards/margins", "rewards/accuracies"} & set(only_desirable)
