"""Online DPO (OAIF): each prompt's responses from the current policy, ranked by the reward, DPO's loss on its pair."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from alignkit.algorithms.configs.online_dpo import ONLINE_DPO_CARD
from alignkit.algorithms.dpo import dpo_loss
from alignkit.algorithms.online import OnlineModule
from alignkit.ops import masked_mean, masked_sum
from alignkit.rollout.rollout import score


def preference_pairs(scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """(chosen rows [B], rejected rows [B], ties [B] bool, metrics) for scores [B * k] laid out group after group.

    A prompt's chosen response is its best (the first of equals), its rejected one its worst (the last of
    equals, so another row than the chosen one even when all k score alike). A tie is a prompt whose k scores
    are all equal: the reward prefers nothing, and its pair is left out of the loss.
    """
    groups = scores.view(-1, k)
    offsets = torch.arange(len(groups), device=scores.device) * k
    best, worst = groups.max(dim=1), groups.flip(1).min(dim=1)
    chosen = offsets + groups.argmax(dim=1)  # torch returns the first index of equal maxima
    rejected = offsets + k - 1 - groups.flip(1).argmin(dim=1)
    ties = best.values == worst.values
    metrics = {"pairs/ties": ties.float().mean(), "pairs/reward_gap": (best.values - worst.values).mean()}
    return chosen, rejected, ties, metrics


class OnlineDPO(OnlineModule):
    """OAIF (Guo et al. 2024): sample from the current policy, let the reward (a model or a rule, in place of the
    paper's LLM annotator) prefer one of each prompt's responses, and take a DPO step on those pairs against
    the frozen reference. The KL to the reference is the DPO loss's own (beta); kl_coef adds none.

    The update's unit is a pair, named by its chosen row (exp["train_rows"]): `loss` adds each one's rejected
    row, so micro-batches and minibatches never split a pair, and a micro-batch holds micro_batch_size pairs.
    """

    card = ONLINE_DPO_CARD

    def __init__(self, cfg: Any, models: dict[str, Any], tokenizer: Any) -> None:
        super().__init__(cfg, models, tokenizer)
        self.dpo = self.algo.dpo()  # DPO's loss options, with what DPO derives from them

    def advantages(self, exp: dict[str, Any]) -> None:
        chosen, exp["rejected"], exp["ties"], metrics = preference_pairs(exp["scores"], self.algo.samples_per_prompt)
        exp["train_rows"] = chosen
        exp["ref_seq"] = masked_sum(exp["ref_logps"], exp["rollout"].response_mask, dim=-1)
        # Each pair's share of a minibatch's loss is 1 / its preferred pairs over every process, so the loss is
        # DPO's mean over them whatever the micro-batching and number of processes; with num_minibatches > 1 the
        # iteration's mean number per minibatch stands in for each minibatch's own.
        preferred = (~exp["ties"]).sum().float()
        if self.trainer.world_size > 1:
            preferred = self.all_gather(preferred).sum()
        exp["pairs_per_minibatch"] = (preferred / self.algo.num_minibatches).clamp(min=1.0)
        exp["metrics"].update(metrics)

    def loss(self, exp: dict[str, Any], rows: Tensor, counts: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """DPO's loss (dpo_loss, DPO's loss_type and logps_normalize) on the pairs whose chosen rows are `rows`, as
        its share of the minibatch's; sequence log-probs are sums over response tokens (per token where
        logps_normalize says), of the tempered policy as sampled."""
        a = self.algo
        pairs = rows // a.samples_per_prompt
        # chosen, rejected, chosen, ...: a pair's rows side by side, so trainer.shared_prompts runs its prompt once
        both = torch.stack([rows, exp["rejected"][pairs]], dim=1).flatten()
        sub = exp["rollout"].index(both)
        mask = sub.response_mask
        logps, entropy = score(self.policy, sub, temperature=a.temperature, with_entropy=True)
        policy, ref = masked_sum(logps, mask, dim=-1).view(-1, 2), exp["ref_seq"][both].view(-1, 2)
        metrics = {"entropy": masked_mean(entropy.detach(), mask)}
        if counts["epoch"] == 0 and "old_logps" not in exp:
            # weights unchanged since sampling: the KL to the reference of what was sampled (the pairs' responses)
            metrics["kl/ref"] = (policy.detach() - ref).mean()
        keep = ~exp["ties"][pairs]
        if not keep.any():
            # nothing preferred here, but every process still runs a backward (DDP and FSDP reduce in it)
            return policy.sum() * 0.0, metrics
        tokens = sub.response_lengths.view(-1, 2)[keep] if self.dpo.per_token else None
        loss, dpo_metrics = dpo_loss(
            policy[keep, 0],
            policy[keep, 1],
            ref[keep, 0],
            ref[keep, 1],
            beta=self.dpo.beta,
            loss_type=self.dpo.loss_type,
            label_smoothing=self.dpo.label_smoothing,
            chosen_tokens=None if tokens is None else tokens[:, 0],
            rejected_tokens=None if tokens is None else tokens[:, 1],
        )
        dpo_metrics.pop("loss")  # train/loss is the update's: the shares summed
        return loss * keep.sum() / exp["pairs_per_minibatch"], {**metrics, **dpo_metrics}
