"""The reward section of an experiment config: reward sources (a union on `kind`) and their post-processing."""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal, Union

from pydantic import Field, StrictInt, field_validator, model_validator

from alignkit.config.base import Spec
from alignkit.models.spec import ModelSpec
from alignkit.registry import did_you_mean
from alignkit.rewards.rules import REWARDS

# A rule is called as fn(prompts, completions, **kwargs): its first two parameters are never YAML arguments.
RULE_POSITIONAL = 2


def rule_parameters(name: str) -> tuple[list[str], bool]:
    """(the keyword parameters of a registered rule, whether it also takes **kwargs)."""
    params = list(inspect.signature(REWARDS.get(name)).parameters.values())[RULE_POSITIONAL:]
    named = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


class RuleSourceSpec(Spec):
    """A registered rule reward (`alignkit list rewards`), a Python function of the prompt and response text."""

    kind: Literal["rule"] = "rule"
    name: str = Field(description="Registered rule reward, e.g. length_target, regex_match, keyword_count.")
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Constant keyword arguments of the rule. A parameter not set here is read per prompt from "
        "the prompt rows' column of that name when there is one (e.g. `answer`).",
    )

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in REWARDS:
            raise ValueError(REWARDS.unknown_message(name))
        return name

    @model_validator(mode="after")
    def _known_args(self) -> RuleSourceSpec:
        allowed, any_keyword = rule_parameters(self.name)
        if any_keyword:
            return self
        unknown = [a for a in self.args if a not in allowed]
        if unknown:
            raise ValueError(
                "\n".join(
                    f"args: unknown argument for rule '{self.name}' (got '{a}'); "
                    f"allowed: {', '.join(allowed) or 'none'}{did_you_mean(a, allowed)}"
                    for a in unknown
                )
            )
        return self


