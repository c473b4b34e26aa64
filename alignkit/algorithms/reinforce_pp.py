"""REINFORCE++: score minus the KL still to come as each token's advantage, normalised over the global batch."""

from __future__ import annotations

from typing import Any

from alignkit.algorithms.configs.reinforce_pp import REINFORCE_PP_CARD
from alignkit.algorithms.online import OnlineModule
from alignkit.ops.rl import kl_penalty, reinforce_pp_advantages
from alignkit.rewards.normalize import batch_moments


class ReinforcePP(OnlineModule):
    """REINFORCE++ (Hu 2025): REINFORCE with PPO's per-token KL reward and clipped ratio but no critic; the
    advantages are normalised over the global batch rather than per prompt (GRPO) or per process."""

    card = REINFORCE_PP_CARD

    @property
    def needs_old_logps(self) -> bool:  # type: ignore[override]
        """The KL in the reward needs the sampling policy's log-probs (the sampler's, where they can be reused)."""
        return self.algo.kl_in == "reward" and bool(self.algo.kl_coef)

    def advantages(self, exp: dict[str, Any]) -> None:
        a, mask = self.algo, exp["rollout"].response_mask
        kl_coef = a.kl_coef if a.kl_in == "reward" else 0.0
        kl = kl_penalty(exp["old_logps"], exp["ref_logps"], a.kl_estimator) * mask if kl_coef else None
        group = a.samples_per_prompt if a.baseline == "group_mean" else None
        exp["advantages"] = reinforce_pp_advantages(exp["scores"], kl, mask, kl_coef, batch_moments, group)

    def loss_kl_coef(self) -> float:
        return self.algo.kl_coef if self.algo.kl_in == "loss" else 0.0
