"""DPO (every loss type), KTO, SimPO, ORPO and CPO losses against numbers worked out by hand, plus their limits and
gradients.

softplus(x) = log(1 + e^x) = -log sigmoid(-x) appears throughout:
softplus(-1) = 0.313262, softplus(1) = 1.313262, softplus(-0.5) = 0.474077, softplus(0.5) = 0.974077,
softplus(-0.25) = 0.575939, softplus(0.25) = 0.825939, softplus(-0.75) = 0.386871, softplus(0) = log 2 = 0.693147.
sigmoid(0.25) = 0.562177, sigmoid(0.5) = 0.622459, sigmoid(1) = 0.731059 (sigmoid(-x) = 1 - sigmoid(x)).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alignkit.algorithms.configs.dpo import DPOConfig
from alignkit.algorithms.cpo import cpo_loss
from alignkit.algorithms.dpo import LOSSES, dpo_loss
from alignkit.algorithms.kto import kto_loss
from alignkit.algorithms.orpo import log_odds, orpo_loss
from alignkit.algorithms.simpo import simpo_loss

# Two pairs. Pair 1: chosen ratio -1 - (-2) = 1, rejected ratio -3 - (-2) = -1, h = 2.
# Pair 2: chosen ratio -2 - (-1.5) = -0.5, rejected ratio -1 - (-1.5) = 0.5, h = -1.
PI_W, PI_L = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
REF_W, REF_L = torch.tensor([-2.0, -1.5]), torch.tensor([-2.0, -1.5])
BETA = 0.5  # beta * h = [1, -0.5]; beta * c = [0.5, -0.25]; beta * r = [-0.5, 0.25]


def loss_of(loss_type: str, eps: float = 0.0, beta: float = BETA, **kwargs: object) -> float:
    return dpo_loss(PI_W, PI_L, REF_W, REF_L, beta, loss_type, eps, **kwargs)[0].item()  # type: ignore[arg-type]


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


def test_dpo_ipo_per_token_by_hand() -> None:
    """Token counts chosen [2, 4], rejected [4, 1]: ratios per token c = [1/2, -0.5/4] = [0.5, -0.125],
    r = [-1/4, 0.5/1] = [-0.25, 0.5]; h = [0.75, -0.625]; (0.75 - 1)^2 = 0.0625, (-0.625 - 1)^2 = 2.640625;
    mean 1.3515625. Rewards follow the loss: chosen beta * c = [0.25, -0.0625] -> mean 0.09375; logps stay sums.
    """
    tokens = {"chosen_tokens": torch.tensor([2, 4]), "rejected_tokens": torch.tensor([4, 1])}
    loss, metrics = dpo_loss(PI_W, PI_L, REF_W, REF_L, BETA, "ipo", **tokens)
    assert loss.item() == pytest.approx(1.3515625)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.09375)
    assert metrics["logps/chosen"].item() == pytest.approx(-1.5)


@pytest.mark.parametrize("loss_type", ["ipo", "sigmoid", "sppo_hard"])
def test_per_token_log_ratios_are_sums_over_token_counts(loss_type: str) -> None:
    """Dividing by the counts inside the loss is the loss of the per-token log-probs (sums / counts)."""
    n_w, n_l = torch.tensor([3, 7]), torch.tensor([5, 2])
    inside = loss_of(loss_type, chosen_tokens=n_w, rejected_tokens=n_l)
    outside = dpo_loss(PI_W / n_w, PI_L / n_l, REF_W / n_w, REF_L / n_l, BETA, loss_type)[0].item()
    assert inside == pytest.approx(outside)
    with pytest.raises(ValueError, match="give both chosen_tokens and rejected_tokens"):
        loss_of(loss_type, chosen_tokens=n_w)


def test_ipo_is_per_token_by_default_and_sums_on_request() -> None:
    assert DPOConfig(loss_type="ipo").per_token and not DPOConfig(loss_type="ipo", logps_normalize="none").per_token
    assert not DPOConfig().per_token and DPOConfig(logps_normalize="tokens").per_token


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


def test_exo_pair_by_hand() -> None:
    """eps = 0.1, x = beta h: sigmoid(x) (log sigmoid(x) - log 0.9) + sigmoid(-x) (log sigmoid(-x) - log 0.1),
    log 0.9 = -0.105361, log 0.1 = -2.302585.

    x = 1: 0.731059 x (-0.313262 + 0.105361) + 0.268941 x (-1.313262 + 2.302585) = -0.151988 + 0.266070 = 0.114082;
    x = -0.5: 0.377541 x (-0.974077 + 0.105361) + 0.622459 x (-0.474077 + 2.302585) = -0.327976 + 1.138172
    = 0.810196; mean 0.462139.
    """
    assert loss_of("exo_pair", 0.1) == pytest.approx(0.462139, abs=1e-6)


def test_exo_pair_is_a_kl_zero_where_the_pair_matches_the_smoothed_labels() -> None:
    """EXO's loss is KL(sigmoid(+-x) || (1 - eps, eps)) >= 0: zero, with zero gradient, at sigmoid(x) = 1 - eps,
    i.e. x = log((1 - eps) / eps) = log 9 for eps = 0.1; it does not push the margin further (unlike DPO)."""
    h = torch.tensor([math.log(9) / BETA], requires_grad=True)
    loss = LOSSES["exo_pair"](h, torch.zeros(1), BETA, 0.1, 0.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and h.grad.abs().item() < 1e-6
    for x in (-3.0, 0.0, 1.0, 5.0):
        assert LOSSES["exo_pair"](torch.tensor([x]), torch.zeros(1), 1.0, 0.1, 0.0).item() > 0
    with pytest.raises(ValueError, match="exo_pair needs label_smoothing in"):
        LOSSES["exo_pair"](h, torch.zeros(1), BETA, 0.0, 0.0)


def test_nca_pair_by_hand() -> None:
    """-log sigmoid(beta c) - 1/2 log sigmoid(-beta c) - 1/2 log sigmoid(-beta r), i.e.
    softplus(-beta c) + softplus(beta c) / 2 + softplus(beta r) / 2.

    Pair 1, beta c = 0.5, beta r = -0.5: 0.474077 + 0.974077 / 2 + 0.474077 / 2 = 1.198154.
    Pair 2, beta c = -0.25, beta r = 0.25: 0.825939 + 0.575939 / 2 + 0.825939 / 2 = 1.526878; mean 1.362516.
    """
    assert loss_of("nca_pair") == pytest.approx(1.362516, abs=1e-6)


def test_nca_pair_holds_the_chosen_reward_at_log_2_and_always_lowers_the_rejected() -> None:
    """d/dx [softplus(-x) + softplus(x) / 2] = -sigmoid(-x) + sigmoid(x) / 2 = 0 at sigmoid(x) = 2/3, x = log 2:
    the chosen reward rises to log 2 and no further; d/dy softplus(y) / 2 = sigmoid(y) / 2 > 0 for the rejected."""
    c = torch.tensor([math.log(2) / BETA], requires_grad=True)
    r = torch.tensor([3.0, -3.0], requires_grad=True)
    LOSSES["nca_pair"](c, r, BETA, 0.0, 0.0).sum().backward()
    assert c.grad.abs().item() < 1e-6
    assert (r.grad > 0).all()


def test_bco_pair_by_hand() -> None:
    """delta = 0.25: softplus(-(beta c - delta)) + softplus(beta r - delta).

    Pair 1: softplus(-0.25) + softplus(-0.75) = 0.575939 + 0.386871 = 0.962810;
    pair 2: softplus(0.5) + softplus(0) = 0.974077 + 0.693147 = 1.667224; mean 1.315017.
    """
    assert loss_of("bco_pair", reward_shift=0.25) == pytest.approx(1.315017, abs=1e-6)


@pytest.mark.parametrize("delta", [-1.0, 0.0, 0.3, 2.0])
def test_bco_pair_bounds_dpo_from_above(delta: float) -> None:
    """Jung et al. 2024, Theorem 1: the binary cross-entropy of the shifted rewards is at least DPO's loss, for
    any shift (log sigmoid(a) + log sigmoid(-b) <= log sigmoid(a - b))."""
    g = torch.Generator().manual_seed(0)
    c, r = torch.randn(64, generator=g) * 3, torch.randn(64, generator=g) * 3
    bco = LOSSES["bco_pair"](c, r, BETA, 0.0, delta)
    assert (bco >= LOSSES["sigmoid"](c, r, BETA, 0.0, 0.0) - 1e-6).all()


def test_sppo_hard_by_hand() -> None:
    """(c - 1/(2 beta))^2 + (r + 1/(2 beta))^2 with 1/(2 beta) = 1: pair 1 (1 - 1)^2 + (-1 + 1)^2 = 0;
    pair 2 (-0.5 - 1)^2 + (0.5 + 1)^2 = 2.25 + 2.25 = 4.5; mean 2.25."""
    assert loss_of("sppo_hard") == pytest.approx(2.25)


def test_sppo_hard_targets_each_log_ratio() -> None:
    """Zero loss and gradient at c = +1/(2 beta), r = -1/(2 beta): each completion's log-ratio has its own target
    (eta / 2 = 1 / (2 beta) for the winner's P = 1), unlike IPO's target for their difference alone."""
    c, r = torch.tensor([1.0], requires_grad=True), torch.tensor([-1.0], requires_grad=True)
    loss = LOSSES["sppo_hard"](c, r, BETA, 0.0, 0.0)
    loss.backward()
    assert loss.item() == 0.0 and c.grad.item() == 0.0 and r.grad.item() == 0.0
    # the same h = 2 elsewhere is no longer optimal
    assert LOSSES["sppo_hard"](torch.tensor([3.0]), torch.tensor([1.0]), BETA, 0.0, 0.0).item() == pytest.approx(8.0)


def test_apo_zero_by_hand() -> None:
    """1 - sigmoid(beta c) + sigmoid(beta r): pair 1: 1 - 0.622459 + 0.377541 = 0.755082;
    pair 2: 1 - 0.437823 + 0.562177 = 1.124354; mean 0.939718."""
    assert loss_of("apo_zero") == pytest.approx(0.939718, abs=1e-6)


def test_apo_down_by_hand() -> None:
    """sigmoid(beta c) + 1 - sigmoid(beta h): pair 1: 0.622459 + 1 - 0.731059 = 0.891400;
    pair 2: 0.437823 + 1 - 0.377541 = 1.060282; mean 0.975841."""
    assert loss_of("apo_down") == pytest.approx(0.975841, abs=1e-6)


def test_apo_gradients_at_the_reference() -> None:
    """At c = r = 0, sigmoid'(0) = 1/4. APO-zero: d/dc = -beta/4, d/dr = +beta/4 (chosen up, rejected down).
    APO-down: d/dc = beta/4 - beta/4 = 0 (its own pull down balanced by the margin's pull up), d/dr = +beta/4."""
    grads = {}
    for loss_type in ("apo_zero", "apo_down"):
        c, r = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
        LOSSES[loss_type](c, r, BETA, 0.0, 0.0).sum().backward()
        grads[loss_type] = (c.grad.item(), r.grad.item())
    assert grads["apo_zero"] == pytest.approx((-BETA / 4, BETA / 4))
    assert grads["apo_down"] == pytest.approx((0.0, BETA / 4))


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
        ("exo_pair", 0.1, math.log(0.5 / 0.9) / 2 + math.log(0.5 / 0.1) / 2),  # KL((1/2, 1/2) || (0.9, 0.1))
    ],
)
def test_dpo_symmetric_inputs(loss_type: str, eps: float, expected: float) -> None:
    """Chosen and rejected alike (h = 0): nothing to prefer; the loss is the value at h = 0, rewards 0."""
    logps = torch.tensor([-3.0, -7.5])
    loss, metrics = dpo_loss(logps, logps.clone(), logps - 1, logps - 1, BETA, loss_type, eps)
    assert loss.item() == pytest.approx(expected)
    assert metrics["rewards/margins"].item() == 0.0 and metrics["rewards/accuracies"].item() == 0.0


