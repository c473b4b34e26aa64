"""DPO, RMB-PO and RMB-PO+ on bandits as registered LightningModules: one optimiser iteration per step.

The policy's parameters carry a leading seed dimension, so every seed of a setting trains in the same
step. The released optimisers (AdaGrad-norm full batch for the linear bandit, AdamW minibatches for the
neural one) and Adam step once per Lightning step; the "converged" budget (batched L-BFGS continued in
beta, see objectives.optimize_converged) has data-dependent iteration counts and line searches, so it runs
inside a single Lightning step and logs its curve at its own iteration numbers.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader

from alignkit.bandits.data import PreferenceData
from alignkit.bandits.objectives import optimize_converged, policy_loss
from alignkit.bandits.optim import AdaGradNorm, Params, lbfgs
from alignkit.bandits.reward_fit import RewardFn
from alignkit.bandits.spec import AdaGradNormSpec, AdamSpec, LBFGSSpec
from alignkit.registry import Registry

# Lightning skips a batch that is None, so the full batch is marked by an empty index tensor.
FULL_BATCH = torch.empty(0, dtype=torch.long)


class BanditPolicy(L.LightningModule):
    """A batched (over seeds) bandit policy trained with one method's loss; logs eval/* every log_every."""

    method: ClassVar[str]

    def __init__(
        self,
        env: Any,
        data: PreferenceData,
        r_hat: RewardFn | None,
        beta: float,
        optim: AdaGradNormSpec | AdamSpec | LBFGSSpec | str,
        log_every: int = 10,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.env, self.beta, self.optim, self.log_every = env, beta, optim, log_every
        # ParameterDict keys may not hold dots ("state.0"): stored with "__", read back by params()
        self.theta = nn.ParameterDict({_key(k): nn.Parameter(v.clone()) for k, v in env.init_policy().items()})
        self.loss_for_beta = lambda b: policy_loss(env, self.method, data, r_hat, b)[0]
        self.loss_fn, self.num_items = policy_loss(env, self.method, data, r_hat, beta)
        self.curve: list[tuple[int, Tensor]] = []  # (iteration, per-seed gap)
        self.info: dict[str, Tensor] = {}

    def params(self) -> Params:
        return {k.replace("__", "."): v for k, v in self.theta.items()}

    # -- the loop ------------------------------------------------------------------------------------
    def budget(self) -> dict[str, int]:
        """Trainer limits: iterations (full batch), epochs (minibatches) or one step (L-BFGS)."""
        spec = self.optim
        if isinstance(spec, AdaGradNormSpec):
            return {"max_steps": spec.iterations, "max_epochs": -1}
        if isinstance(spec, AdamSpec):
            return {"max_steps": -1, "max_epochs": spec.epochs}
        # no Lightning optimizer steps (global_step stays 0): one epoch of the one full batch
        return {"max_steps": -1, "max_epochs": 1}

    def train_dataloader(self) -> DataLoader:
        spec = self.optim
        if isinstance(spec, AdamSpec) and spec.batch_size is not None:
            step = spec.batch_size  # fixed order, as released
            batches = [torch.arange(i, min(i + step, self.num_items)) for i in range(0, self.num_items, step)]
        else:
            batches = [FULL_BATCH]
        return DataLoader(batches, batch_size=None, collate_fn=_identity)

    def configure_optimizers(self) -> Any:
        spec, params = self.optim, list(self.theta.values())
        if isinstance(spec, AdaGradNormSpec):
            return AdaGradNorm(params, c=spec.c)
        if isinstance(spec, AdamSpec):
            cls = torch.optim.AdamW if spec.name == "adamw" else torch.optim.Adam
            return cls(params, lr=spec.lr, weight_decay=spec.weight_decay)
        return None

    def on_train_start(self) -> None:
        if not isinstance(self.optim, LBFGSSpec | str):
            self.record(0, self.params())

    def training_step(self, idx: Tensor, batch_idx: int) -> None:
        if isinstance(self.optim, LBFGSSpec | str):
            self._solve()
            return
        opt = self.optimizers()
        opt.zero_grad()  # type: ignore[union-attr]
        loss = self.loss_fn(self.params(), idx if idx.numel() else None)
        self.manual_backward(loss.sum())
        opt.step()  # type: ignore[union-attr]
        self.log("train/loss", loss.detach().mean(), on_step=True, on_epoch=False, batch_size=1)
        it = self.trainer.global_step
        if it % self.log_every == 0:
            self.record(it, self.params())

    def on_train_end(self) -> None:
        # the last iteration is always on the curve, whether or not it falls on a log_every multiple
        if self.curve and self.curve[-1][0] != self.trainer.global_step and not isinstance(self.optim, LBFGSSpec | str):
            self.record(self.trainer.global_step, self.params())

    def _solve(self) -> None:
        if self.optim == "converged":
            params, self.info = optimize_converged(self.env, self.loss_for_beta, self.beta, self.log_every, self.record)
        else:
            start = {k: v.detach() for k, v in self.params().items()}
            params, self.info = lbfgs(start, self.loss_fn, self.optim, self.log_every, self.record)  # type: ignore[arg-type]
        with torch.no_grad():
            for k, v in params.items():
                self.theta[_key(k)].copy_(v)

    # -- evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def record(self, iteration: int, params: Params) -> None:
        """Evaluate on the true reward and log the mean over seeds at this optimiser iteration."""
        metrics = self.env.evaluate(params, self.beta)
        self.curve.append((iteration, metrics["gap"].clone()))
        if self.logger is not None:
            seeds = metrics["gap"].shape[0]
            logged = {f"eval/{k}": float(metrics[k].mean()) for k in ("gap", "objective", "kl_ref", "value")}
            logged["eval/gap_se"] = float(metrics["gap"].std() / seeds**0.5) if seeds > 1 else 0.0
            self.logger.log_metrics(logged, step=iteration)

    def trajectory(self) -> dict[str, Tensor]:
        """The recorded curve: trajectory/step [T] and trajectory/gap [S, T]."""
        return {
            "trajectory/step": torch.tensor([s for s, _ in self.curve]),
            "trajectory/gap": torch.stack([g for _, g in self.curve], dim=1),
        }


def _key(name: str) -> str:
    return name.replace(".", "__")


def _identity(batch: Any) -> Any:
    return batch


BANDIT_METHODS: Registry[type[BanditPolicy]] = Registry("bandit method")


@BANDIT_METHODS.register("dpo")
class BanditDPO(BanditPolicy):
    """DPO: the DPO loss on the preference pairs alone, log-probabilities of the batched policy."""

    method = "dpo"


@BANDIT_METHODS.register("rmb_po")
class BanditRMBPO(BanditPolicy):
    """RMB-PO: maximise the KL-regularised objective of the fitted reward model on the preference states."""

    method = "rmb_po"


@BANDIT_METHODS.register("rmb_po_plus")
class BanditRMBPOPlus(BanditPolicy):
    """RMB-PO+: RMB-PO on the preference states plus m preference-free states."""

    method = "rmb_po_plus"


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """A study fits dozens of small modules: keep Lightning's per-fit banners out of the output."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    levels = [logging.getLogger(n).level for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # a full-batch epoch is one step, always "smaller than the logging interval"
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            # L-BFGS brings its own loop (see the module docstring): no Lightning optimizer, on purpose
            warnings.filterwarnings("ignore", message=".*configure_optimizers. returned .None.*")
            yield
    finally:
        for n, level in zip(names, levels, strict=True):
            logging.getLogger(n).setLevel(level)


def fit_policy(module: BanditPolicy, log_dir: Path | None = None, name: str = "") -> BanditPolicy:
    """Train a BanditPolicy with Lightning on the CPU; TensorBoard events under log_dir/name when given."""
    logger = TensorBoardLogger(str(log_dir), name=name, version="", default_hp_metric=False) if log_dir else False
    with _quiet_lightning():
        trainer = L.Trainer(
            **module.budget(),
            accelerator="cpu",
            devices=1,
            logger=logger,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            log_every_n_steps=module.log_every,
            num_sanity_val_steps=0,
        )
        trainer.fit(module)
    return module
