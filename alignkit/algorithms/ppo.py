"""PPO for RLHF: actor and critic trained; reward and reference frozen; KL in the per-token reward; GAE."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.algorithms.configs.ppo import PPO_CARD
from alignkit.algorithms.online import OnlineModule
from alignkit.algorithms.rejection_sampling import best_of_groups, sft_on_kept
from alignkit.models import token_values
from alignkit.ops import masked_mean
from alignkit.ops.layout import consecutive_groups
from alignkit.ops.rl import (
    AdaptiveKLController,
    FixedKLController,
    aggregate,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_penalty,
    token_rewards,
    whiten,
)
from alignkit.rollout.rollout import score


class PPO(OnlineModule):
    """PPO (Ouyang et al. 2022 recipe): clipped policy and value losses on GAE advantages, KL-shaped rewards."""

    card = PPO_CARD
    needs_old_logps = True

    def __init__(self, cfg: Any, models: dict[str, Any], tokenizer: Any) -> None:
        super().__init__(cfg, models, tokenizer)
        a = self.algo
        self.kl_ctl = (
            AdaptiveKLController(a.kl_coef, a.adaptive_kl.target, a.adaptive_kl.horizon)
            if a.adaptive_kl
            else FixedKLController(a.kl_coef)
        )

    @classmethod
    def build_default(cls, section: str, cfg: Any, models: dict[str, Any], tokenizer: Any) -> Any:
        if section != "critic":
            return super().build_default(section, cfg, models, tokenizer)
        from alignkit.models import build_scalar_model

        source = cfg.reward.source
        if cfg.algorithm.critic_init == "reward_model" and source.kind == "model":
            return build_scalar_model(source.model, tokenizer)
        # the policy's backbone under a fresh value head
        critic = build_scalar_model(cfg.policy, tokenizer)
        critic.base_model.load_state_dict(models["policy"].base_model.state_dict())
        return critic

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        rounds = self.algo.rejection_sampling
        # the iteration's number, from Lightning's count of logged steps (restored on resume)
        iteration = self.trainer.fit_loop.epoch_loop._batches_that_stepped
        if rounds is None or (iteration + 1) % rounds.every_n_steps:
            return super().training_step(batch, batch_idx)
        # a rejection-sampling round: best-of-K, then the SFT loss on the kept responses (same optimizer)
        exp = self.experience(batch, num_samples=rounds.samples_per_prompt)
        exp["train_rows"], exp["weights"], selection = best_of_groups(
            exp["scores"], rounds.samples_per_prompt, rounds.threshold
        )
        metrics = {**self.rollout_metrics(exp), **selection, "rs/round": torch.tensor(1.0)}
        metrics.update(self.update(exp, loss_fn=lambda e, rows, counts: sft_on_kept(self, e, rows, counts)))
        self.end_iteration(exp, metrics)
        return None

    def values_of(self, rollout: Any) -> Tensor:
        """[N, T] V(s_t) for each token t: the critic's output at the position before it (the state it saw)."""
        groups = consecutive_groups(rollout.sequences[:, : rollout.prompt_length])
        values = token_values(self.critic, rollout.sequences, rollout.attention_mask, groups)
        return F.pad(values[:, :-1], (1, 0)) * rollout.response_mask

    def advantages(self, exp: dict[str, Any]) -> None:
        rollout = exp["rollout"]
        mask = rollout.response_mask
        with torch.no_grad():
            exp["old_values"] = self.by_micro_batch(rollout, self.values_of)
        kl = kl_penalty(exp["old_logps"], exp["ref_logps"], self.algo.kl_estimator) * mask
        rewards = token_rewards(exp["scores"], kl, mask, self.kl_ctl.value)
        adv, returns = gae(rewards, exp["old_values"], mask, self.algo.gamma, self.algo.lam)
        exp["advantages"] = whiten(adv, mask) if self.algo.whiten_advantages else adv
        exp["returns"] = returns
        exp["kl_tokens"] = kl

    def loss(self, exp: dict[str, Any], rows: Tensor, counts: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        a, sub = self.algo, exp["rollout"].index(rows)
        mask = sub.response_mask
        logps, entropy = score(self.policy, sub, temperature=a.temperature, with_entropy=True)
        values = self.values_of(sub)
        pg, pg_metrics = clipped_policy_loss(
            logps, exp["old_logps"][rows], exp["advantages"][rows], mask, a.clip_eps, ratio_level=a.importance_ratio
        )
        vf = clipped_value_loss(values, exp["old_values"][rows], exp["returns"][rows], mask, a.value_clip_eps)
        total = pg + a.vf_coef * vf - a.entropy_coef * entropy
        norm = {"num_tokens": counts["tokens"], "num_sequences": counts["sequences"], "max_len": mask.shape[1]}
        loss = aggregate(total, mask, "token_mean", **norm)
        metrics = {
            "policy/loss": masked_mean(pg.detach(), mask),
            "policy/clipfrac": pg_metrics["clipfrac"],
            "policy/approx_kl": pg_metrics["approx_kl"],
            "value/loss": masked_mean(vf.detach(), mask),
            "value/explained_var": explained_variance(values.detach(), exp["returns"][rows], mask),
            "entropy": masked_mean(entropy.detach(), mask),
        }
        return loss, metrics

    def rollout_metrics(self, exp: dict[str, Any]) -> dict[str, Tensor]:
        metrics = super().rollout_metrics(exp)
        metrics["kl/coef"] = torch.tensor(self.kl_ctl.value)
        if "old_values" in exp:  # (not in rejection-sampling rounds)
            metrics["value/mean"] = masked_mean(exp["old_values"], exp["rollout"].response_mask)
        return metrics

    def after_update(self, exp: dict[str, Any], metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        kl = float(metrics["kl/ref"])
        if self.trainer.world_size > 1:
            kl = float(self.all_gather(torch.tensor(kl, device=self.device)).mean())
        self.kl_ctl.update(kl, len(exp["rollout"].sequences) * self.trainer.world_size)
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["kl_controller"] = self.kl_ctl.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "kl_controller" in checkpoint:
            self.kl_ctl.load_state_dict(checkpoint["kl_controller"])
