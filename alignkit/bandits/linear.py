"""The linear bandit of Li, Xu, Yu (2023), batched over seeds (float64): features, true reward, evaluation.

Facts from /work/shared/papers/bandits.md ("Linear bandit"): s ~ U[0,1]^d_s, K actions, reward features per
coordinate [(a+1) cos(pi s_i), sin(pi s_i)/(a+1)], theta* = [1, 2] per coordinate, softmax policy on
phi_pi . theta with theta ~ U(0,1), uniform reference; policy features equal to phi_r ("matched") or with
cos and sin swapped ("flip", the released script's setting).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from alignkit.bandits.losses import evaluate_policy
from alignkit.bandits.optim import Params, lbfgs, torch_threads
from alignkit.bandits.rng import generator, per_seed
from alignkit.bandits.spec import LBFGSSpec, LinearBanditSpec

DTYPE = torch.float64


def true_weights(spec: LinearBanditSpec) -> Tensor:
    """The true reward weights: the spec's, or [1, 2] per state coordinate (bandits.md)."""
    return torch.tensor(spec.theta_star or (1.0, 2.0) * spec.state_dim, dtype=DTYPE)


def features(states: Tensor, num_actions: int, flip: bool = False) -> Tensor:
    """phi(s, a) for states [..., d_s] -> [..., K, 2 d_s]: entry 2i is (a+1) cos(pi s_i), 2i+1 is sin(pi s_i)/(a+1).

    flip swaps cos and sin: [(a+1) sin(pi s_i), cos(pi s_i)/(a+1)] (the released `--flip_feature`).
    """
    a1 = torch.arange(1, num_actions + 1, dtype=states.dtype)[:, None]  # a + 1, as a column over actions
    angle = math.pi * states[..., None, :]
    first, second = (angle.sin(), angle.cos()) if flip else (angle.cos(), angle.sin())
    return torch.stack([a1 * first, second / a1], dim=-1).flatten(-2)


def gauss_legendre(num_panels: int, num_nodes: int = 5) -> tuple[Tensor, Tensor]:
    """Composite Gauss-Legendre nodes and weights on [0, 1] (Golub-Welsch), float64.

    Panels, not one high-order rule: max_a r(s, a) has kinks and a sharp softmax is nearly one.
    """
    k = torch.arange(1, num_nodes, dtype=DTYPE)
    off = k / torch.sqrt(4 * k * k - 1)
    x, vecs = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))
    w = 2 * vecs[0] ** 2
    h = 1.0 / num_panels
    left = torch.arange(num_panels, dtype=DTYPE)[:, None] * h
    return (left + h * (x + 1) / 2).reshape(-1), (h / 2 * w).repeat(num_panels)


