"""Optimisers for parameters batched over seeds: AdaGrad-norm, Adam/AdamW (minibatch) and a batched L-BFGS.

Parameters are a dict of tensors whose first dim is the seed. A loss function maps (params, item index or
None for the full batch) to one loss per seed, shape [S]; the optimisers differentiate its sum, so each
seed gets exactly its own gradient. Every step size, history and stopping rule below is per seed, so a
seed's run does not depend on which other seeds share the batch (tests/unit/test_bandit_study.py).

Why not torch.optim.LBFGS on the stacked parameters: its gradient is separable, but its two-loop recursion
takes inner products over the whole stacked vector and its line search picks one step for all seeds, so
the seeds' iterates get coupled (the fixed point is the same, the path and the stopping point are not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from alignkit.bandits.spec import AdaGradNormSpec, AdamSpec, LBFGSSpec

Params = dict[str, Tensor]
LossFn = Callable[[Params, Tensor | None], Tensor]
LogFn = Callable[[int, Params], None]


def _per_seed_sq_norm(tensors: list[Tensor]) -> Tensor:
    return sum(t.pow(2).flatten(1).sum(1) for t in tensors)


def _leaves(params: Params) -> Params:
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def _log(on_log: LogFn | None, log_every: int, step: int, params: Params, last: bool) -> None:
    if on_log is not None and log_every > 0 and (step % log_every == 0 or last):
        with torch.no_grad():
            on_log(step, {k: v.detach() for k, v in params.items()})


class AdaGradNorm(torch.optim.Optimizer):
    """theta <- theta - c g_t / sqrt(sum_{i<=t} ||g_i||^2), the norm taken per seed over all parameters.

    Every parameter's first dimension is the seed; the first step of each seed has length c. Its state
    (the running sum of squared norms) is a tensor in `state`, so it is saved in checkpoints.
    """

    def __init__(self, params: Iterable[Tensor], c: float = 1.0) -> None:
        super().__init__(params, {"c": c})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None if closure is None else closure()
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return loss
        state = self.state[params[0]]
        sq = _per_seed_sq_norm([p.grad for p in params])
        state["sum_sq"] = sq if "sum_sq" not in state else state["sum_sq"] + sq
        sum_sq = state["sum_sq"]
        eta = torch.where(sum_sq > 0, self.param_groups[0]["c"] / sum_sq.sqrt(), torch.zeros_like(sum_sq))
        for p in params:
            p -= eta.view(-1, *[1] * (p.dim() - 1)) * p.grad
        return loss


def adagrad_norm(
    params: Params, loss_fn: LossFn, spec: AdaGradNormSpec, log_every: int = 0, on_log: LogFn | None = None
) -> tuple[Params, dict[str, Tensor]]:
    """Full-batch AdaGrad-norm for `spec.iterations` steps (see AdaGradNorm)."""
    p = _leaves(params)
    opt = AdaGradNorm(list(p.values()), c=spec.c)
    _log(on_log, log_every, 0, p, spec.iterations == 0)
    for t in range(1, spec.iterations + 1):
        opt.zero_grad(set_to_none=True)
        loss_fn(p, None).sum().backward()
        opt.step()
        _log(on_log, log_every, t, p, t == spec.iterations)
    return {k: v.detach() for k, v in p.items()}, {"steps": torch.tensor(spec.iterations)}


def adam(
    params: Params,
    loss_fn: LossFn,
    spec: AdamSpec,
    num_items: int,
    log_every: int = 0,
    on_log: LogFn | None = None,
) -> tuple[Params, dict[str, Tensor]]:
    """torch Adam/AdamW on the stacked tensors: their updates are elementwise, hence per seed already."""
    p = _leaves(params)
    cls = torch.optim.AdamW if spec.name == "adamw" else torch.optim.Adam
    opt = cls(list(p.values()), lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.batch_size is None:
        batches = [None]
    else:
        batches = [torch.arange(i, min(i + spec.batch_size, num_items)) for i in range(0, num_items, spec.batch_size)]
    total = spec.epochs * len(batches)
    step = 0
    _log(on_log, log_every, 0, p, total == 0)
    for _ in range(spec.epochs):
        for idx in batches:
            opt.zero_grad(set_to_none=True)
            loss_fn(p, idx).sum().backward()
            opt.step()
            step += 1
            _log(on_log, log_every, step, p, step == total)
    return {k: v.detach() for k, v in p.items()}, {"steps": torch.tensor(total)}


def lbfgs(
    params: Params, loss_fn: LossFn, spec: LBFGSSpec, log_every: int = 0, on_log: LogFn | None = None
) -> tuple[Params, dict[str, Tensor]]:
    """L-BFGS per seed, batched: per-seed two-loop recursion, curvature pairs and Armijo backtracking.

    A seed stops when max|grad| < tolerance_grad (converged), when a step gains less than tolerance_change
    (relative), or when its loss stops decreasing at machine precision (no step passes the line search,
    or 10 steps in a row pass only within rounding). Returns info with per-seed `converged` (the gradient
    test) and `grad_max`.
    """
    keys = list(params)
    shapes = [params[k].shape for k in keys]
    S = shapes[0][0]
    x = torch.cat([params[k].detach().reshape(S, -1) for k in keys], dim=1)

    def unflatten(flat: Tensor) -> Params:
        out, i = {}, 0
        for k, shape in zip(keys, shapes, strict=True):
            size = shape[1:].numel()
            out[k] = flat[:, i : i + size].reshape(shape)
            i += size
        return out

    def f(flat: Tensor) -> tuple[Tensor, Tensor]:
        flat = flat.detach().requires_grad_(True)
        loss = loss_fn(unflatten(flat), None)
        (grad,) = torch.autograd.grad(loss.sum(), flat)
        return loss.detach(), grad

    fx, g = f(x)
    history: list[tuple[Tensor, Tensor, Tensor]] = []
    gamma = torch.ones(S, dtype=x.dtype)
    active = g.abs().amax(1) > spec.tolerance_grad
    flat_steps = torch.zeros(S, dtype=torch.long)
    it = 0
    _log(on_log, log_every, 0, unflatten(x), spec.max_iterations == 0)
    for it in range(1, spec.max_iterations + 1):
        if not active.any():
            break
        q, alphas = g.clone(), []
        for s, y, rho in reversed(history):
            a = rho * (s * q).sum(1)
            q -= a[:, None] * y
            alphas.append(a)
        r = gamma[:, None] * q
        for (s, y, rho), a in zip(history, reversed(alphas), strict=True):
            b = rho * (y * r).sum(1)
            r += s * (a - b)[:, None]
        d = -r
        gd = (g * d).sum(1)
        not_descent = ~(gd < 0)
        d[not_descent] = -g[not_descent]
        d = d * active[:, None]
        gd = (g * d).sum(1)
        # First step of a seed with no history: unit length in the l1 sense, as torch.optim.LBFGS does.
        t = torch.ones(S, dtype=x.dtype) if history else (1.0 / g.abs().sum(1).clamp_min(1e-300)).clamp(max=1.0)
        # Armijo, with slack for rounding: near a minimum the decrease drops below the loss's resolution.
        slack = 8 * torch.finfo(x.dtype).eps * fx.abs()
        accepted, strict = ~active, torch.zeros(S, dtype=torch.bool)
        x_new, f_new, g_new = x.clone(), fx.clone(), g.clone()
        for _ in range(60):
            f_try, g_try = f(x + t[:, None] * d)
            armijo = f_try <= fx + 1e-4 * t * gd
            ok = ~accepted & torch.isfinite(f_try) & (armijo | (f_try <= fx + slack))
            x_new[ok] = (x + t[:, None] * d)[ok]
            f_new[ok], g_new[ok] = f_try[ok], g_try[ok]
            strict |= ok & armijo
            accepted |= ok
            if accepted.all():
                break
            t = torch.where(accepted, t, 0.5 * t)
        flat_steps = torch.where(accepted & ~strict, flat_steps + 1, 0)
        stalled = active & (~accepted | (flat_steps >= 10))  # no resolvable decrease left
        s_k, y_k = x_new - x, g_new - g
        sy = (s_k * y_k).sum(1)
        valid = sy > 1e-12 * s_k.norm(dim=1) * y_k.norm(dim=1)
        rho = torch.where(valid, 1.0 / torch.where(valid, sy, 1.0), torch.zeros_like(sy))
        gamma = torch.where(valid, sy / (y_k * y_k).sum(1).clamp_min(1e-300), gamma)
        history = [*history, (s_k, y_k, rho)][-spec.history :]
        no_gain = strict & ((fx - f_new) < spec.tolerance_change * fx.abs().clamp_min(1.0))
        x, fx, g = x_new, f_new, g_new
        active = active & ~stalled & ~no_gain & (g.abs().amax(1) > spec.tolerance_grad)
        _log(on_log, log_every, it, unflatten(x), it == spec.max_iterations or not active.any())
    grad_max = g.abs().amax(1)
    out = {k: v.clone() for k, v in unflatten(x).items()}
    return out, {"steps": torch.tensor(it), "converged": grad_max <= spec.tolerance_grad, "grad_max": grad_max}


def optimize(
    params: Params,
    loss_fn: LossFn,
    spec: AdaGradNormSpec | AdamSpec | LBFGSSpec,
    num_items: int,
    log_every: int = 0,
    on_log: LogFn | None = None,
) -> tuple[Params, dict[str, Tensor]]:
    """Run the optimiser that `spec` names; `num_items` (pairs or states) is only used for minibatches."""
    if isinstance(spec, AdaGradNormSpec):
        return adagrad_norm(params, loss_fn, spec, log_every, on_log)
    if isinstance(spec, AdamSpec):
        return adam(params, loss_fn, spec, num_items, log_every, on_log)
    return lbfgs(params, loss_fn, spec, log_every, on_log)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for a block, then restore it (None: leave it alone).

    The default 1: these tensors are small (at most S x 10,000 x K), so threads buy little, and on cores
    shared with other jobs the default count made the linear study 5-25x slower (measured: 2.8 s -> 50 s).
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
