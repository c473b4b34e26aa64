"""Reward sources as modules (rule, reward model, classifier label, weighted sum, Llama 2) and the builder from specs.

Each source maps `RewardInputs` to `(scores [B] float32, metrics)`; metric names are relative (no `reward/`
prefix), and a source holding others prefixes theirs, so nested sources stay apart in TensorBoard.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, BatchEncoding, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

from alignkit.data.tokenization import encode
from alignkit.models.build import build_classifier, build_scalar_model, load_tokenizer
from alignkit.models.values import sequence_scores
from alignkit.rewards.rules import REWARDS, RuleReward
from alignkit.rewards.spec import (
    RULE_POSITIONAL,
    Llama2SourceSpec,
    ModelSourceSpec,
    RuleSourceSpec,
    WeightedSumSourceSpec,
)
from alignkit.rollout.rollout import Rollout, decode_prompts, decode_responses

Metrics = dict[str, Tensor]

log = logging.getLogger(__name__)


@dataclass
class RewardInputs:
    """One batch of B prompt/response pairs, as text and as the policy's token ids.

    sequences, attention_mask: [B, T] prompt + response in the policy's tokenizer (left-padded prompt, then
    the response right-padded); the EOS that ended a response is a real token (mask 1). responses are the
    decoded text without EOS and padding. finished: [B] bool, the response ended with EOS. metadata: the
    prompt rows' other columns (e.g. `unsafe`, `answer`), one dict per row.
    """

    prompts: list[str]
    responses: list[str]
    sequences: Tensor
    attention_mask: Tensor
    finished: Tensor
    metadata: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.metadata:
            self.metadata = [{} for _ in self.prompts]
        sizes = {
            "prompts": len(self.prompts),
            "responses": len(self.responses),
            "sequences": self.sequences.shape[0],
            "attention_mask": self.attention_mask.shape[0],
            "finished": self.finished.shape[0],
            "metadata": len(self.metadata),
        }
        if len(set(sizes.values())) != 1:
            raise ValueError(f"RewardInputs: every field needs one entry per row (got {sizes})")

    @classmethod
    def from_rollout(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        rollout: Rollout,
        metadata: list[dict[str, Any]] | None = None,
        num_samples: int = 1,
    ) -> RewardInputs:
        """The inputs of a rollout's rows, with each prompt row's `metadata` repeated for its `num_samples`."""
        return cls(
            prompts=decode_prompts(tokenizer, rollout),
            responses=decode_responses(tokenizer, rollout),
            sequences=rollout.sequences,
            attention_mask=rollout.attention_mask,
            finished=rollout.finished,
            metadata=[row for row in metadata or [] for _ in range(num_samples)],
        )

    @property
    def device(self) -> torch.device:
        return self.sequences.device

    def __len__(self) -> int:
        return len(self.prompts)


def _as_scores(values: Any, inputs: RewardInputs, what: str) -> Tensor:
    scores = torch.as_tensor(values, dtype=torch.float32, device=inputs.device).reshape(-1)
    if scores.shape[0] != len(inputs):
        raise ValueError(f"{what} returned {scores.shape[0]} rewards for {len(inputs)} responses; return one each")
    return scores


class RuleSource(nn.Module):
    """A rule reward `fn(prompts, completions, **args)`; parameters not in `args` may come from metadata."""

    def __init__(self, fn: RuleReward, args: dict[str, Any] | None = None, name: str | None = None) -> None:
        super().__init__()
        self.fn, self.args = fn, dict(args or {})
        self.name = name or getattr(fn, "__name__", "rule")
        params = list(inspect.signature(fn).parameters.values())[RULE_POSITIONAL:]
        self.any_keyword = any(p.kind is p.VAR_KEYWORD for p in params)
        named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in self.args]
        self.from_metadata = [p.name for p in named]
        self.required = [p.name for p in named if p.default is p.empty]

    def metadata_kwargs(self, metadata: list[dict[str, Any]]) -> dict[str, list[Any]]:
        """One list per parameter the rows provide: the column of that name (every column for **kwargs)."""
        columns = set.intersection(*(set(row) for row in metadata)) if metadata else set()
        wanted = columns - set(self.args) if self.any_keyword else columns & set(self.from_metadata)
        partial = {k for row in metadata for k in row if k in self.from_metadata} - columns
        missing = [p for p in self.required if p not in columns]
        if partial or missing:
            raise ValueError(
                f"rule '{self.name}' reads {', '.join(sorted(partial | set(missing)))} from the prompt rows, but "
                f"not every row has that column; add it to the prompt data or set it in the rule's args"
            )
        return {k: [row[k] for row in metadata] for k in sorted(wanted)}

    def forward(self, inputs: RewardInputs) -> tuple[Tensor, Metrics]:
        values = self.fn(inputs.prompts, inputs.responses, **self.args, **self.metadata_kwargs(inputs.metadata))
        return _as_scores(values, inputs, f"rule '{self.name}'"), {}


def same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether token ids mean the same in both: same vocabulary (token -> id) and the same pad and EOS ids."""
    if len(a) != len(b) or (a.pad_token_id, a.eos_token_id) != (b.pad_token_id, b.eos_token_id):
        return False
    return a.get_vocab() == b.get_vocab()


