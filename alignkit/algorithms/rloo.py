"""RLOO: REINFORCE with a leave-one-out baseline over k samples per prompt; the KL in the reward by default."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from alignkit.algorithms.configs.rloo import RLOO_CARD
from alignkit.algorithms.online import OnlineModule
from alignkit.ops import masked_sum
from alignkit.ops.rl import kl_penalty, leave_one_out_advantages


def rloo_advantages(scores: Tensor, kl: Tensor | None, k: int, kl_coef: float) -> tuple[Tensor, Tensor]:
    """(advantages [N], the rewards they come from [N]) for k samples per prompt, groups contiguous.

    A response's reward is its score minus kl_coef x `kl`, its KL to the reference summed over its tokens (None
    with kl_coef 0); its advantage is that reward minus the mean of the other k - 1 rewards of its prompt
    (Ahmadian et al. 2024, sec. 3 and eq. 6).
    """
    rewards = scores - kl_coef * kl if kl_coef else scores
    return leave_one_out_advantages(rewards, k), rewards


class RLOO(OnlineModule):
    """RLOO (Ahmadian et al. 2024, "Back to Basics"): A_i = R_i - mean of the other k - 1 rewards of its prompt,
    R = score - kl_coef x KL(response) with `kl_in: reward`; the policy loss and its clip are GRPO's."""

    card = RLOO_CARD

    @property
    def needs_old_logps(self) -> bool:  # type: ignore[override]
        """The KL in the reward needs the sampling policy's log-probs (the sampler's, where they can be reused)."""
        return self.algo.kl_in == "reward" and bool(self.algo.kl_coef)

    def advantages(self, exp: dict[str, Any]) -> None:
        a = self.algo
        kl_coef = a.kl_coef if a.kl_in == "reward" else 0.0
        kl = None
        if kl_coef:
            per_token = kl_penalty(exp["old_logps"], exp["ref_logps"], a.kl_estimator)
            kl = masked_sum(per_token, exp["rollout"].response_mask, dim=-1)
        exp["advantages"], rewards = rloo_advantages(exp["scores"], kl, a.samples_per_prompt, kl_coef)
        if kl_coef:
            exp["metrics"]["reward/with_kl"] = rewards.mean()

    def loss_kl_coef(self) -> float:
        return self.algo.kl_coef if self.algo.kl_in == "loss" else 0.0
