"""Kahneman-Tversky Optimisation on examples labelled desirable or undesirable (or on pairs, split in two)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from alignkit.algorithms.base import AlignModule
from alignkit.algorithms.configs.kto import KTO_CARD
from alignkit.algorithms.reference import fill_reference_cache, forward_logps, reference_logps
from alignkit.data.generators import GENERATOR_KINDS
from alignkit.data.sources import source_columns
from alignkit.data.transforms import add_mismatched_pairs, split_pairs

log = logging.getLogger(__name__)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl: Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KTO loss (Ethayarajh et al. 2024, eq. 8), averaged over the examples of the batch.

    With r = log pi(y|x) - log ref(y|x) and z0 = max(0, kl) held constant (no gradient):
    desirable examples lose lambda_D * (1 - sigmoid(beta * (r - z0))), undesirable ones
    lambda_U * (1 - sigmoid(beta * (z0 - r))). policy_logps, ref_logps: [B]; desirable: [B] bool;
    kl: scalar estimate of KL(pi || ref) from mismatched pairs.

    Metrics: `kl/z0`; for each group present in the batch `rewards/chosen|rejected` (mean beta * r of the
    desirable | undesirable examples) and `logps/chosen|rejected`; with both groups, `rewards/margins`
    (difference of the means) and `rewards/accuracies`, the share of (desirable, undesirable) example pairs
    in the batch whose rewards are ordered right (on one pair, DPO's accuracy).
    """
    z0 = kl.detach().clamp(min=0)
    ratio = policy_logps - ref_logps
    loss_d = desirable_weight * (1 - torch.sigmoid(beta * (ratio - z0)))
    loss_u = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - ratio)))
    loss = torch.where(desirable, loss_d, loss_u).mean()
    metrics = {"loss": loss.detach(), "kl/z0": z0, **group_metrics(policy_logps, ref_logps, desirable, beta)}
    return loss, metrics


def group_metrics(policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, beta: float) -> dict[str, Tensor]:
    """KTO's reward and log-prob metrics by group (chosen = desirable, rejected = undesirable); see kto_loss."""
    reward, policy_logps = beta * (policy_logps - ref_logps).detach(), policy_logps.detach()
    metrics = {}
    for group, rows in (("chosen", desirable), ("rejected", ~desirable)):
        if rows.any():
            metrics[f"rewards/{group}"] = reward[rows].mean()
            metrics[f"logps/{group}"] = policy_logps[rows].mean()
    if desirable.any() and (~desirable).any():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        pairs = reward[desirable][:, None] - reward[~desirable][None, :]
        metrics["rewards/accuracies"] = (pairs > 0).float().mean()
    return metrics


class KTO(AlignModule):
    """KTO: the policy's log-ratio on each example against z0, a batch estimate of KL from mismatched pairs."""

    card = KTO_CARD
    SEQUENCES = ("", "kl_")  # the example, and its prompt with another row's completion

    @classmethod
    def record_kind(cls, cfg: Any) -> str:
        kind = cfg.algorithm.data_kind
        if kind != "auto":
            return kind
        source = cfg.data.train  # a source, or a mixture's list (source_columns: the columns every one has)
        if not isinstance(source, list) and source.generator is not None:
            return "unpaired" if "unpaired" in GENERATOR_KINDS[source.generator] else "preference"
        return "preference" if {"chosen", "rejected"} <= set(source_columns(source)) else "unpaired"

    def prepare_datasets(self, train: Any, eval_set: Any) -> tuple[Any, Any]:
        seed, max_length = self.cfg.trainer.seed, self.cfg.data.max_length
        sets = []
        for ds in (train, eval_set):
            if ds is not None and "chosen_input_ids" in ds.column_names:
                ds = split_pairs(ds)
            sets.append(None if ds is None else add_mismatched_pairs(ds, seed, max_length))
        self._check_balance(sets[0]["label"])
        return sets[0], sets[1]

    def _check_balance(self, labels: list[bool]) -> None:
        n_d = sum(labels)
        n_u = len(labels) - n_d
        if n_d == 0 or n_u == 0:
            log.warning(f"KTO training data has {n_d} desirable and {n_u} undesirable examples; it needs both")
            return
        # Ethayarajh et al. 2024, sec. 4.2: lambda_D n_D / (lambda_U n_U) should lie in [1, 4/3]
        ratio = self.algo.desirable_weight * n_d / (self.algo.undesirable_weight * n_u)
        if not 1 <= ratio <= 4 / 3:
            lo, hi = n_u / n_d * self.algo.undesirable_weight, 4 / 3 * n_u / n_d * self.algo.undesirable_weight
            log.warning(
                f"KTO: desirable_weight * n_desirable / (undesirable_weight * n_undesirable) = {ratio:.2f} with "
                f"{n_d} desirable and {n_u} undesirable examples; the paper recommends 1 to 4/3, i.e. "
                f"desirable_weight between {lo:.2f} and {hi:.2f}"
            )

    def on_fit_start(self) -> None:
        fill_reference_cache(self, self.SEQUENCES)

    def step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        # The forwards without a graph come first, so their activations are freed before the policy's
        # graph is built rather than adding to it. z0 is a constant in the loss: no graph for the KL pairs.
        ref = reference_logps(self, batch, self.SEQUENCES, split)
        with torch.no_grad():
            policy_kl = forward_logps(self.policy, batch, ("kl_",))[:, 0]
        policy = forward_logps(self.policy, batch, ("",))[:, 0]
        # z0 is a mean over every rank's micro-batch, as one estimate for the whole step
        kl_sum = torch.stack([(policy_kl - ref[:, 1]).sum(), torch.tensor(float(len(policy_kl)), device=self.device)])
        if self.trainer.world_size > 1:
            kl_sum = self.all_gather(kl_sum).sum(0)
        loss, metrics = kto_loss(
            policy,
            ref[:, 0],
            batch["label"],
            kl_sum[0] / kl_sum[1],
            self.algo.beta,
            self.algo.desirable_weight,
            self.algo.undesirable_weight,
        )
        if self.trainer.world_size > 1:
            # Which groups a micro-batch holds differs between ranks; taken over every rank's examples, the
            # group metrics (and so the logged tags, which eval synchronises across ranks) are the same.
            shared = (policy, ref[:, 0], batch["label"].float())
            policy_all, ref_all, label_all = (self.all_gather(t.detach()).flatten(0, 1) for t in shared)
            metrics = {"loss": metrics["loss"], "kl/z0": metrics["kl/z0"]}
            metrics.update(group_metrics(policy_all, ref_all, label_all.bool(), self.algo.beta))
        self.log_split(split, metrics, batch_size=len(policy))
        return loss
