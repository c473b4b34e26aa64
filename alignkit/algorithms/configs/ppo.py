"""PPO's options and card."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignkit.algorithms.configs.online import OnlineConfig, online_card
from alignkit.config.base import Spec


class AdaptiveKLSpec(Spec):
    """Ziegler et al. 2019, sec. 2.2: the KL coefficient moves to keep the measured KL near `target`."""

    target: float = Field(6.0, gt=0, description="Target KL (nats per response) the coefficient steers toward.")
    horizon: int = Field(10000, ge=1, description="Samples over which a 20% KL error changes the coefficient by 20%.")


class RejectionSamplingRounds(Spec):
    """Llama 2's schedule (Touvron et al. 2023, sec. 3.2.3): rejection-sampling fine-tuning rounds between PPO."""

    every_n_steps: int = Field(
        ge=2, description="Every N-th iteration is a rejection-sampling round (best-of-K, SFT) instead of PPO."
    )
    samples_per_prompt: int = Field(4, ge=2, description="K: responses per prompt in those rounds.")
    threshold: float | None = Field(None, description="Drop a best response scoring below this.")


class PPOConfig(OnlineConfig):
    name: Literal["ppo"] = "ppo"
    update_epochs: int = Field(4, ge=1, description="PPO epochs over each iteration's samples.")
    kl_coef: float = Field(0.05, ge=0, description="Initial (or fixed) coefficient of the per-token KL penalty.")
    adaptive_kl: AdaptiveKLSpec | None = Field(None, description="Adapt kl_coef to a target KL; null = fixed.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount over response tokens.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda (Schulman et al. 2016).")
    value_clip_eps: float = Field(0.2, gt=0, description="Value clip range around the rollout's values.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss in the joint loss.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight (0 = none).")
    whiten_advantages: bool = Field(True, description="Whiten advantages over the iteration's response tokens.")
    rejection_sampling: RejectionSamplingRounds | None = Field(
        None, description="Alternate PPO with rejection-sampling rounds, as Llama 2 did; null = PPO only."
    )
    critic_init: Literal["reward_model", "policy"] = Field(
        "reward_model",
        description="Without a critic section, the critic starts from the reward model (reward source kind "
        "model) or from the policy's weights with a new value head.",
    )


PPO_CARD = online_card(
    name="ppo",
    Config=PPOConfig,
    module="alignkit.algorithms.ppo:PPO",
    description="PPO (Ouyang et al. 2022 recipe): clipped policy and value losses on GAE advantages, KL-shaped "
    "rewards.",
    models=("policy", "reference", "critic", "reward"),
    trained=("policy", "critic"),
    progress=("reward/mean", "kl/ref", "response/length", "value/loss"),
)
