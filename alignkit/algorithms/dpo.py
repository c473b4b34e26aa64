"""Direct Preference Optimisation and its loss variants (IPO, SLiC, robust and conservative DPO, EXO, NCA, BCO, SPPO,
APO) on preference pairs, and the metrics every method on pairs logs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.algorithms.base import AlignModule
from alignkit.algorithms.configs.dpo import DPO_CARD
from alignkit.algorithms.reference import completion_lengths, fill_reference_cache, forward_logps, reference_logps


# Each maps a pair's log-ratios c = log pi_w - log ref_w (chosen) and r = log pi_l - log ref_l (rejected), beta, the
# label noise eps and a reward shift delta (BCO's; the others ignore it) to a loss per pair. Most read only the
# difference h = c - r; NCA, BCO, SPPO and APO also where each log-ratio stands, which DPO leaves free.
def _sigmoid(c: Tensor, r: Tensor, beta: float, eps: float, delta: Tensor | float) -> Tensor:
    return -(1 - eps) * F.logsigmoid(beta * (c - r)) - eps * F.logsigmoid(-beta * (c - r))


def _ipo(c: Tensor, r: Tensor, beta: float, eps: float, delta: Tensor | float) -> Tensor:
    return (c - r - 1 / (2 * beta)) ** 2


def _hinge(c: Tensor, r: Tensor, beta: float, eps: float, delta: Tensor | float) -> Tensor:
    return torch.relu(1 - beta * (c - r))


def _robust(c: Tensor, r: Tensor, beta: float, eps: float, delta: Tensor | float) -> Tensor:
    x = beta * (c - r)
    return (-(1 - eps) * F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1 - 2 * eps)


def _exo_pair(c: Tensor, r: Tensor, beta: float, eps: float, delta: Tensor | float) -> Tensor:
    # Ji et al. 2024, eq. 16 with K = 2: KL(policy's pair distribution softmax(beta c, beta r) || labels (1 - eps, eps))
    if not 0 < eps < 1:
        raise ValueError(f"exo_pair needs label_smoothing in (0, 1), its labels being (1 - eps, eps) (got {eps})")
    x = beta * (c - r)
    chosen = torch.sigmoid(x) * (F.logsigmoid(x) - math.log1p(-eps))
    return chosen + torch.sigmoid(-x) * (F.logsigmoid(-x) - math.log(eps))


def _nca_pair(c: Tensor, r: Tensor, beta: float, eps: float, delta: Tensor | float) -> Tensor:
    # Chen et al. 2024 (pairwise NCA): each completion classified against the pair's noise, so the chosen reward is
    # raised to log 2 rather than pushed without end, and the rejected one pushed down on its own
    return -F.logsigmoid(beta * c) - 0.5 * F.logsigmoid(-beta * c) - 0.5 * F.logsigmoid(-beta * r)


def _bco_pair(c: Tensor, r: Tensor, beta: float, eps: float, delta: Tensor | float) -> Tensor:
    # Jung et al. 2024: a binary classifier whose logit is the reward less delta, chosen labelled 1 and rejected 0;
    # its cross-entropy bounds DPO's loss from above, and delta tightens the bound
    return -F.logsigmoid(beta * c - delta) - F.logsigmoid(delta - beta * r)


def _sppo_hard(c: Tensor, r: Tensor, beta: float, eps: float, delta: Tensor | float) -> Tensor:
    # Wu et al. 2024, eq. 4.7: log-ratio regressed to eta (P(win) - 1/2), with eta = 1/beta and P = 1 for the chosen,
    # 0 for the rejected (the paper estimates P with a preference model; hard labels are what pairs give)
    return (c - 1 / (2 * beta)) ** 2 + (r + 1 / (2 * beta)) ** 2


def _apo_zero(c: Tensor, r: Tensor, beta: float, eps: float, delta: Tensor | float) -> Tensor:
    # D'Oosterlinck et al. 2024, eq. 7 (+1, so that the loss is >= 0): chosen better than the model's own outputs
    return 1 - torch.sigmoid(beta * c) + torch.sigmoid(beta * r)


def _apo_down(c: Tensor, r: Tensor, beta: float, eps: float, delta: Tensor | float) -> Tensor:
    # eq. 8 (+1): chosen worse than the model's own outputs, so both go down and the rejected more
    return torch.sigmoid(beta * c) + 1 - torch.sigmoid(beta * (c - r))


LOSSES: dict[str, Callable[[Tensor, Tensor, float, float, Tensor | float], Tensor]] = {
    "sigmoid": _sigmoid,
    "ipo": _ipo,
    "hinge": _hinge,
    "robust": _robust,
    "exo_pair": _exo_pair,
    "nca_pair": _nca_pair,
    "bco_pair": _bco_pair,
    "sppo_hard": _sppo_hard,
    "apo_zero": _apo_zero,
    "apo_down": _apo_down,
}


def pair_metrics(
    chosen_reward: Tensor, rejected_reward: Tensor, policy_chosen: Tensor, policy_rejected: Tensor
) -> dict[str, Tensor]:
    """The tags every method on preference pairs logs, from [B] implicit rewards and policy sequence log-probs.

    `rewards/chosen|rejected` (means), `rewards/margins` (mean chosen - rejected), `rewards/accuracies` (share of
    pairs whose chosen reward is higher), `logps/chosen|rejected` (means of the summed log-probs).
    """
    chosen_reward, rejected_reward = chosen_reward.detach(), rejected_reward.detach()
    return {
        "rewards/chosen": chosen_reward.mean(),
        "rewards/rejected": rejected_reward.mean(),
        "rewards/margins": (chosen_reward - rejected_reward).mean(),
        "rewards/accuracies": (chosen_reward > rejected_reward).float().mean(),
        "logps/chosen": policy_chosen.detach().mean(),
        "logps/rejected": policy_rejected.detach().mean(),
    }


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    *,
    chosen_tokens: Tensor | None = None,
    rejected_tokens: Tensor | None = None,
    reward_shift: Tensor | float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The mean over pairs of LOSSES[loss_type], from [B] sequence log-probs of chosen and rejected completions.

    With `chosen_tokens` and `rejected_tokens` ([B] completion token counts), each log-ratio is divided by its
    count before the loss (DPOConfig.logps_normalize: IPO's default); `reward_shift` is bco_pair's delta.
    Metrics (`pair_metrics`) use the implicit reward beta * log(pi/ref) of the log-ratios the loss sees, and the
    policy's summed log-probs.
    """
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    if (chosen_tokens is None) != (rejected_tokens is None):
        raise ValueError("give both chosen_tokens and rejected_tokens (per-token log-ratios), or neither")
    if chosen_tokens is not None and rejected_tokens is not None:
        chosen_ratio = chosen_ratio / chosen_tokens.clamp(min=1)
        rejected_ratio = rejected_ratio / rejected_tokens.clamp(min=1)
    loss = LOSSES[loss_type](chosen_ratio, rejected_ratio, beta, label_smoothing, reward_shift).mean()
    metrics = pair_metrics(beta * chosen_ratio, beta * rejected_ratio, policy_chosen, policy_rejected)
    return loss, {"loss": loss.detach(), **metrics}


