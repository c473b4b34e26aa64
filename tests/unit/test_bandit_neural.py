"""The neural bandit's batched networks equal the nn.Module networks they stand for."""

import torch
from torch import nn

from alignkit.bandits.objectives import build_env
from alignkit.bandits.spec import NeuralBanditSpec


def test_true_reward_is_the_default_init_two_tower_under_the_seed():
    spec = NeuralBanditSpec(state_dim=6, num_actions=3, hidden=8, num_eval_states=20)
    env = build_env(spec, [11, 12])
    states = torch.rand(2, 5, 6) * 2 - 1
    r = env.true_rewards(states)
    for i, seed in enumerate([11, 12]):
        torch.manual_seed(seed)
        state_tower, action_tower, head = nn.Linear(6, 8), nn.Linear(3, 8), nn.Linear(16, 1)
        s = states[i][:, None, :].expand(-1, 3, -1)
        a = torch.eye(3).expand(5, -1, -1)
        ref = head(torch.cat([torch.tanh(state_tower(s)), torch.tanh(action_tower(a))], dim=-1))[..., 0]
        ref = ref + torch.sign(ref)
        assert torch.allclose(r[i], ref, atol=1e-6)
    assert (r.abs() >= 1).all()


def test_policy_and_reward_model_shapes_and_init_sharing():
    spec = NeuralBanditSpec(state_dim=4, num_actions=5, hidden=8, num_eval_states=30)
    env, again = build_env(spec, [0, 1]), build_env(spec, [1])
    p, q = env.init_policy(), again.init_policy()
    assert all(torch.equal(p[k][1], q[k][0]) for k in p)  # a seed's init does not depend on the batch
    assert not torch.equal(p["0.weight"][0], p["0.weight"][1])
    states = torch.rand(2, 7, 4)
    assert env.policy_logits(p, states).shape == (2, 7, 5)
    assert env.reward_model(env.init_reward_model(), states).shape == (2, 7, 5)
    scaled = env.policy_logits(env.scale_logits(p, 3.0), states)
    assert torch.allclose(scaled, 3 * env.policy_logits(p, states), atol=1e-5)
    out = env.evaluate(p, beta=0.01)
    assert torch.allclose(out["gap"], env.gap(p), atol=1e-6)
    assert (out["gap"] > 0).all() and (out["kl_ref"] >= 0).all()
