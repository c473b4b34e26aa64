"""Rejection sampling fine-tuning (best-of-K, RAFT / Llama 2): keep each prompt's best response, train on it."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from alignkit.algorithms.configs.rejection_sampling import REJECTION_SAMPLING_CARD
from alignkit.algorithms.online import OnlineModule
from alignkit.ops import masked_mean
from alignkit.ops.rl import aggregate
from alignkit.rollout.rollout import score


def best_of_groups(scores: Tensor, k: int, threshold: float | None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(rows kept, per-row weights, metrics) for scores [N * k] laid out group after group.

    Each group's best response is kept (weight 1); with a threshold, a best response scoring below it gets
    weight 0. Ties go to the first sample.
    """
    groups = scores.view(-1, k)
    best = groups.argmax(dim=1)
    rows = best + torch.arange(len(groups), device=best.device) * k
    top = groups.max(dim=1).values
    keep = (top >= threshold).float() if threshold is not None else torch.ones_like(top)
    weights = torch.zeros_like(scores).index_put((rows,), keep)
    return rows, weights, {"reward/best_mean": top.mean(), "rs/kept": keep.mean()}


def sft_on_kept(
    module: OnlineModule, exp: dict[str, Any], rows: Tensor, counts: dict[str, Any]
) -> tuple[Tensor, dict[str, Tensor]]:
    """The SFT loss (the model's own likelihood, temperature 1) of the kept responses among `rows`."""
    sub = exp["rollout"].index(rows)
    mask = sub.response_mask
    logps, entropy = score(module.policy, sub, with_entropy=True)
    nll = -logps * exp["weights"][rows][:, None]
    norm = {"num_tokens": counts["tokens"], "num_sequences": counts["sequences"], "max_len": mask.shape[1]}
    loss = aggregate(nll, mask, "token_mean", **norm)
    return loss, {"entropy": masked_mean(entropy.detach(), mask)}


class RejectionSampling(OnlineModule):
    """Each iteration (a round on a batch of prompts, Dong et al. 2023): sample K, keep the best by reward,
    one SFT pass on the kept responses; the next round samples from the improved policy."""

    card = REJECTION_SAMPLING_CARD
    needs_old_logps = True  # only for the logged KL to the reference of what was sampled

    def advantages(self, exp: dict[str, Any]) -> None:
        exp["train_rows"], exp["weights"], metrics = best_of_groups(
            exp["scores"], self.algo.samples_per_prompt, self.algo.threshold
        )
        exp["metrics"].update(metrics)

    def loss(self, exp: dict[str, Any], rows: Tensor, counts: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return sft_on_kept(self, exp, rows, counts)
