"""The neural bandit of Li, Xu, Yu (2023), batched over seeds: true reward, reward model and policy networks.

Facts from /work/shared/papers/bandits.md ("Neural bandit"): s ~ U[-1,1]^50, 10 one-hot actions; true reward
two tanh towers of width 64 concatenated into Linear(128, 1), then r <- r + sign(r), PyTorch's default init
under the seed; reward model the same shape with ReLU and two layers per tower; policy MLP 50-64-64-10 ReLU.

Networks are dicts of stacked weights, `{name.weight: [S, out, in], name.bias: [S, out]}`, applied with one
batched matmul per layer; each seed's slice is initialised exactly as `nn.Linear` would be under its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from alignkit.bandits.losses import evaluate_policy
from alignkit.bandits.optim import Params
from alignkit.bandits.rng import global_seed, per_seed, stream_seed
from alignkit.bandits.spec import NeuralBanditSpec


def init_linears(seeds: Sequence[int], layers: dict[str, tuple[int, int]], stream: str | None) -> Params:
    """Stacked `nn.Linear(in, out)` default inits, built in dict order after `torch.manual_seed` per seed.

    stream None seeds with the seed itself ("PyTorch default init under the seed", bandits.md).
    """
    per = []
    for seed in seeds:
        with global_seed(seed if stream is None else stream_seed(seed, stream)):
            per.append({name: nn.Linear(i, o) for name, (i, o) in layers.items()})
    out = {}
    for name in layers:
        out[f"{name}.weight"] = torch.stack([m[name].weight.detach() for m in per])
        out[f"{name}.bias"] = torch.stack([m[name].bias.detach() for m in per])
    return out


def linear(params: Params, name: str, x: Tensor) -> Tensor:
    """x [S, ..., in] -> [S, ..., out] with each seed's own weights."""
    w, b = params[f"{name}.weight"], params[f"{name}.bias"]
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    return torch.baddbmm(b[:, None, :], flat, w.transpose(1, 2)).reshape(*x.shape[:-1], w.shape[1])


def two_tower(params: Params, states: Tensor, num_actions: int, depth: int, act) -> Tensor:
    """r(s, a) for all one-hot actions: head(concat(state tower(s), action tower(e_a))), [S, N, K].

    The head is linear, so head(concat(u, v)) = W_u u + W_v v + b and the towers run once per state and
    once per action rather than once per (state, action) pair.
    """
    h_s = states
    h_a = torch.eye(num_actions, dtype=states.dtype).expand(states.shape[0], -1, -1)
    for i in range(depth):
        h_s, h_a = act(linear(params, f"state.{i}", h_s)), act(linear(params, f"action.{i}", h_a))
    w, b = params["head.weight"][:, 0, :], params["head.bias"][:, 0]  # [S, 2H], [S]
    H = h_s.shape[-1]
    from_state = torch.einsum("snh,sh->sn", h_s, w[:, :H])
    from_action = torch.einsum("skh,sh->sk", h_a, w[:, H:])
    return from_state[:, :, None] + from_action[:, None, :] + b[:, None, None]


def mlp(params: Params, x: Tensor, depth: int) -> Tensor:
    for i in range(depth - 1):
        x = torch.relu(linear(params, f"{i}", x))
    return linear(params, f"{depth - 1}", x)


class NeuralBandit:
    """The neural bandit for a batch of seeds: each seed has its own true reward and evaluation states."""

    def __init__(self, spec: NeuralBanditSpec, seeds: Sequence[int]) -> None:
        self.spec, self.seeds = spec, tuple(seeds)
        self.num_actions, self.state_dim = spec.num_actions, spec.state_dim
        d, K, H = spec.state_dim, spec.num_actions, spec.hidden
        self.log_ref = torch.full((K,), -math.log(K))  # uniform reference
        self.true_params = init_linears(self.seeds, {"state.0": (d, H), "action.0": (K, H), "head": (2 * H, 1)}, None)
        self.eval_states = per_seed(self.seeds, "eval", lambda g: self.sample_states(g, spec.num_eval_states))
        self.eval_rewards = self.true_rewards(self.eval_states)
        self.optimal_value = self.eval_rewards.amax(-1).mean(-1)

    def sample_states(self, gen: torch.Generator, n: int) -> Tensor:
        return 2 * torch.rand(n, self.state_dim, generator=gen) - 1

    def true_rewards(self, states: Tensor) -> Tensor:
        """Two tanh towers, then r + sign(r), so |r| >= 1 (bandits.md), [S, N, K]."""
        r = two_tower(self.true_params, states, self.num_actions, depth=1, act=torch.tanh)
        return r + torch.sign(r)

    def init_reward_model(self) -> Params:
        d, K, H = self.state_dim, self.num_actions, self.spec.hidden
        layers = {"state.0": (d, H), "state.1": (H, H), "action.0": (K, H), "action.1": (H, H), "head": (2 * H, 1)}
        return init_linears(self.seeds, layers, "reward_model")

    def reward_model(self, params: Params, states: Tensor) -> Tensor:
        """r_hat(s, a): two ReLU towers of two layers each, [S, N, K]."""
        return two_tower(params, states, self.num_actions, depth=2, act=torch.relu)

    def init_policy(self) -> Params:
        """Policy MLP d_s-64-64-K; one init per seed, shared by DPO, RMB-PO and RMB-PO+ (bandits.md)."""
        d, K, H = self.state_dim, self.num_actions, self.spec.hidden
        return init_linears(self.seeds, {"0": (d, H), "1": (H, H), "2": (H, K)}, "policy_init")

    def policy_features(self, states: Tensor) -> Tensor:
        """What `policy_logits` consumes: the states themselves."""
        return states

    @staticmethod
    def policy_logits(params: Params, states: Tensor) -> Tensor:
        return mlp(params, states, depth=3)

    @staticmethod
    def scale_logits(params: Params, factor: float) -> Params:
        """The same network with its logits multiplied by factor (the last layer scaled)."""
        return {k: v * factor if k.startswith("2.") else v for k, v in params.items()}

    def evaluate(self, params: Params, beta: float) -> dict[str, Tensor]:
        logits = self.policy_logits(params, self.eval_states)
        return evaluate_policy(logits, self.eval_rewards, self.log_ref, beta)

    def gap(self, params: Params) -> Tensor:
        """V(pi*) - V(pi) per seed: `evaluate(...)["gap"]` at a lower cost, for curves."""
        pi = torch.softmax(self.policy_logits(params, self.eval_states), dim=-1)
        return self.optimal_value - (pi * self.eval_rewards).sum(-1).mean(-1)
