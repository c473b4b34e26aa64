"""Reward sources: rule rewards registered by name (functions of prompt and completion text)."""

from alignkit.rewards.rules import REWARDS, RuleReward

__all__ = ["REWARDS", "RuleReward"]