class LinearBandit:
    """The linear bandit for a batch of seeds: each seed has its own evaluation states (Monte Carlo)."""

    def __init__(self, spec: LinearBanditSpec, seeds: Sequence[int]) -> None:
        self.spec, self.seeds = spec, tuple(seeds)
        self.num_actions, self.state_dim = spec.num_actions, spec.state_dim
        self.theta_star = true_weights(spec)
        self.log_ref = torch.full((self.num_actions,), -math.log(self.num_actions), dtype=DTYPE)  # uniform
        S = len(self.seeds)
        if spec.evaluation == "quadrature":
            nodes, weights = gauss_legendre(spec.quadrature_panels)
            eval_states = nodes[None, :, None].expand(S, -1, 1)
            self.eval_weights: Tensor | None = weights.expand(S, -1)
        else:
            eval_states = per_seed(self.seeds, "eval", lambda g: self.sample_states(g, spec.num_eval_states))
            self.eval_weights = None
        self.eval_features = self.policy_features(eval_states)
        self.eval_rewards = self.true_rewards(eval_states)
        self.optimal_value = self._mean(self.eval_rewards.amax(-1))
        # Actions-before-states copies for `gap`: torch's CPU softmax over a last dim of size K = 4 is ~10x
        # slower than over a middle dim, and curves call `gap` hundreds of times.
        self._eval_phi_t = self.eval_features.permute(0, 2, 3, 1).contiguous()  # [S, K, D, N]
        self._eval_r_t = self.eval_rewards.transpose(1, 2).contiguous()  # [S, K, N]

    def sample_states(self, gen: torch.Generator, n: int) -> Tensor:
        return torch.rand(n, self.state_dim, generator=gen, dtype=DTYPE)

    def reward_features(self, states: Tensor) -> Tensor:
        return features(states, self.num_actions)

    def policy_features(self, states: Tensor) -> Tensor:
        """What `policy_logits` consumes: phi_pi(s, .) [S, N, K, D]."""
        return features(states, self.num_actions, flip=self.spec.features == "flip")

    def true_rewards(self, states: Tensor) -> Tensor:
        """r(s, a) = phi_r(s, a) . theta*, [S, N, K]."""
        return self.reward_features(states) @ self.theta_star

    def init_policy(self) -> Params:
        """theta ~ U(0, 1)^D per seed (bandits.md)."""
        D = 2 * self.state_dim
        return {"theta": per_seed(self.seeds, "policy_init", lambda g: torch.rand(D, generator=g, dtype=DTYPE))}

    @staticmethod
    def policy_logits(params: Params, policy_features: Tensor) -> Tensor:
        return torch.einsum("snkd,sd->snk", policy_features, params["theta"])

    @staticmethod
    def scale_logits(params: Params, factor: float) -> Params:
        return {"theta": params["theta"] * factor}

    def _mean(self, x: Tensor) -> Tensor:
        return x.mean(-1) if self.eval_weights is None else (x * self.eval_weights).sum(-1)

    def evaluate(self, params: Params, beta: float) -> dict[str, Tensor]:
        logits = (params["theta"][:, None, None, :] @ self._eval_phi_t)[:, :, 0]  # [S, K, N], see evaluate_policy
        return evaluate_policy(logits, self._eval_r_t, self.log_ref, beta, self.eval_weights, action_dim=1)

    def gap(self, params: Params) -> Tensor:
        """V(pi*) - V(pi_theta) per seed: `evaluate(...)["gap"]`, several times cheaper, for curves."""
        logits = (params["theta"][:, None, None, :] @ self._eval_phi_t)[:, :, 0]  # [S, K, N]
        return self.optimal_value - self._mean((torch.softmax(logits, dim=1) * self._eval_r_t).sum(1))

    def best_in_class_gap(self) -> Tensor:
        """V(pi*) - max_theta V(pi_theta) per seed, on the seed's own evaluation states ([S])."""
        theta, _ = best_in_class(self.spec)
        params = {"theta": theta.expand(len(self.seeds), -1)}
        return self.evaluate(params, beta=0.0)["gap"]


def _tie_aware_rule(
    theta: Tensor, phi_fn: Callable[[Tensor], Tensor], num_panels: int = 200, grid: int = 4001
) -> tuple[Tensor, Tensor]:
    """Per-theta Gauss-Legendre nodes/weights on [0, 1] (d_s = 1) whose panel edges include the points where
    the policy's top two logits tie, so a sharp or deterministic softmax integrates to ~1e-10, not ~h.

    theta [B, D] -> nodes, weights [B, Q]. The ties are found as argmax changes on a grid, then bisected.
    """
    s = torch.linspace(0, 1, grid, dtype=DTYPE)
    top = torch.einsum("gkd,bd->bgk", phi_fn(s[:, None]), theta).argmax(-1)
    change = top[:, 1:] != top[:, :-1]
    T = max(int(change.sum(1).max()), 1)
    valid, cell = change.to(DTYPE).topk(T, dim=1)
    valid = valid > 0
    lo, hi = s[cell], s[cell + 1]
    a, b = top.gather(1, cell), top.gather(1, cell + 1)
    for _ in range(60):
        mid = (lo + hi) / 2
        logits = torch.einsum("btkd,bd->btk", phi_fn(mid[..., None]), theta)
        left = logits.gather(-1, a[..., None]) > logits.gather(-1, b[..., None])
        lo, hi = torch.where(left[..., 0], mid, lo), torch.where(left[..., 0], hi, mid)
    ties = torch.where(valid, (lo + hi) / 2, 0.0)
    uniform = torch.linspace(0, 1, num_panels + 1, dtype=DTYPE).expand(theta.shape[0], -1)
    edges = torch.cat([uniform, ties], dim=1).sort(dim=1).values
    x, w = gauss_legendre(1)
    x, w = 2 * x - 1, 2 * w  # the 5-node rule on [-1, 1]
    half = (edges[:, 1:] - edges[:, :-1])[..., None] / 2
    nodes = edges[:, :-1, None] + half * (x + 1)
    return nodes.flatten(1), (half * w).flatten(1)


