"""Batched optimisers: the AdaGrad-norm rule, and per-seed independence of every optimiser."""

import pytest
import torch

from alignkit.bandits.optim import optimize
from alignkit.bandits.spec import AdaGradNormSpec, AdamSpec, AdamWSpec, LBFGSSpec

# A different ill-conditioned quadratic-plus-quartic per seed: f_s(x) = 1/2 x'A_s x - b_s'x + 1/4 sum x^4.
GEN = torch.Generator().manual_seed(0)
M = torch.randn(3, 4, 4, generator=GEN, dtype=torch.float64)
A = M @ M.transpose(1, 2) + 0.1 * torch.eye(4, dtype=torch.float64)
B = torch.randn(3, 4, generator=GEN, dtype=torch.float64)
X0 = torch.randn(3, 4, generator=GEN, dtype=torch.float64)


def loss_for(rows):
    def loss_fn(params, idx):
        x = params["x"]
        quad = 0.5 * torch.einsum("si,sij,sj->s", x, A[rows], x) - (B[rows] * x).sum(1)
        return quad + 0.25 * x.pow(4).sum(1)

    return loss_fn


def test_adagrad_norm_first_steps():
    """Step t: x <- x - c g_t / sqrt(sum_{i<=t} |g_i|^2), per seed; the first step has length c."""
    c = 0.7
    params, _ = optimize({"x": X0}, loss_for([0, 1, 2]), AdaGradNormSpec(iterations=1, c=c), num_items=0)
    assert torch.allclose((params["x"] - X0).norm(dim=1), torch.full((3,), c, dtype=torch.float64))

    x = X0.clone().requires_grad_(True)
    g1 = torch.autograd.grad(loss_for([0, 1, 2])({"x": x}, None).sum(), x)[0]
    x1 = (X0 - c * g1 / g1.norm(dim=1, keepdim=True)).requires_grad_(True)
    g2 = torch.autograd.grad(loss_for([0, 1, 2])({"x": x1}, None).sum(), x1)[0]
    x2 = x1.detach() - c * g2 / (g1.pow(2).sum(1, keepdim=True) + g2.pow(2).sum(1, keepdim=True)).sqrt()
    params, _ = optimize({"x": X0}, loss_for([0, 1, 2]), AdaGradNormSpec(iterations=2, c=c), num_items=0)
    assert torch.allclose(params["x"], x2)


SPECS = [
    AdaGradNormSpec(iterations=50),
    AdamSpec(lr=0.05, epochs=30, batch_size=None),
    AdamWSpec(lr=0.05, epochs=30, batch_size=None),
    LBFGSSpec(max_iterations=200, tolerance_grad=1e-10),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_each_seed_runs_as_if_alone(spec):
    together, _ = optimize({"x": X0}, loss_for([0, 1, 2]), spec, num_items=0)
    for s in range(3):
        alone, _ = optimize({"x": X0[s : s + 1]}, loss_for([s]), spec, num_items=0)
        assert torch.allclose(together["x"][s], alone["x"][0], rtol=1e-12, atol=1e-12)


def test_lbfgs_reaches_each_seeds_minimum():
    params, info = optimize({"x": X0}, loss_for([0, 1, 2]), LBFGSSpec(tolerance_grad=1e-12), num_items=0)
    x = params["x"].requires_grad_(True)
    grad = torch.autograd.grad(loss_for([0, 1, 2])({"x": x}, None).sum(), x)[0]
    assert info["converged"].all()
    assert grad.abs().max() < 1e-11


def test_minibatches_are_taken_in_fixed_order():
    seen = []

    def loss_fn(params, idx):
        seen.append(idx.tolist())
        return params["x"].pow(2).sum(1)

    optimize({"x": X0}, loss_fn, AdamWSpec(epochs=2, batch_size=4), num_items=10)
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] * 2


def test_trajectory_logging():
    steps = []
    optimize({"x": X0}, loss_for([0, 1, 2]), AdaGradNormSpec(iterations=25), 0, 10, lambda t, p: steps.append(t))
    assert steps == [0, 10, 20, 25]
