"""CPO (Xu et al. 2024): DPO's loss with the reference left out, plus NLL on the chosen completion."""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.algorithms.base import AlignModule
from alignkit.algorithms.configs.cpo import CPO_CARD
from alignkit.algorithms.dpo import dpo_loss
from alignkit.algorithms.reference import completion_lengths, forward_logps


def cpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    chosen_tokens: Tensor,
    beta: float = 0.1,
    nll_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CPO's loss (Xu et al. 2024, sec. 3), averaged over pairs, from [B] summed log-probs and chosen token counts.

    L = -log sigmoid(beta log pi(y_w|x) - beta log pi(y_l|x)) + nll_weight * NLL_chosen: DPO's sigmoid loss with
    a uniform reference (log ref = 0, which the paper's bound on the reference allows), and the chosen
    completion's negative log-likelihood as a behaviour-cloning regulariser, averaged over its tokens (the paper's
    code averages over the batch's chosen tokens; here each pair's mean, so the loss is a mean over pairs; summed,
    it would outweigh the preference term by the completion's length). Metrics: DPO's,
    with the reward beta * log pi(y|x), and `nll`.
    """
    zero = torch.zeros_like(policy_chosen)
    preference, metrics = dpo_loss(policy_chosen, policy_rejected, zero, zero, beta, "sigmoid")
    nll = -(policy_chosen / chosen_tokens.clamp(min=1)).mean()
    loss = preference + nll_weight * nll
    return loss, {**metrics, "loss": loss.detach(), "nll": nll.detach()}


class CPO(AlignModule):
    """CPO on prompt/chosen/rejected pairs, no reference: DPO's loss with the reference left out, plus NLL."""

    card = CPO_CARD
    SEQUENCES = ("chosen_", "rejected_")

    def step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        policy = forward_logps(self.policy, batch, self.SEQUENCES)
        tokens = completion_lengths(batch, self.SEQUENCES)
        loss, metrics = cpo_loss(policy[:, 0], policy[:, 1], tokens[:, 0], self.algo.beta, self.algo.nll_weight)
        self.log_split(split, metrics, batch_size=policy.shape[0])
        return loss
