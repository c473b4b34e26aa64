"""The study runner: seeds batched together give each seed's own results; the released linear study's cost."""

import time

import pytest
import torch

from alignkit.bandits.linear import LinearBanditSpec
from alignkit.bandits.neural import NeuralBanditSpec
from alignkit.bandits.optim import AdaGradNormSpec
from alignkit.bandits.study import METHODS, mean_se, run_setting, run_study

CASES = [
    (LinearBanditSpec(features="flip"), AdaGradNormSpec(iterations=300)),
    (LinearBanditSpec(features="matched", num_eval_states=2000), "converged"),
    (NeuralBanditSpec(state_dim=8, num_actions=4, hidden=16, num_eval_states=200), "released"),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("env, optim", CASES, ids=["linear-adagrad", "linear-converged", "neural-adamw"])
def test_seeds_together_equal_seeds_alone(env, optim, method):
    together = run_setting(env, method, n=20, m=10, seeds=[0, 1, 2], optim=optim, log_every=50)
    for i, seed in enumerate([0, 1, 2]):
        alone = run_setting(env, method, n=20, m=10, seeds=[seed], optim=optim, log_every=50)
        for key, value in together.items():
            if key in ("trajectory/step",) or (key == "steps" and optim == "converged"):
                continue  # a batch runs until its slowest seed; the others are frozen meanwhile
            assert torch.allclose(value[i].double(), alone[key][0].double(), rtol=1e-9, atol=1e-6), key


def test_released_linear_study_timing_and_results():
    """Prints (does not assert) the cost of 3 methods x 10 seeds at the released budgets, flip, n=20, m=10."""
    start = time.perf_counter()
    res = run_study(LinearBanditSpec(features="flip"), n=20, m=10, seeds=range(2021, 2031))
    elapsed = time.perf_counter() - start
    print(f"\nlinear study, flip, 3 methods x 10 seeds, released budgets: {elapsed:.2f} s")
    for method, out in res.items():
        print(f"  {method:12s} gap {mean_se(out['gap'])[0]:.4f} ± {mean_se(out['gap'])[1]:.4f}")
        assert out["trajectory/gap"].shape[0] == 10
        assert (out["gap"] >= out["best_in_class_gap"] - 0.02).all()  # Monte Carlo noise only
