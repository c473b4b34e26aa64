"""Online DPO's options and card: the online loop's sampling options and DPO's loss options, as DPO has them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, model_validator

from alignkit.algorithms.configs.dpo import DPOConfig, LossType
from alignkit.algorithms.configs.online import OnlineConfig, online_card

# DPO's loss options are taken whole from DPOConfig (type, default, range, description) and checked by it (`dpo`),
# so a loss type or a rule added there holds here too, and their documentation lives in one place.
_DPO = DPOConfig.model_fields
DPO_OPTIONS = ("beta", "loss_type", "label_smoothing", "logps_normalize")
# Loss types that need state DPO keeps across steps, which online_dpo does not keep (yet).
NOT_ONLINE = {"bco_pair": "its delta is the running mean reward of every pair trained on, kept by the dpo module"}


class OnlineDPOConfig(OnlineConfig):
    name: Literal["online_dpo"] = "online_dpo"
    samples_per_prompt: int = Field(
        2,
        ge=2,
        description="Responses sampled per prompt; its best and worst by reward make its pair. 2: OAIF's two "
        "samples (Guo et al. 2024); more: best against worst of k (as Dong et al. 2024, RLHF Workflow), fewer tied "
        "pairs for k - 2 more responses generated and scored.",
    )
    beta: float = _DPO["beta"]
    loss_type: LossType = _DPO["loss_type"]
    label_smoothing: float = _DPO["label_smoothing"]
    logps_normalize: Literal["auto", "none", "tokens"] = _DPO["logps_normalize"]
    kl_coef: float = Field(
        0.0,
        ge=0,
        description="Must be 0: the DPO loss holds the policy to the reference itself, as strongly as beta says "
        "(no second KL term); the KL to the reference is logged.",
    )

    def dpo(self) -> DPOConfig:
        """The DPO loss options as DPO's own config: its checks, and what it derives from them (`per_token`)."""
        return DPOConfig(**{key: getattr(self, key) for key in DPO_OPTIONS})

    @model_validator(mode="after")
    def _options_as_dpo_checks_them(self) -> OnlineDPOConfig:
        problems = []
        if self.kl_coef:
            problems.append(
                f"kl_coef: online_dpo takes no KL term besides the DPO loss's own (got kl_coef {self.kl_coef}); "
                "remove kl_coef, and raise beta to stay closer to the reference"
            )
        if self.loss_type in NOT_ONLINE:
            problems.append(
                f"loss_type: {self.loss_type} is for offline dpo only: {NOT_ONLINE[self.loss_type]} (got loss_type "
                f"{self.loss_type}); choose another loss_type"
            )
        try:  # whatever DPO rejects in a combination of its loss options (label_smoothing with ipo, ...)
            self.dpo()
        except ValidationError as e:
            problems += [str(err.get("ctx", {}).get("error", err["msg"])) for err in e.errors()]
        if problems:
            raise ValueError("\n".join(problems))
        return self


ONLINE_DPO_CARD = online_card(
    name="online_dpo",
    Config=OnlineDPOConfig,
    module="alignkit.algorithms.online_dpo:OnlineDPO",
    description="Online DPO (OAIF, Guo et al. 2024): two samples per prompt from the policy, ranked by the reward; "
    "DPO's loss on the pair.",
    progress=("reward/mean", "rewards/accuracies", "pairs/ties", "kl/ref", "response/length"),
    no_token_budget="a micro-batch holds micro_batch_size pairs, both responses of each, which a budget counted "
    "over single responses would overfill; set micro_batch_size (pairs per forward) instead",
)
