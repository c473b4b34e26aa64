"""ORPO (Hong et al. 2024): SFT on the chosen completion plus an odds-ratio preference term; no reference model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.algorithms.base import AlignModule
from alignkit.algorithms.configs.orpo import ORPO_CARD
from alignkit.algorithms.dpo import pair_metrics
from alignkit.algorithms.reference import completion_lengths, forward_logps

# A mean log-prob of 0 (every token certain, which float32 reaches when one logit dominates) has infinite odds;
# capped here, at a per-token probability of 1 - 1e-6 (log odds about 13.8).
MAX_MEAN_LOGP = -1e-6


def log_odds(mean_logps: Tensor) -> Tensor:
    """log(P / (1 - P)) of P = exp(mean_logps), the length-normalised likelihood, computed stably.

    log(1 - e^a) for a < 0 is log(-expm1(a)) near 0 and log1p(-e^a) far from it (Maechler 2012, "Accurately
    computing log(1 - exp(-|a|))"): either alone loses all its digits at the other end.
    """
    a = mean_logps.clamp(max=MAX_MEAN_LOGP)
    log1mexp = torch.where(a > -0.6931471805599453, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))
    return a - log1mexp


def orpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    chosen_tokens: Tensor,
    rejected_tokens: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """ORPO's loss (Hong et al. 2024, eqs. 6-7), averaged over pairs, from [B] summed log-probs and token counts.

    With a = log-prob / tokens (the mean per-token log-prob, log P of the length-normalised likelihood P) and
    odds(y) = P / (1 - P): L = NLL_chosen + beta * L_OR with L_OR = -log sigmoid(log odds(y_w) - log odds(y_l))
    and NLL_chosen = -a_w, the chosen completion's mean token NLL (the paper's code averages over the batch's
    tokens; here each pair counts once, so the loss is a mean over pairs as micro-batches and ranks assume).
    Metrics: `pair_metrics` with the reward beta * a (as TRL logs it), `nll`, and `log_odds_ratio` (the mean of
    log odds(y_w) - log odds(y_l)).
    """
    chosen_mean = policy_chosen / chosen_tokens.clamp(min=1)
    rejected_mean = policy_rejected / rejected_tokens.clamp(min=1)
    ratio = log_odds(chosen_mean) - log_odds(rejected_mean)
    nll = -chosen_mean.mean()
    loss = nll - beta * F.logsigmoid(ratio).mean()
    metrics = pair_metrics(beta * chosen_mean, beta * rejected_mean, policy_chosen, policy_rejected)
    return loss, {"loss": loss.detach(), **metrics, "nll": nll.detach(), "log_odds_ratio": ratio.detach().mean()}


class ORPO(AlignModule):
    """ORPO on prompt/chosen/rejected pairs, no reference: SFT on the chosen plus a log-odds-ratio term."""

    card = ORPO_CARD
    SEQUENCES = ("chosen_", "rejected_")

    def step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        policy = forward_logps(self.policy, batch, self.SEQUENCES)
        tokens = completion_lengths(batch, self.SEQUENCES)
        loss, metrics = orpo_loss(policy[:, 0], policy[:, 1], tokens[:, 0], tokens[:, 1], self.algo.beta)
        self.log_split(split, metrics, batch_size=policy.shape[0])
        return loss