@pytest.mark.parametrize(
    ("loss_type", "limit"),
    [("sigmoid", math.log(2)), ("robust", math.log(2)), ("hinge", 1.0), ("nca_pair", 2 * math.log(2)),
     ("bco_pair", 2 * math.log(2)), ("apo_zero", 1.0), ("apo_down", 1.0)],
)  # fmt: skip
def test_dpo_beta_to_zero(loss_type: str, limit: float) -> None:
    """As beta -> 0 the policy is held at the reference: the loss no longer depends on the log-ratios."""
    eps = 0.1 if loss_type == "robust" else 0.0
    assert loss_of(loss_type, eps, beta=1e-7) == pytest.approx(limit, abs=1e-6)


# the types that read only h = c - r; the others anchor each log-ratio, so shifting both changes them
H_ONLY = ["sigmoid", "ipo", "hinge", "robust", "exo_pair"]


@pytest.mark.parametrize("loss_type", H_ONLY)
def test_dpo_depends_on_the_reference_only_through_its_difference(loss_type: str) -> None:
    """Shifting both reference log-probs of a pair by the same constant leaves h, hence the loss, unchanged."""
    eps = 0.1 if loss_type == "exo_pair" else 0.0
    shifted = dpo_loss(PI_W, PI_L, REF_W + 3.0, REF_L + 3.0, BETA, loss_type, eps)[0].item()
    assert shifted == pytest.approx(loss_of(loss_type, eps))