@functools.lru_cache(maxsize=16)
@torch_threads(1)
def best_in_class(spec: LinearBanditSpec) -> tuple[Tensor, float]:
    """argmax_theta V(pi_theta) and its value: the best policy the class can express (no KL).

    V is not concave in theta, and its supremum may sit at infinity (a deterministic policy; it does for
    the flip case). So, for d_s = 1: batched L-BFGS from 16 starts at scales 0.3 to 100, plus the
    deterministic policies theta = 1e8 (cos t, sin t) on a grid of 720 directions refined around the best;
    every candidate is valued by the tie-aware quadrature. For d_s > 1: the L-BFGS starts only, on 20,000
    fixed Monte Carlo states (an approximation). bandits.md: the flip case leaves a gap of about 0.08.
    """
    K, d, D = spec.num_actions, spec.state_dim, 2 * spec.state_dim
    flip = spec.features == "flip"
    theta_star = true_weights(spec)

    def phi_pi(states: Tensor) -> Tensor:
        return features(states, K, flip=flip)

    def value_on(theta: Tensor, states: Tensor, weights: Tensor) -> Tensor:
        """V(theta) for theta [B, D] on states [B, Q, d] with weights [B, Q]."""
        logits = torch.einsum("bqkd,bd->bqk", phi_pi(states), theta)
        r = features(states, K) @ theta_star
        return ((torch.softmax(logits, dim=-1) * r).sum(-1) * weights).sum(-1)

    if d == 1:
        nodes, weights = gauss_legendre(200)
        states = nodes[:, None]
    else:
        states = torch.rand(20_000, d, generator=generator(0, "best_in_class"), dtype=DTYPE)
        weights = torch.full((20_000,), 1 / 20_000, dtype=DTYPE)
    phi, r = phi_pi(states), features(states, K) @ theta_star

    def objective(params: Params, _: Tensor | None) -> Tensor:
        pi = torch.softmax(torch.einsum("qkd,bd->bqk", phi, params["theta"]), dim=-1)
        return -(pi * r).sum(-1) @ weights

    gen = generator(0, "best_in_class_starts")
    directions = torch.nn.functional.normalize(torch.randn(4, D, generator=gen, dtype=DTYPE), dim=1)
    scales = torch.tensor([0.3, 3.0, 30.0, 100.0], dtype=DTYPE)
    starts = (scales[:, None, None] * directions[None]).reshape(-1, D)
    found = lbfgs({"theta": starts}, objective, LBFGSSpec(max_iterations=100))[0]["theta"]
    if d > 1:
        values = -objective({"theta": found}, None)
        best = int(values.argmax())
        return found[best], float(values[best])

    def exact_value(theta: Tensor) -> Tensor:
        nodes, weights = _tie_aware_rule(theta, phi_pi)
        return value_on(theta, nodes[..., None], weights)

    def deterministic(angle: Tensor) -> Tensor:
        return 1e8 * torch.stack([angle.cos(), angle.sin()], dim=1)

    step = 2 * math.pi / 720
    angle = torch.arange(720, dtype=DTYPE) * step
    for _ in range(4):  # zoom in around the best direction
        values = exact_value(deterministic(angle))
        center = angle[values.argmax()]
        angle, step = center + step * torch.linspace(-1, 1, 41, dtype=DTYPE), step / 20
    thetas = torch.cat([found, deterministic(angle)])
    values = exact_value(thetas)
    best = int(values.argmax())
    return thetas[best], float(values[best])
