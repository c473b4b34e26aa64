"""Bradley-Terry preference data: label rates, distinct actions, and stable streams."""

import torch

from alignkit.bandits.data import preference_data
from alignkit.bandits.objectives import build_env
from alignkit.bandits.spec import LinearBanditSpec


def test_preferred_rate_matches_mean_bradley_terry_probability():
    """P(higher-reward action preferred) = sigmoid(|r(s,a1) - r(s,a2)|); compare rates over 40,000 pairs."""
    env = build_env(LinearBanditSpec(features="matched"), [0, 1])
    data = preference_data(env, n=20_000, m=0)
    r = env.true_rewards(data.states)
    r_plus = r.gather(-1, data.a_plus[..., None])[..., 0]
    r_minus = r.gather(-1, data.a_minus[..., None])[..., 0]
    empirical = (r_plus > r_minus).double().mean()
    expected = torch.sigmoid((r_plus - r_minus).abs()).mean()
    se = (expected * (1 - expected) / r_plus.numel()).sqrt()
    print(f"preferred rate {empirical:.4f} vs mean sigmoid {expected:.4f} (s.e. {se:.4f})")
    assert (empirical - expected).abs() < 4 * se
    assert (data.a_plus != data.a_minus).all()
    counts = torch.bincount(torch.cat([data.a_plus, data.a_minus]).flatten(), minlength=4).double()
    assert torch.allclose(counts / counts.sum(), torch.full((4,), 0.25, dtype=torch.float64), atol=0.01)


def test_shapes_and_streams():
    env = build_env(LinearBanditSpec(state_dim=2), [3, 4, 5])
    small, large = preference_data(env, n=7, m=2), preference_data(env, n=7, m=30)
    assert small.states.shape == (3, 7, 2) and small.a_plus.shape == (3, 7)
    assert small.extra_states.shape == (3, 2, 2) and large.extra_states.shape == (3, 30, 2)
    assert torch.equal(small.states, large.states) and torch.equal(small.a_plus, large.a_plus)  # m leaves D_pref
    assert torch.equal(small.extra_states, large.extra_states[:, :2])
    alone = preference_data(build_env(LinearBanditSpec(state_dim=2), [4]), n=7, m=2)
    assert torch.equal(alone.states[0], small.states[1]) and torch.equal(alone.a_minus[0], small.a_minus[1])