@pytest.mark.parametrize("loss_type", sorted(set(LOSSES) - set(H_ONLY)))
def test_anchored_types_see_each_log_ratio(loss_type: str) -> None:
    shifted = dpo_loss(PI_W, PI_L, REF_W + 3.0, REF_L + 3.0, BETA, loss_type)[0].item()
    assert shifted != pytest.approx(loss_of(loss_type))


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
    eps, h, zero = 0.2, torch.tensor([x / BETA]), torch.zeros(1)
    expected = LOSSES["robust"](h, zero, BETA, eps, 0.0) * (1 - eps) + LOSSES["robust"](-h, zero, BETA, eps, 0.0) * eps
    torch.testing.assert_close(expected, LOSSES["sigmoid"](h, zero, BETA, 0.0, 0.0))


def test_label_smoothing_only_with_a_noise_model() -> None:
    with pytest.raises(ValueError, match="label_smoothing applies to loss_type sigmoid, robust, exo_pair"):
        DPOConfig(loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"exo_pair needs label_smoothing > 0 .* set label_smoothing: 1\.0e-3"):
        DPOConfig(loss_type="exo_pair")
    assert DPOConfig(loss_type="robust", label_smoothing=0.1).label_smoothing == 0.1
    assert DPOConfig(loss_type="exo_pair", label_smoothing=1e-3).label_smoothing == 1e-3


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


