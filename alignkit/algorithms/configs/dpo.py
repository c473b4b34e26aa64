"""DPO's options and card."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alignkit.algorithms.configs.base import AlgorithmCard, ReferenceConfig

LossType = Literal[
    "sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down"
]
# The loss types that read label_smoothing (as a noise rate, or EXO's smoothed labels).
SMOOTHED = ("sigmoid", "robust", "exo_pair")


class DPOConfig(ReferenceConfig):
    name: Literal["dpo"] = "dpo"
    beta: float = Field(
        0.1,
        gt=0,
        description="Strength of the KL penalty to the reference: the implicit reward is beta * log(pi/ref). "
        "For ipo it is the regulariser tau, for hinge 1/beta is the margin, for sppo_hard 1/beta is SPPO's eta.",
    )
    loss_type: LossType = Field(
        "sigmoid",
        description="With c, r the chosen and rejected log-ratios log(pi/ref) and h = c - r: "
        "sigmoid: DPO, -log sigmoid(beta h) (Rafailov et al. 2023); "
        "ipo: (h - 1/(2 beta))^2 (Azar et al. 2023, eq. 17); "
        "hinge: SLiC-HF's max(0, 1 - beta h) (Zhao et al. 2023); "
        "robust: rDPO, unbiased under labels flipped with probability label_smoothing (Chowdhury et al. 2024); "
        "exo_pair: EXO's KL from the policy's pair probabilities sigmoid(+-beta h) to the labels smoothed to "
        "(1 - label_smoothing, label_smoothing) (Ji et al. 2024, eq. 16; needs label_smoothing > 0, the paper's 1e-3); "
        "nca_pair: NCA, -log sigmoid(beta c) - (log sigmoid(-beta c) + log sigmoid(-beta r)) / 2, which holds the "
        "chosen reward near log 2 instead of letting both fall (Chen et al. 2024); "
        "bco_pair: BCO's binary classifier, -log sigmoid(beta c - delta) - log sigmoid(delta - beta r), delta the "
        "running mean reward of the pairs trained on so far (Jung et al. 2024); "
        "sppo_hard: SPPO with hard win probabilities, (c - 1/(2 beta))^2 + (r + 1/(2 beta))^2 (Wu et al. 2024, "
        "eq. 4.7); apo_zero: APO-zero, 1 - sigmoid(beta c) + sigmoid(beta r): chosen up and rejected down, each "
        "anchored at the reference (D'Oosterlinck et al. 2024, eq. 7, plus 1 to be >= 0); apo_down: APO-down, "
        "sigmoid(beta c) + 1 - sigmoid(beta h): both down, the rejected more, for chosen completions worse than "
        "the model's own (eq. 8).",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="Assumed probability that a pair's label is flipped: with sigmoid, conservative DPO "
        "(Mitchell 2023); with robust, rDPO's noise rate; with exo_pair, EXO's epsilon (> 0).",
    )
    logps_normalize: Literal["auto", "none", "tokens"] = Field(
        "auto",
        description="none: log-ratios of sequence log-probs, summed over completion tokens, as every paper writes "
        "its loss; tokens: each divided by its completion's token count (a log-ratio per token); auto: tokens for "
        "ipo, none for the rest. IPO's eq. 17 (Azar et al. 2023) is written with sequence log-likelihoods, but with "
        "sums its target margin 1/(2 beta) is the same for 5 tokens as for 500 and the squared loss grows with "
        "length; the IPO authors told TRL the log-likelihoods are to be averaged (huggingface.co/blog/pref-tuning; "
        "TRL PR #1265), as TRL and torchtune do. Rewards are logged as the loss sees them (per token when divided).",
    )

    @property
    def per_token(self) -> bool:
        """Whether log-ratios enter the loss per completion token (`logps_normalize`)."""
        return self.logps_normalize == "tokens" or (self.logps_normalize == "auto" and self.loss_type == "ipo")

    @model_validator(mode="after")
    def _smoothing_needs_a_noise_model(self) -> DPOConfig:
        if self.label_smoothing and self.loss_type not in SMOOTHED:
            raise ValueError(
                f"label_smoothing applies to loss_type {', '.join(SMOOTHED)} (got loss_type {self.loss_type} with "
                f"label_smoothing {self.label_smoothing}); set label_smoothing: 0 or change loss_type"
            )
        if self.loss_type == "exo_pair" and not self.label_smoothing:
            raise ValueError(
                "loss_type exo_pair needs label_smoothing > 0 (got 0): EXO's target labels are (1 - eps, eps) and "
                "its loss holds log eps; set label_smoothing: 1.0e-3 (the EXO paper's)"
            )
        return self


DPO_CARD = AlgorithmCard(
    name="dpo",
    Config=DPOConfig,
    module="alignkit.algorithms.dpo:DPO",
    description="DPO family on prompt/chosen/rejected pairs: chosen and rejected in one forward through the policy.",
    models=("policy", "reference"),
    records="preference",
    progress=("loss", "rewards/accuracies", "rewards/margins"),
)