class ModelSource(nn.Module):
    """A frozen scalar-head reward model: its score at the last real token of prompt + response.

    With the policy's tokenizer (`reuse_ids`) the policy's token ids are scored as they are: exact, nothing
    re-tokenized. Otherwise the text is tokenized with the reward model's own tokenizer the way the data
    layer tokenizes training pairs (BOS + prompt, the response as a separate piece, EOS when the response
    finished), right-padded, and cut from the left to the model's longest position when longer.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, reuse_ids: bool) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.tokenizer, self.reuse_ids = tokenizer, reuse_ids

    def tokenize(self, inputs: RewardInputs) -> tuple[Tensor, Tensor]:
        """[B, L] ids and mask of the texts in the reward model's tokenizer, right-padded."""
        tok, limit = self.tokenizer, getattr(self.model.config, "max_position_embeddings", None)
        rows = []
        for prompt, response, finished in zip(inputs.prompts, inputs.responses, inputs.finished.tolist(), strict=True):
            ids = encode(tok, prompt) + encode(tok, response, first=False) + ([tok.eos_token_id] if finished else [])
            rows.append(ids[-limit:] if limit else ids)
        width = max((len(r) for r in rows), default=1)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        return ids.to(inputs.device), mask.to(inputs.device)

    @torch.no_grad()
    def forward(self, inputs: RewardInputs) -> tuple[Tensor, Metrics]:
        if self.reuse_ids:
            ids, mask = inputs.sequences, inputs.attention_mask
        else:
            ids, mask = self.tokenize(inputs)
        # a prompt's samples sit next to each other: they may share its tokens (trainer.shared_prompts)
        prompts = inputs.prompts
        groups = torch.tensor([0] + [int(a != b) for a, b in zip(prompts[1:], prompts[:-1], strict=True)]).cumsum(0)
        return sequence_scores(self.model, ids, mask, groups.to(ids.device)).float(), {}


def _probability(logits: Tensor, independent: bool) -> Tensor:
    return logits.sigmoid() if independent else logits.softmax(-1)


def _log_probability(logits: Tensor, independent: bool) -> Tensor:
    # log_softmax / logsigmoid rather than log(probability): a confident classifier's probabilities round to 0
    return torch.nn.functional.logsigmoid(logits) if independent else logits.log_softmax(-1)


CLASS_OUTPUTS: dict[str, Callable[[Tensor, bool], Tensor]] = {
    "logit": lambda logits, independent: logits,
    "probability": _probability,
    "log_probability": _log_probability,
}


def class_scores(logits: Tensor, index: int, output: str, independent: bool) -> Tensor:
    """[B] float32: class `index` of a classifier's logits [B, num_labels], as `output` (logit, probability, ...).

    independent: each label is its own yes/no (sigmoid), not one of exclusive classes (softmax); see
    `independent_labels`.
    """
    return CLASS_OUTPUTS[output](logits.float(), independent)[:, index]