# -- SimPO, ORPO, CPO: no reference; [B] summed log-probs and completion token counts --------------------------

# Chosen: sums [-4, -6] over [2, 3] tokens -> means a_w = [-2, -2]; rejected: [-9, -4] over [3, 1] -> a_l = [-3, -4].
SUM_W, SUM_L = torch.tensor([-4.0, -6.0]), torch.tensor([-9.0, -4.0])
N_W, N_L = torch.tensor([2, 3]), torch.tensor([3, 1])


def test_simpo_by_hand() -> None:
    """beta 2, gamma/beta 0.5 -> gamma = 1. Rewards beta a: chosen [-4, -4], rejected [-6, -8]; margins [2, 4].

    -log sigmoid(margin - gamma): softplus(-1) = 0.313262, softplus(-3) = 0.048587; mean 0.180925.
    Metrics: rewards chosen -4, rejected -7, margins 3, accuracy 1; logps (sums) chosen -5, rejected -6.5;
    nll = mean(2, 2) = 2. With nll_weight 0.5 the loss adds 0.5 x 2 = 1.
    """
    loss, metrics = simpo_loss(SUM_W, SUM_L, N_W, N_L, beta=2.0, gamma_beta_ratio=0.5)
    assert loss.item() == pytest.approx(0.180925, abs=1e-6)
    assert {k: v.item() for k, v in metrics.items()} == pytest.approx(
        {
            "loss": 0.180925,
            "rewards/chosen": -4.0,
            "rewards/rejected": -7.0,
            "rewards/margins": 3.0,
            "rewards/accuracies": 1.0,
            "logps/chosen": -5.0,
            "logps/rejected": -6.5,
            "nll": 2.0,
        },
        abs=1e-6,
    )
    with_sft = simpo_loss(SUM_W, SUM_L, N_W, N_L, beta=2.0, gamma_beta_ratio=0.5, nll_weight=0.5)[0]
    assert with_sft.item() == pytest.approx(1.180925, abs=1e-6)


