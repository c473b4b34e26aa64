"""Bradley-Terry preference data for the bandits, batched over seeds (bandits.md, `utils/collect_data.py`)."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from alignkit.bandits.rng import generator


class Bandit(Protocol):
    seeds: tuple[int, ...]
    num_actions: int

    def sample_states(self, gen: torch.Generator, n: int) -> Tensor: ...
    def true_rewards(self, states: Tensor) -> Tensor: ...


class PreferenceData(NamedTuple):
    """D_pref = {(s, a+, a-)} per seed, plus the preference-free states that RMB-PO+ adds."""

    states: Tensor  # [S, n, d_s]
    a_plus: Tensor  # [S, n] long, the preferred action
    a_minus: Tensor  # [S, n] long
    extra_states: Tensor  # [S, m, d_s]


def preference_data(env: Bandit, n: int, m: int) -> PreferenceData:
    """n states; two distinct actions a1, a2 uniform; a2 preferred w.p. sigmoid(r(s,a2) - r(s,a1)).

    Each seed draws from its own streams; the extra states come from a separate stream, so D_pref does not
    change with m.
    """
    K = env.num_actions
    states, a1, a2, u = [], [], [], []
    for seed in env.seeds:
        gen = generator(seed, "preference_data")
        states.append(env.sample_states(gen, n))
        first = torch.randint(K, (n,), generator=gen)
        a1.append(first)
        a2.append((first + 1 + torch.randint(K - 1, (n,), generator=gen)) % K)  # uniform over the others
        u.append(torch.rand(n, generator=gen, dtype=torch.float64))
    states_t, a1_t, a2_t, u_t = (torch.stack(x) for x in (states, a1, a2, u))
    r = env.true_rewards(states_t)
    r1, r2 = r.gather(-1, a1_t[..., None])[..., 0], r.gather(-1, a2_t[..., None])[..., 0]
    second = u_t < torch.sigmoid((r2 - r1).double())
    extra = torch.stack([env.sample_states(generator(seed, "extra_states"), m) for seed in env.seeds])
    return PreferenceData(states_t, torch.where(second, a2_t, a1_t), torch.where(second, a1_t, a2_t), extra)
