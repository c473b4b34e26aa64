"""Rollouts for online RL: sampling responses to prompts and scoring them under a policy."""

from alignkit.rollout.generate import Rollout, decode_prompts, decode_responses, generate, score

__all__ = ["Rollout", "decode_prompts", "decode_responses", "generate", "score"]