def test_simpo_label_smoothing_by_hand() -> None:
    """eps = 0.1, x = margin - gamma = [1, 3]: 0.9 softplus(-x) + 0.1 softplus(x).

    x = 1: 0.9 x 0.313262 + 0.1 x 1.313262 = 0.413262; x = 3: 0.9 x 0.048587 + 0.1 x 3.048587 = 0.348587;
    mean 0.380925 (= 0.180925 + eps x mean(x) = 0.180925 + 0.2).
    """
    loss = simpo_loss(SUM_W, SUM_L, N_W, N_L, beta=2.0, gamma_beta_ratio=0.5, label_smoothing=0.1)[0]
    assert loss.item() == pytest.approx(0.380925, abs=1e-6)


def test_simpo_reward_is_length_normalised() -> None:
    """A completion twice as long with the same per-token log-probs (its sum and its count doubled) keeps its
    reward, so the loss and every reward metric are unchanged; only the summed logps double."""
    base = simpo_loss(SUM_W, SUM_L, N_W, N_L)[1]
    longer = simpo_loss(2 * SUM_W, SUM_L, 2 * N_W, N_L)[1]
    for key in ("loss", "rewards/chosen", "rewards/margins", "rewards/accuracies", "nll"):
        assert longer[key].item() == pytest.approx(base[key].item())
    assert longer["logps/chosen"].item() == pytest.approx(2 * base["logps/chosen"].item())


def test_simpo_margin_gamma() -> None:
    """Equal rewards lose softplus(gamma) (a margin still to win): gamma = 0.5 x 2 = 1 -> softplus(1) = 1.313262;
    with gamma 0 it is log 2."""
    same = torch.tensor([-6.0])
    assert simpo_loss(same, same, N_W[:1], N_W[:1])[0].item() == pytest.approx(1.313262, abs=1e-6)
    assert simpo_loss(same, same, N_W[:1], N_W[:1], gamma_beta_ratio=0.0)[0].item() == pytest.approx(math.log(2))


def test_orpo_by_hand() -> None:
    """log odds(a) = a - log(1 - e^a): log(1 - e^-2) = log(1 - 0.135335) = -0.145413 -> -1.854587;
    log(1 - e^-3) = log(1 - 0.049787) = -0.051069 -> -2.948931; log(1 - e^-4) = log(1 - 0.018316) = -0.018485
    -> -3.981515. Log odds ratios: -1.854587 + 2.948931 = 1.094344 and -1.854587 + 3.981515 = 2.126928
    (mean 1.610636). L_OR = softplus(-ratio) = [0.288751, 0.112617], mean 0.200684; NLL = mean(2, 2) = 2;
    loss = 2 + 0.1 x 0.200684 = 2.020068. Rewards 0.1 a: chosen -0.2, rejected mean(-0.3, -0.4) = -0.35.
    """
    loss, metrics = orpo_loss(SUM_W, SUM_L, N_W, N_L, beta=0.1)
    assert loss.item() == pytest.approx(2.020068, abs=1e-6)
    assert {k: v.item() for k, v in metrics.items()} == pytest.approx(
        {
            "loss": 2.020068,
            "rewards/chosen": -0.2,
            "rewards/rejected": -0.35,
            "rewards/margins": 0.15,
            "rewards/accuracies": 1.0,
            "logps/chosen": -5.0,
            "logps/rejected": -6.5,
            "nll": 2.0,
            "log_odds_ratio": 1.610636,
        },
        abs=1e-6,
    )


