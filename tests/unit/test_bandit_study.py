"""The study runner: seeds batched together give each seed's own results; the released linear study's cost."""

import time

import pytest
import torch

from alignkit.bandits.spec import METHODS, AdaGradNormSpec, LinearBanditSpec, NeuralBanditSpec
from alignkit.bandits.study import run_study
from alignkit.stats import mean_se

CASES = [
    (LinearBanditSpec(features="flip"), AdaGradNormSpec(iterations=300)),
    (LinearBanditSpec(features="matched", num_eval_states=2000), "converged"),
    (NeuralBanditSpec(state_dim=8, num_actions=4, hidden=16, num_eval_states=200), "released"),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("env, optim", CASES, ids=["linear-adagrad", "linear-converged", "neural-adamw"])
def test_seeds_together_equal_seeds_alone(env, optim, method):
    def fit(seeds: list[int]) -> dict[str, torch.Tensor]:
        return run_study(env, seeds, methods=[method], n=[20], m_ratio=[0.5], budgets=[optim], log_every=50)[0].out

    together = fit([0, 1, 2])
    for i, seed in enumerate([0, 1, 2]):
        alone = fit([seed])
        for key, value in together.items():
            if key in ("trajectory/step",) or (key == "steps" and optim == "converged"):
                continue  # a batch runs until its slowest seed; the others are frozen meanwhile
            assert torch.allclose(value[i].double(), alone[key][0].double(), rtol=1e-9, atol=1e-6), key


def test_released_linear_study_timing_and_results():
    """Prints (does not assert) the cost of 3 methods x 10 seeds at the released budgets, flip, n=20, m=10."""
    start = time.perf_counter()
    res = {fit.method: fit.out for fit in run_study(LinearBanditSpec(features="flip"), range(2021, 2031))}
    elapsed = time.perf_counter() - start
    print(f"\nlinear study, flip, 3 methods x 10 seeds, released budgets: {elapsed:.2f} s")
    for method, out in res.items():
        print(f"  {method:12s} gap {mean_se(out['gap'])[0]:.4f} ± {mean_se(out['gap'])[1]:.4f}")
        assert out["trajectory/gap"].shape[0] == 10
        assert (out["gap"] >= out["best_in_class_gap"] - 0.02).all()  # Monte Carlo noise only
