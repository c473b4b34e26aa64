"""ReMax: REINFORCE whose baseline is the reward of the greedy response to the same prompt (no critic)."""

from __future__ import annotations

from typing import Any

import torch

from alignkit.algorithms.configs.remax import REMAX_CARD
from alignkit.algorithms.online import OnlineModule
from alignkit.ops.rl import baseline_advantages


class ReMax(OnlineModule):
    """ReMax (Li et al. 2023): A = r(x, y) - r(x, greedy(x)); the greedy response costs one more generation
    and reward call per prompt, no value model and no extra backward."""

    card = REMAX_CARD

    def experience(self, batch: dict[str, Any]) -> dict[str, Any]:
        exp = super().experience(batch)
        with torch.no_grad():
            greedy = self.sample(batch, greedy=True, num_samples=1)
            baseline, _ = self.rewards(greedy, batch, 1)
        # each prompt's baseline repeated for its samples (contiguous groups)
        exp["baseline"] = baseline.to(self.device).float().repeat_interleave(self.algo.samples_per_prompt)
        exp["metrics"]["reward/baseline"] = exp["baseline"].mean()
        return exp

    def advantages(self, exp: dict[str, Any]) -> None:
        exp["advantages"] = baseline_advantages(exp["scores"], exp["baseline"])