def test_orpo_log_odds_is_stable_at_both_ends() -> None:
    """Far from 0, log(1 - e^a) -> 0 and log odds -> a (odds ~ P): the odds term becomes -log sigmoid(a_w - a_l).
    Near 0 (every token almost certain) log odds = a - log(-expm1(a)) stays finite, as does its gradient; at 0
    exactly it is capped (MAX_MEAN_LOGP)."""
    a = torch.tensor([-40.0, -1e-3, -1e-9, 0.0], dtype=torch.float32, requires_grad=True)
    odds = log_odds(a)
    assert odds[0].item() == pytest.approx(-40.0)
    assert odds[1].item() == pytest.approx(-1e-3 - math.log(-math.expm1(-1e-3)), rel=1e-5)
    assert torch.isfinite(odds).all() and odds[3].item() == pytest.approx(-1e-6 - math.log(-math.expm1(-1e-6)))
    odds.sum().backward()
    assert torch.isfinite(a.grad).all()
    far = orpo_loss(torch.tensor([-60.0]), torch.tensor([-62.0]), torch.tensor([2]), torch.tensor([2]), beta=1.0)
    assert far[0].item() == pytest.approx(30.0 + F.softplus(torch.tensor(-1.0)).item(), abs=1e-6)


def test_orpo_odds_ratio_gradient_raises_chosen_and_lowers_rejected() -> None:
    """The NLL term -mean(a_w) puts -1 / (B n_w) on each chosen sum; what is left of the gradient is the odds term's:
    negative on the chosen (raise it), positive on the rejected (lower it)."""
    w, lo = SUM_W.clone().requires_grad_(), SUM_L.clone().requires_grad_()
    orpo_loss(w, lo, N_W, N_L, beta=0.1)[0].backward()
    odds_term_w = w.grad - (-1 / (2 * N_W))
    assert (odds_term_w < 0).all() and (lo.grad > 0).all()


def test_cpo_by_hand() -> None:
    """beta 0.5: beta (log pi_w - log pi_l) = 0.5 x [-4 + 9, -6 + 4] = [2.5, -1]; softplus(-2.5) = 0.078890,
    softplus(1) = 1.313262; mean 0.696076. NLL per token of the chosen: mean(4/2, 6/3) = 2; loss 2.696076.
    Rewards beta log pi: chosen mean(-2, -3) = -2.5, rejected mean(-4.5, -2) = -3.25."""
    loss, metrics = cpo_loss(SUM_W, SUM_L, N_W, beta=0.5, nll_weight=1.0)
    assert loss.item() == pytest.approx(2.696076, abs=1e-6)
    assert metrics["nll"].item() == pytest.approx(2.0)
    assert metrics["rewards/chosen"].item() == pytest.approx(-2.5)
    assert metrics["rewards/rejected"].item() == pytest.approx(-3.25)
    assert metrics["rewards/accuracies"].item() == 0.5


@pytest.mark.parametrize("nll_weight", [0.0, 1.0, 0.3])
def test_cpo_is_dpo_without_a_reference_plus_nll(nll_weight: float) -> None:
    """CPO = DPO's sigmoid loss with log ref = 0 + nll_weight x the chosen's mean token NLL, metrics alike."""
    w, lo = SUM_W.clone().requires_grad_(), SUM_L.clone().requires_grad_()
    loss, metrics = cpo_loss(w, lo, N_W, beta=0.5, nll_weight=nll_weight)
    w2, lo2 = SUM_W.clone().requires_grad_(), SUM_L.clone().requires_grad_()
    dpo, dpo_metrics = dpo_loss(w2, lo2, torch.zeros(2), torch.zeros(2), 0.5, "sigmoid")
    expected = dpo + nll_weight * (-(w2 / N_W).mean())
    torch.testing.assert_close(loss, expected)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(w.grad, w2.grad)
    torch.testing.assert_close(lo.grad, lo2.grad)
    assert {k: metrics[k] for k in dpo_metrics if k != "loss"} == {k: v for k, v in dpo_metrics.items() if k != "loss"}