class ModelSourceSpec(Spec):
    """A frozen model's score: a one-output reward model, or one label of a sequence classifier (`label`)."""

    kind: Literal["model"] = "model"
    model: ModelSpec = Field(
        description="The reward model: usually `{path: runs/<name>/version_N/hf/reward_model}` (the Hugging "
        "Face export of a reward_model run); its score at the last real token is the reward. With `label`, a "
        "sequence-classifier checkpoint (e.g. lvwerra/distilbert-imdb) that keeps its own head and labels. It "
        "is frozen.",
    )
    label: str | StrictInt | None = Field(
        None,
        description="null: `model` is a one-output reward model. Otherwise `model` is a sequence classifier and "
        "the reward reads this one of its labels: a name from its config's id2label (e.g. POSITIVE) or an "
        "index from 0. The classifier reads the decoded text (see `text`) through its own tokenizer.",
    )
    output: Literal["logit", "probability", "log_probability"] = Field(
        "logit",
        description="What of the label is the reward. 'probability': softmax over the classifier's labels, or "
        "sigmoid of the label's logit when its config has problem_type multi_label_classification or one "
        "label (as transformers' text-classification pipeline does); 'log_probability': its log; 'logit': "
        "the label's raw logit, unbounded. With a label the default is 'probability', the reward of the DPO "
        "paper's sentiment task, p(positive | review) in [0, 1] (Rafailov et al. 2023, sec. 6.1); TRL's "
        "PPO sentiment example trains on the POSITIVE logit instead. Without a label only 'logit' applies: a "
        "reward model's score is its one logit.",
    )
    text: Literal["prompt_and_completion", "completion"] = Field(
        "prompt_and_completion",
        description="What a classifier (`label`) reads. 'prompt_and_completion': the prompt text followed by the "
        "response, the whole review that the DPO paper's IMDb task scored (its prompts are review prefixes); "
        "'completion': the response alone, e.g. when prompts are instructions whose own tone must not count. "
        "Texts longer than the classifier takes are cut from the left (with a warning), so that the end of the "
        "response is always read. Without a label a reward model reads prompt and response, as it was trained.",
    )

    @model_validator(mode="before")
    @classmethod
    def _probability_for_a_label(cls, data: Any) -> Any:
        # Written into the spec (not decided when building) so that the resolved config says what ran.
        if isinstance(data, dict) and data.get("label") is not None and "output" not in data:
            return {**data, "output": "probability"}
        return data

    @model_validator(mode="after")
    def _label_options(self) -> ModelSourceSpec:
        problems = []
        if self.label is None:
            if self.output != "logit":
                problems.append(
                    f"output: '{self.output}' reads a class of a sequence classifier, but `label` is not set "
                    "(got no label); set `label` (e.g. POSITIVE) to read one class, or remove `output`: a reward "
                    "model's score is its one logit"
                )
            if self.text != "prompt_and_completion":
                problems.append(
                    f"text: '{self.text}' applies to a classifier (`label`), but `label` is not set (got no "
                    "label); remove `text`: a reward model scores prompt and response, as it was trained"
                )
        else:
            if isinstance(self.label, int) and self.label < 0:
                problems.append(f"label: a class index counts from 0 (got {self.label}); allowed: 0, 1, ...")
            if isinstance(self.label, str) and not self.label.strip():
                problems.append(
                    f"label: an empty name (got {self.label!r}); write a name from the classifier's id2label "
                    "or an index"
                )
            if self.model.path is None:
                problems.append(
                    f"model.architecture: `label` reads a trained classifier's class, but an architecture "
                    f"(got '{self.model.architecture}') builds random weights with no trained labels; set "
                    "model.path to a sequence-classifier checkpoint"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self


class WeightedTermSpec(Spec):
    weight: float = Field(description="Multiplies this term's score.")
    source: RewardSourceSpec = Field(description="Any reward source (`kind`: rule, model, weighted_sum, llama2).")


class WeightedSumSourceSpec(Spec):
    """sum_i weight_i x score_i over any reward sources (e.g. a reward model plus a format rule)."""

    kind: Literal["weighted_sum"] = "weighted_sum"
    terms: list[WeightedTermSpec] = Field(description="The terms, each `{weight: W, source: {kind: ...}}`.")

    @field_validator("terms")
    @classmethod
    def _not_empty(cls, terms: list[WeightedTermSpec]) -> list[WeightedTermSpec]:
        if not terms:
            raise ValueError(
                "weighted_sum needs at least one term (got an empty list); write e.g. "
                "`terms: [{weight: 1.0, source: {kind: rule, name: length_target}}]`"
            )
        return terms


class Llama2SourceSpec(Spec):
    """Llama 2's safety/helpfulness selection (Touvron et al. 2023, sec. 3.2.3, eqs. 3-4).

    With s = sigmoid(safety score) and h = sigmoid(helpfulness score), R_c = s when the prompt is flagged
    unsafe or s < threshold, else h; the reward is logit(R_c), i.e. the raw score of the selected source.
    """

    kind: Literal["llama2"] = "llama2"
    safety: RewardSourceSpec = Field(description="Safety reward source (the paper's Safety RM).")
    helpfulness: RewardSourceSpec = Field(description="Helpfulness reward source (the paper's Helpfulness RM).")
    threshold: float = Field(
        0.15,
        gt=0,
        lt=1,
        description="Responses with sigmoid(safety score) below this are scored by safety even on prompts not "
        "flagged unsafe (Touvron et al. 2023 use 0.15: precision 0.89, recall 0.55 on their safety test set).",
    )
    unsafe_key: str | None = Field(
        "unsafe",
        description="Prompt-row column that flags a prompt as possibly unsafe (true/false); every prompt row "
        "must have it. null: select by the threshold alone.",
    )


RewardSourceSpec = Annotated[
    Union[RuleSourceSpec, ModelSourceSpec, WeightedSumSourceSpec, Llama2SourceSpec],  # noqa: UP007
    Field(discriminator="kind"),
]
WeightedTermSpec.model_rebuild()
Llama2SourceSpec.model_rebuild()


class RewardSpec(Spec):
    """The `reward:` section: one reward source, then the post-processing of its scores, in field order."""

    source: RewardSourceSpec = Field(
        description="Where rewards come from, chosen by `kind`: rule (a registered function), model (a frozen "
        "reward model), weighted_sum (of other sources), llama2 (safety/helpfulness selection)."
    )
    eos_penalty: float | None = Field(
        None,
        description="Added to the reward of responses that did not end with EOS (cut at the length limit), "
        "before normalising; e.g. -1.0. Ziegler et al. 2019 (for a missing truncation token) and Huang et al. "
        "2024 ('The N+ Implementation Details of RLHF with PPO') replace such scores by -1 instead; null = off.",
    )
    normalize: Literal["none", "batch", "running"] = Field(
        "none",
        description="'batch': whiten, (r - mean) / std over the rollout batch (all processes); 'running': "
        "subtract the mean and divide by the std of every training reward so far, this batch included "
        "(Welford; saved for resume; evaluation applies it without adding to it). "
        "Default 'none', but 'batch' for a llama2 source: Touvron et al. 2023 (sec. 3.2.3) whiten its scores "
        "to balance them against the KL penalty.",
    )
    clip: float | None = Field(None, gt=0, description="Clip rewards to [-clip, clip] after normalising; null = off.")

    @model_validator(mode="before")
    @classmethod
    def _llama2_whitens(cls, data: Any) -> Any:
        # Written into the spec (not decided when building) so that the resolved config says what ran.
        if isinstance(data, dict) and "normalize" not in data:
            source = data.get("source")
            kind = source.get("kind") if isinstance(source, dict) else getattr(source, "kind", None)
            if kind == "llama2":
                return {**data, "normalize": "batch"}
        return data
