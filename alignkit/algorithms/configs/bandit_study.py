"""The bandit study's options and card."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from alignkit.algorithms.configs.base import AlgorithmCard, AlgorithmConfig
from alignkit.bandits.spec import Budget, LinearBanditSpec, Method, NeuralBanditSpec


class BanditStudyConfig(AlgorithmConfig):
    name: Literal["bandit_study"] = "bandit_study"
    env: Annotated[LinearBanditSpec | NeuralBanditSpec, Field(discriminator="kind")] = Field(
        description="The bandit: {kind: linear, ...} or {kind: neural, ...} (sizes, features, evaluation)."
    )
    methods: list[Method] = Field(["dpo", "rmb_po", "rmb_po_plus"], min_length=1, description="Methods to compare.")
    n: list[Annotated[int, Field(ge=2)]] = Field(
        [20], min_length=1, description="Preference-data sizes (pairs); each one setting."
    )
    m_ratio: list[Annotated[float, Field(ge=0)]] = Field(
        [0.5], min_length=1, description="RMB-PO+'s preference-free states per pair, m/n (0 = RMB-PO itself)."
    )
    seeds: list[int] = Field(
        list(range(2021, 2031)), min_length=1, description="Seeds, run together as one batch (released: 2021-2030)."
    )
    beta: float = Field(0.01, gt=0, description="KL coefficient (released script: 0.01).")
    budgets: list[Budget] = Field(
        ["released"],
        min_length=1,
        description="Optimisation budgets: 'released' (the authors' optimisers and iteration counts), 'converged' "
        "(L-BFGS to a tiny gradient, continued in beta), or an optimiser such as {name: adagrad_norm, iterations: "
        "20000} or {name: adam, lr: 0.01, epochs: 5000, batch_size: null}.",
    )
    log_every: int = Field(
        25, ge=1, description="Evaluate on the true reward and log the curves every N optimiser iterations."
    )


BANDIT_STUDY_CARD = AlgorithmCard(
    name="bandit_study",
    Config=BanditStudyConfig,
    module="alignkit.algorithms.bandit_study:BanditStudy",
    description="DPO vs RMB-PO vs RMB-PO+ on a linear or neural bandit: settings x seeds, tables and figures.",
    models=(),
    required_models=(),
    trained=(),
    records=None,
    progress=(),  # its own tables, printed per setting (alignkit/bandits/study.py)
)