def independent_labels(config: PretrainedConfig) -> bool:
    """Whether a classifier's labels are separate yes/no outputs: transformers' text-classification pipeline
    applies sigmoid to multi-label classifiers and to one-label heads, softmax to the others."""
    return config.problem_type == "multi_label_classification" or config.num_labels == 1


def label_names(config: PretrainedConfig) -> list[str]:
    """The classifier's label names by index, from its id2label."""
    id2label = config.id2label or {}
    return [str(id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]


def label_index(config: PretrainedConfig, label: str | int, where: str, checkpoint: str) -> int:
    """The index of `label` (a name in the checkpoint's id2label, or an index) in the classifier's logits.

    `where` is the YAML path of the label (`reward.source.label`), named in the errors.
    """
    names = label_names(config)
    listed = ", ".join(f"{name} ({i})" for i, name in enumerate(names))
    if isinstance(label, int):
        if 0 <= label < len(names):
            return label
        raise ValueError(
            f"{where}: index out of range for the classifier at {checkpoint}, which has {len(names)} labels "
            f"(got {label}); allowed: {listed}"
        )
    if label in names:
        return names.index(label)
    # compared in lower case, so that `positive` finds POSITIVE; named as the checkpoint spells it
    lower = {name.lower(): name for name in names}
    close = difflib.get_close_matches(label.lower(), list(lower), n=1, cutoff=0.6)
    hint = f"; did you mean '{lower[close[0]]}'?" if close else ""
    unnamed = ""
    if names == [f"LABEL_{i}" for i in range(len(names))]:
        unnamed = (
            "; its config.id2label names no classes (only transformers' defaults LABEL_i), so give the index "
            "of the class, as the classifier's model card or training data defines it"
        )
    raise ValueError(
        f"{where}: not a label of the classifier at {checkpoint} (got '{label}'); allowed: {listed}, or an "
        f"index 0-{len(names) - 1}{hint}{unnamed}"
    )


def classifier_max_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The most tokens the classifier reads: its tokenizer's model_max_length or its position table, the smaller.

    The tokenizer's limit comes first where both are set: RoBERTa's table has 514 rows for 512 tokens (its
    positions start after the pad id).
    """
    limits = [tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None)]
    known = [n for n in limits if n is not None and n < VERY_LARGE_INTEGER]
    return min(known) if known else None


CLASSIFIER_TEXTS: dict[str, Callable[[str, str], str]] = {
    "prompt_and_completion": lambda prompt, response: prompt + response,
    "completion": lambda prompt, response: response,
}


class ClassifierSource(nn.Module):
    """One label of a frozen sequence classifier (e.g. a sentiment model), read from the decoded text.

    The text is tokenized as one string by the classifier's own tokenizer, its special tokens included
    (e.g. `[CLS] text [SEP]`), as the classifier saw its training texts and as transformers' pipeline feeds it;
    the policy's ids are never reused, even where the vocabularies agree. Texts longer than the classifier
    takes are cut from the left, so that the end of the response, what the policy wrote last, is always read.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        index: int,
        output: str,
        text: str,
    ) -> None:
        super().__init__()
        if output not in CLASS_OUTPUTS:
            raise ValueError(f"output: unknown (got '{output}'); allowed: {', '.join(CLASS_OUTPUTS)}")
        if text not in CLASSIFIER_TEXTS:
            raise ValueError(f"text: unknown (got '{text}'); allowed: {', '.join(CLASSIFIER_TEXTS)}")
        self.model = model.requires_grad_(False).eval()
        self.tokenizer, self.index, self.output, self.text = tokenizer, index, output, text
        self.tokenizer.truncation_side = "left"  # the source's own tokenizer: the builder loads one for it
        self.max_length = classifier_max_length(model, tokenizer)
        self.independent = independent_labels(model.config)
        self.warned = False

    def texts(self, inputs: RewardInputs) -> list[str]:
        join = CLASSIFIER_TEXTS[self.text]
        return [join(p, r) for p, r in zip(inputs.prompts, inputs.responses, strict=True)]

    def tokenize(self, texts: list[str]) -> BatchEncoding:
        """The texts in the classifier's tokenizer, right-padded; those too long are cut from the left."""
        tok, limit = self.tokenizer, self.max_length
        encoded = tok(texts, verbose=False)
        too_long = sum(len(ids) > limit for ids in encoded["input_ids"]) if limit else 0
        if too_long:
            if not self.warned:
                log.warning(
                    "classifier reward: %d of %d texts are longer than the %d tokens the classifier reads; their "
                    "start is cut so that the response's end is read (warned once per reward source)",
                    too_long,
                    len(texts),
                    limit,
                )
                self.warned = True
            encoded = tok(texts, truncation=True, max_length=limit)
        return tok.pad(encoded, padding_side="right", return_tensors="pt")

    @torch.no_grad()
    def forward(self, inputs: RewardInputs) -> tuple[Tensor, Metrics]:
        batch = self.tokenize(self.texts(inputs)).to(inputs.device)
        logits = self.model(**batch).logits
        return class_scores(logits, self.index, self.output, self.independent), {}


