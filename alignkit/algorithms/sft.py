"""Supervised fine-tuning: next-token cross-entropy on completion tokens only."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from alignkit.algorithms.base import AlignModule
from alignkit.algorithms.configs.sft import SFT_CARD
from alignkit.ops import completion_logprobs, masked_mean, masked_sum


def _token_mean(nll: Tensor, mask: Tensor) -> Tensor:
    return masked_mean(nll, mask)


def _sequence_mean(nll: Tensor, mask: Tensor) -> Tensor:
    return masked_mean(nll, mask, dim=-1).mean()


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "token_mean": _token_mean,
    "sequence_mean": _sequence_mean,
}


def sft_loss(
    token_logps: Tensor, completion_mask: Tensor, aggregation: str = "token_mean"
) -> tuple[Tensor, dict[str, Tensor]]:
    """Negative log-likelihood of the completion tokens.

    token_logps: [B, T] log p(x_t | x_<t); completion_mask: [B, T], 1 on the tokens that are trained.
    Returns the loss and metrics `loss`, `ppl` (exp of the token-mean NLL) and `tokens`.
    """
    nll = -token_logps
    loss = AGGREGATIONS[aggregation](nll, completion_mask)
    token_mean = masked_mean(nll, completion_mask).detach()
    tokens = masked_sum(torch.ones_like(nll), completion_mask).detach()
    return loss, {"loss": loss.detach(), "ppl": token_mean.exp(), "tokens": tokens}


class SFT(AlignModule):
    """Supervised fine-tuning on prompt/completion or chat records (loss on completion tokens only)."""

    card = SFT_CARD

    def share(self, batch: dict[str, Tensor]) -> Tensor:
        # token_mean averages over the trained tokens of the step, sequence_mean over its rows
        if self.algo.loss_aggregation == "token_mean":
            return batch["completion_mask"].sum().float()
        return super().share(batch)

    def step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        mask = batch["completion_mask"]
        logps = completion_logprobs(self.policy, batch["input_ids"], batch["attention_mask"], mask)
        loss, metrics = sft_loss(logps, mask, self.algo.loss_aggregation)
        self.log_split(split, metrics, batch_size=batch["input_ids"].shape[0])
        return loss