class DPO(AlignModule):
    """DPO family on prompt/chosen/rejected pairs: chosen and rejected in one forward through the policy."""

    card = DPO_CARD
    SEQUENCES = ("chosen_", "rejected_")

    def __init__(self, cfg: Any, models: dict[str, nn.Module], tokenizer: Any) -> None:
        super().__init__(cfg, models, tokenizer)
        # bco_pair's delta: the mean reward of every training completion so far, on every rank (as TRL kept it), not
        # of one micro-batch. (sum, count) in float64 on the CPU, outside the module's state: a precision setting
        # that casts buffers would round the count; the checkpoint carries it (on_save_checkpoint)
        self.bco_rewards = torch.zeros(2, dtype=torch.float64) if self.algo.loss_type == "bco_pair" else None

    def on_fit_start(self) -> None:
        fill_reference_cache(self, self.SEQUENCES)

    def reward_shift(self) -> float:
        """bco_pair's delta: the mean reward of the training completions before this step (0 before the first)."""
        if self.bco_rewards is None:
            return 0.0
        total, count = self.bco_rewards.tolist()
        return total / max(count, 1.0)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.bco_rewards is not None:
            checkpoint["bco_rewards"] = self.bco_rewards.clone()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.bco_rewards is not None and "bco_rewards" in checkpoint:
            self.bco_rewards = checkpoint["bco_rewards"].to(torch.float64).cpu()

    def step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        # the reference first: its activations are freed before the policy's graph is built, not on top of it
        ref = reference_logps(self, batch, self.SEQUENCES, split)
        policy = forward_logps(self.policy, batch, self.SEQUENCES)
        tokens = completion_lengths(batch, self.SEQUENCES) if self.algo.per_token else None
        loss, metrics = dpo_loss(
            policy[:, 0],
            policy[:, 1],
            ref[:, 0],
            ref[:, 1],
            self.algo.beta,
            self.algo.loss_type,
            self.algo.label_smoothing,
            chosen_tokens=None if tokens is None else tokens[:, 0],
            rejected_tokens=None if tokens is None else tokens[:, 1],
            reward_shift=self.reward_shift(),
        )
        if self.bco_rewards is not None:
            metrics["rewards/shift"] = torch.tensor(self.reward_shift(), device=self.device)
            if split == "train":
                self._count_rewards(metrics, len(policy))
        self.log_split(split, metrics, batch_size=policy.shape[0])
        return loss

    def _count_rewards(self, metrics: dict[str, Tensor], pairs: int) -> None:
        """Add the batch's rewards (every rank's) to bco_pair's running sum and count."""
        assert self.bco_rewards is not None
        total = (metrics["rewards/chosen"] + metrics["rewards/rejected"]).double() * pairs
        seen = torch.stack([total, torch.tensor(2.0 * pairs, dtype=torch.float64, device=total.device)])
        if self.trainer.world_size > 1:
            seen = self.all_gather(seen).sum(0)
        self.bco_rewards += seen.cpu()