class WeightedSumSource(nn.Module):
    """sum_i w_i x score_i; metrics `<i>_<kind>` hold each term's own (unweighted) mean."""

    def __init__(self, weights: list[float], sources: list[nn.Module], kinds: list[str]) -> None:
        super().__init__()
        self.weights, self.sources = list(weights), nn.ModuleList(sources)
        self.names = [f"{i}_{k}" for i, k in enumerate(kinds)]

    def forward(self, inputs: RewardInputs) -> tuple[Tensor, Metrics]:
        total = torch.zeros(len(inputs), dtype=torch.float32, device=inputs.device)
        metrics: Metrics = {}
        for weight, source, name in zip(self.weights, self.sources, self.names, strict=True):
            scores, inner = source(inputs)
            total = total + weight * scores
            metrics[name] = scores.mean()
            metrics.update({f"{name}/{k}": v for k, v in inner.items()})
        return total, metrics


def _flag(value: Any) -> bool:
    """A prompt row's unsafe flag: true/false, 1/0, or their spellings as text; missing values are false."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(value)


def llama2_select(safety: Tensor, helpfulness: Tensor, unsafe: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """(logit(R_c), use_safety) of Touvron et al. 2023, eq. 4; all [B].

    R_c = sigmoid(safety) where the prompt is unsafe or sigmoid(safety) < threshold, else sigmoid(helpfulness).
    logit(sigmoid(x)) = x, so the selected raw score is returned without the round trip: in float32 sigmoid
    rounds to 1 from x ~ 17 on, where logit would give inf, and no clamp is needed to avoid it.
    """
    use_safety = unsafe | (torch.sigmoid(safety) < threshold)
    return torch.where(use_safety, safety, helpfulness).float(), use_safety


class Llama2Source(nn.Module):
    """Llama 2's reward: the safety score on unsafe prompts or unsafe-looking responses, else helpfulness."""

    def __init__(self, safety: nn.Module, helpfulness: nn.Module, threshold: float, unsafe_key: str | None) -> None:
        super().__init__()
        self.safety, self.helpfulness = safety, helpfulness
        self.threshold, self.unsafe_key = threshold, unsafe_key

    def unsafe(self, inputs: RewardInputs) -> Tensor:
        key = self.unsafe_key
        if key is None:
            return torch.zeros(len(inputs), dtype=torch.bool, device=inputs.device)
        missing = [i for i, row in enumerate(inputs.metadata) if key not in row]
        if missing:
            raise ValueError(
                f"llama2 reward: prompt row {missing[0]} has no '{key}' column (the flag of possibly unsafe "
                f"prompts; {len(missing)} of {len(inputs)} rows lack it); add it to the prompt data, or set "
                "unsafe_key: null to select by the threshold alone"
            )
        return torch.tensor([_flag(row[key]) for row in inputs.metadata], dtype=torch.bool, device=inputs.device)

    def forward(self, inputs: RewardInputs) -> tuple[Tensor, Metrics]:
        (safety, s_metrics), (helpfulness, h_metrics) = self.safety(inputs), self.helpfulness(inputs)
        reward, use_safety = llama2_select(safety, helpfulness, self.unsafe(inputs), self.threshold)
        metrics = {
            "safety": safety.mean(),
            "helpfulness": helpfulness.mean(),
            "safety_share": use_safety.float().mean(),
        }
        metrics.update({f"safety/{k}": v for k, v in s_metrics.items()})
        metrics.update({f"helpfulness/{k}": v for k, v in h_metrics.items()})
        return reward, metrics


