"""Reward modelling: a scalar head trained with the Bradley-Terry pairwise loss (optional margin, centering)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from alignkit.algorithms.base import AlignModule
from alignkit.algorithms.configs.reward_model import REWARD_MODEL_CARD
from alignkit.data.collate import concat_sequences
from alignkit.models import sequence_scores
from alignkit.ops.layout import pair_groups


def bradley_terry_loss(
    chosen: Tensor, rejected: Tensor, margin: Tensor | None = None, center_coef: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """-log sigmoid(r_chosen - r_rejected - margin), averaged over pairs, plus the centering term.

    chosen, rejected: [B] scalar rewards; margin: [B] or None (treated as 0).
    """
    diff = chosen - rejected
    loss = -F.logsigmoid(diff - (margin if margin is not None else 0.0)).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    metrics = {
        "loss": loss.detach(),
        "rewards/chosen": chosen.detach().mean(),
        "rewards/rejected": rejected.detach().mean(),
        "rewards/margins": diff.detach().mean(),
        "rewards/accuracies": (diff.detach() > 0).float().mean(),
    }
    return loss, metrics


class RewardModel(AlignModule):
    """Bradley-Terry reward model on prompt/chosen/rejected pairs (Llama 2 margins and centering optional)."""

    card = REWARD_MODEL_CARD

    def step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        # chosen and rejected are padded to one length by the collator: one forward over both halves (one
        # sequence per pair when prompts are shared)
        ids, mask, _ = concat_sequences(batch, ("chosen_", "rejected_"))
        groups = pair_groups(len(ids) // 2, 2, ids.device)
        scores = sequence_scores(self.reward_model, ids, mask, groups).float()
        chosen, rejected = scores.chunk(2)
        margin = batch.get("margin") if self.algo.use_margin else None
        loss, metrics = bradley_terry_loss(chosen, rejected, margin, self.algo.center_coef)
        self.log_split(split, metrics, batch_size=chosen.shape[0])
        return loss
