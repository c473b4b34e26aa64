"""The bandit study's config vocabulary: environments, optimisers and budgets, importable without torch.

The environments these specs describe are alignkit/bandits/linear.py and neural.py (`LinearBandit(spec,
seeds)`, or `objectives.build_env`); the optimisers are in alignkit/bandits/optim.py. Facts are from
/work/shared/papers/bandits.md.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from alignkit.config.base import Spec

Method = Literal["dpo", "rmb_po", "rmb_po_plus"]
METHODS: tuple[Method, ...] = ("dpo", "rmb_po", "rmb_po_plus")


class LinearBanditSpec(Spec):
    """The linear bandit of bandits.md; evaluation by Monte Carlo (as released) or exact quadrature (d_s = 1)."""

    kind: Literal["linear"] = "linear"
    state_dim: int = Field(1, ge=1, description="d_s (released: 1)")
    num_actions: int = Field(4, ge=2, description="K (released: 4)")
    theta_star: tuple[float, ...] | None = Field(None, description="true reward weights; default [1, 2] per coordinate")
    features: Literal["matched", "flip"] = Field("flip", description="policy features; released script: flip")
    evaluation: Literal["monte_carlo", "quadrature"] = Field(
        "monte_carlo", description="V(pi) on fresh uniform states (released) or Gauss-Legendre (d_s = 1 only)"
    )
    num_eval_states: int = Field(10_000, ge=1, description="Monte Carlo evaluation states per seed (released: 10,000)")
    quadrature_panels: int = Field(
        2000, ge=1, description="Gauss-Legendre panels on [0,1], 5 nodes each; ~1e-4 even for a deterministic policy"
    )

    @model_validator(mode="after")
    def _check(self) -> LinearBanditSpec:
        if self.theta_star is not None and len(self.theta_star) != 2 * self.state_dim:
            need, got = 2 * self.state_dim, len(self.theta_star)
            raise ValueError(f"theta_star needs 2 * state_dim = {need} entries (got {got})")
        if self.evaluation == "quadrature" and self.state_dim != 1:
            raise ValueError(f"evaluation 'quadrature' needs state_dim 1 (got {self.state_dim}); use 'monte_carlo'")
        return self


class NeuralBanditSpec(Spec):
    """The neural bandit of bandits.md."""

    kind: Literal["neural"] = "neural"
    state_dim: int = Field(50, ge=1, description="d_s (released: 50)")
    num_actions: int = Field(10, ge=2, description="K one-hot actions (released: 10)")
    hidden: int = Field(64, ge=1, description="tower and policy width (released: 64)")
    num_eval_states: int = Field(5000, ge=1, description="evaluation states fixed at construction (released: 5,000)")


EnvSpec = LinearBanditSpec | NeuralBanditSpec


class AdaGradNormSpec(Spec):
    """Full-batch gradient descent with step c / sqrt(sum of squared gradient norms so far) (bandits.md)."""

    name: Literal["adagrad_norm"] = "adagrad_norm"
    iterations: int = Field(1000, ge=0, description="full-batch steps (released: DPO 200, RMB-PO 1000)")
    c: float = Field(1.0, gt=0, description="step scale c (released: 1)")


class AdamSpec(Spec):
    """Adam, full batch (batch_size None: one step per epoch) or minibatches in a fixed order."""

    name: Literal["adam"] = "adam"
    lr: float = Field(1e-3, gt=0)
    epochs: int = Field(50, ge=0, description="passes over the items; full batch: the number of steps")
    batch_size: int | None = Field(64, ge=1, description="items per step, fixed order; None: full batch")
    weight_decay: float = Field(0.0, ge=0, description="L2 added to the gradient (torch.optim.Adam)")


class AdamWSpec(AdamSpec):
    """AdamW (decoupled weight decay, torch's default 0.01); the released neural optimiser."""

    name: Literal["adamw"] = "adamw"
    weight_decay: float = Field(0.01, ge=0, description="decoupled weight decay (torch.optim.AdamW)")


class LBFGSSpec(Spec):
    """Batched L-BFGS with a per-seed Armijo backtracking line search; the 'converged' budget."""

    name: Literal["lbfgs"] = "lbfgs"
    max_iterations: int = Field(3000, ge=0)
    history: int = Field(20, ge=1, description="curvature pairs kept per seed")
    tolerance_grad: float = Field(1e-9, gt=0, description="a seed stops when max |grad| falls below this")
    tolerance_change: float = Field(
        0.0, ge=0, description="a seed also stops when a step lowers its loss by less than this times max(1, |loss|)"
    )


OptimizerSpec = Annotated[AdaGradNormSpec | AdamSpec | AdamWSpec | LBFGSSpec, Field(discriminator="name")]
Optim = AdaGradNormSpec | AdamSpec | LBFGSSpec
# An optimisation budget: the released optimisers and iteration counts, L-BFGS to convergence, or one optimiser.
Budget = Literal["released", "converged"] | AdaGradNormSpec | AdamSpec | AdamWSpec | LBFGSSpec


def budget_label(budget: Budget) -> str:
    """'released', 'converged', or the optimiser and its size: 'adagrad_norm-20000', 'adam-5000'."""
    if isinstance(budget, str):
        return budget
    size = getattr(budget, "iterations", None) or getattr(budget, "epochs", None) or budget.max_iterations  # type: ignore[union-attr]
    return f"{budget.name}-{size}"