# -- building from specs -----------------------------------------------------------------------------------
# Each builder gets the YAML path of its spec (`reward.source`, `reward.source.terms[0].source`, ...), which the
# errors found only once a checkpoint is read (a label it lacks) name, as the schema's errors do.
def _rule(spec: RuleSourceSpec, tokenizer: PreTrainedTokenizerBase, where: str) -> nn.Module:
    return RuleSource(REWARDS.get(spec.name), spec.args, spec.name)


def _model(spec: ModelSourceSpec, tokenizer: PreTrainedTokenizerBase, where: str) -> nn.Module:
    own = load_tokenizer(spec.model)
    if spec.label is None:
        return ModelSource(build_scalar_model(spec.model, own), own, reuse_ids=same_tokenizer(own, tokenizer))
    # the checkpoint's config is checked before its weights load: a wrong label fails in a second
    config = AutoConfig.from_pretrained(spec.model.path)
    classifier_problems(config, spec, where)
    index = label_index(config, spec.label, f"{where}.label", spec.model.path)
    return ClassifierSource(build_classifier(spec.model, own), own, index, spec.output, spec.text)


def classifier_problems(config: PretrainedConfig, spec: ModelSourceSpec, where: str) -> None:
    """Raise when the checkpoint is no classifier whose classes `spec.output` can read."""
    architectures = config.architectures or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ValueError(
            f"{where}.model.path: `label` reads a trained classification head, but the checkpoint at "
            f"{spec.model.path} is a {', '.join(architectures)} (from_pretrained would add a random head); point "
            "it at a sequence classifier (config.architectures ending in ForSequenceClassification)"
        )
    if config.problem_type == "regression" and spec.output != "logit":
        raise ValueError(
            f"{where}.output: the classifier at {spec.model.path} is a regression head (config problem_type "
            f"regression), whose outputs are no class scores (got '{spec.output}'); allowed: logit"
        )


def _weighted_sum(spec: WeightedSumSourceSpec, tokenizer: PreTrainedTokenizerBase, where: str) -> nn.Module:
    sources = [build_source(t.source, tokenizer, f"{where}.terms[{i}].source") for i, t in enumerate(spec.terms)]
    return WeightedSumSource([t.weight for t in spec.terms], sources, [t.source.kind for t in spec.terms])


def _llama2(spec: Llama2SourceSpec, tokenizer: PreTrainedTokenizerBase, where: str) -> nn.Module:
    safety = build_source(spec.safety, tokenizer, f"{where}.safety")
    helpfulness = build_source(spec.helpfulness, tokenizer, f"{where}.helpfulness")
    return Llama2Source(safety, helpfulness, spec.threshold, spec.unsafe_key)


BUILDERS: dict[str, Callable[[Any, PreTrainedTokenizerBase, str], nn.Module]] = {
    "rule": _rule,
    "model": _model,
    "weighted_sum": _weighted_sum,
    "llama2": _llama2,
}


def build_source(spec: Any, tokenizer: PreTrainedTokenizerBase, where: str = "source") -> nn.Module:
    """The module of one reward source spec; `tokenizer` is the policy's (the ids RewardInputs carry).

    `where`: the spec's YAML path, for errors found only when a checkpoint is read (e.g. `reward.source`).
    """
    return BUILDERS[spec.kind](spec, tokenizer, where)
