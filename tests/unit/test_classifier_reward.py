"""Classifier-label rewards: one class of a sequence classifier (a sentiment model, say), read from the text."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pydantic import ValidationError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedTokenizerFast

from alignkit.config.errors import problems_from_validation
from alignkit.models import ModelSpec, build_causal_lm, byte_tokenizer, save_hf
from alignkit.models.build import load_tokenizer
from alignkit.rewards import RewardFunction, RewardInputs, RewardSpec, build_reward
from alignkit.rewards.sources import ClassifierSource, class_scores, classifier_max_length

LABELS = {0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"}
# Tiny versions of the classifiers people use for this: lvwerra/distilbert-imdb (TRL's sentiment examples), a
# BERT, and a decoder classifier (reads the last real token where the encoders read [CLS]).
SIZES = {
    "bert": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    "distilbert": {"dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64},
    "llama": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
}
POSITIONS = 64
PROMPTS = ["The film was", "I"]
RESPONSES = [" great fun, a joy.", " did not like it at all"]


def classifier_tokenizer() -> PreTrainedTokenizerFast:
    """BERT's layout over bytes: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3, then one token per byte; `[CLS] text [SEP]`.

    No EOS and no BOS, and ids that mean something else than the policy's byte tokenizer (<pad>=0 <s>=1 </s>=2).
    """
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def save_classifier(directory: Path, arch: str = "bert", labels: dict[int, str] | None = LABELS, **extra: Any) -> str:
    """A 3-label classifier with random weights (seed 0) and its own tokenizer, saved as a checkpoint."""
    tokenizer = classifier_tokenizer()
    names = {"id2label": labels, "label2id": {v: k for k, v in labels.items()}} if labels else {"num_labels": 3}
    config = AutoConfig.for_model(
        arch,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=POSITIONS,
        # transformers' 0.02 leaves a one-layer encoder's logits the same to 1e-4 for every text; at 0.3 they
        # differ by units, so that each test below tells texts (and their cut) apart
        initializer_range=0.3,
        **SIZES[arch],
        **names,
        **extra,
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    return str(save_hf(model, tokenizer, directory))


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("classifiers")
    return {arch: save_classifier(root / arch, arch) for arch in SIZES}


def policy_inputs(prompts: list[str] = PROMPTS, responses: list[str] = RESPONSES) -> RewardInputs:
    """The batch as a rollout gives it: the policy's (byte tokenizer) ids, right-padded, and the decoded text."""
    tok = byte_tokenizer()
    rows = [tok(p + r)["input_ids"] for p, r in zip(prompts, responses, strict=True)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return RewardInputs(prompts, responses, ids, mask, torch.ones(len(rows), dtype=torch.bool))


def reward_fn(path: str, **source: Any) -> RewardFunction:
    spec = RewardSpec.model_validate({"source": {"kind": "model", "model": {"path": path}, **source}})
    return build_reward(spec, byte_tokenizer())


def own_logits(path: str, texts: list[str]) -> torch.Tensor:
    """[B, 3]: the checkpoint's logits on each text alone (no padding), through its own tokenizer."""
    tokenizer = load_tokenizer(ModelSpec(path=path))
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts])


WHOLE = [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)]


# -- the numbers ------------------------------------------------------------------------------------------
def test_class_scores_by_hand() -> None:
    """logits [1, 2, 3] and [0, 0, 0], class 2.

    softmax: e^3 / (e + e^2 + e^3) = 20.085537 / 30.192881 = 0.665241; 1/3. log: 3 - 3.407606 = -0.407606;
    log(1/3) = -1.098612. Independent labels: sigmoid(3) = 0.952574, sigmoid(0) = 0.5; logs -0.048587,
    -0.693147. logit: 3, 0 either way.
    """
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    expected = {
        ("probability", False): [0.665241, 1 / 3],
        ("log_probability", False): [-0.407606, -1.098612],
        ("probability", True): [0.952574, 0.5],
        ("log_probability", True): [-0.048587, -0.693147],
        ("logit", False): [3.0, 0.0],
        ("logit", True): [3.0, 0.0],
    }
    for (output, independent), want in expected.items():
        got = class_scores(logits, 2, output, independent)
        torch.testing.assert_close(got, torch.tensor(want), atol=1e-6, rtol=0)
        assert got.dtype == torch.float32


@pytest.mark.parametrize("arch", list(SIZES))
def test_logit_is_the_classifiers_own(classifiers: dict[str, str], arch: str) -> None:
    """Padded into one batch, each row gets the logit the classifier gives its text alone."""
    rewards, metrics = reward_fn(classifiers[arch], label="POSITIVE", output="logit")(policy_inputs())
    torch.testing.assert_close(rewards, own_logits(classifiers[arch], WHOLE)[:, 2], atol=1e-5, rtol=1e-5)
    assert rewards.dtype == torch.float32 and metrics["reward/mean"].item() == pytest.approx(rewards.mean().item())


def test_probability_is_softmax_over_the_labels(classifiers: dict[str, str]) -> None:
    logits = own_logits(classifiers["distilbert"], WHOLE)
    for output, expected in [("probability", logits.softmax(-1)), ("log_probability", logits.log_softmax(-1))]:
        rewards, _ = reward_fn(classifiers["distilbert"], label="NEGATIVE", output=output)(policy_inputs())
        torch.testing.assert_close(rewards, expected[:, 0], atol=1e-5, rtol=1e-5)


def test_probability_matches_the_text_classification_pipeline(classifiers: dict[str, str]) -> None:
    """What transformers' own pipeline reports for the label, on the whole review."""
    from transformers import pipeline

    path = classifiers["bert"]
    pipe = pipeline("text-classification", model=path, tokenizer=path, top_k=None, device="cpu")
    expected = [next(s["score"] for s in row if s["label"] == "POSITIVE") for row in pipe(WHOLE)]
    rewards, _ = reward_fn(path, label="POSITIVE")(policy_inputs())
    torch.testing.assert_close(rewards, torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_label_by_name_and_by_index_agree(classifiers: dict[str, str]) -> None:
    path = classifiers["bert"]
    for output in ("logit", "probability", "log_probability"):
        by_name, _ = reward_fn(path, label="NEUTRAL", output=output)(policy_inputs())
        by_index, _ = reward_fn(path, label=1, output=output)(policy_inputs())
        assert torch.equal(by_name, by_index)


def test_multi_label_classifier_reads_a_sigmoid(tmp_path: Path) -> None:
    """problem_type multi_label_classification: each label is its own yes/no, so sigmoid, not softmax."""
    path = save_classifier(tmp_path / "multi", problem_type="multi_label_classification")
    logits = own_logits(path, WHOLE)
    rewards, _ = reward_fn(path, label="POSITIVE")(policy_inputs())
    torch.testing.assert_close(rewards, logits[:, 2].sigmoid(), atol=1e-5, rtol=1e-5)


# -- what the classifier reads ----------------------------------------------------------------------------
def test_reads_the_text_through_its_own_tokenizer(classifiers: dict[str, str]) -> None:
    """[CLS] text [SEP] in the classifier's ids, not the policy's (<s> text, other ids for the same bytes)."""
    fn = reward_fn(classifiers["bert"], label="POSITIVE")
    source = fn.source
    assert isinstance(source, ClassifierSource)
    inputs = policy_inputs()
    batch = source.tokenize(source.texts(inputs))
    own = classifier_tokenizer()
    for row, mask, text, policy_row in zip(
        batch["input_ids"], batch["attention_mask"], WHOLE, inputs.sequences, strict=True
    ):
        ids = row[mask.bool()].tolist()
        assert ids == own(text)["input_ids"] and ids[0] == own.cls_token_id and ids[-1] == own.sep_token_id
        assert ids[1:-1] != policy_row[1 : len(ids) - 1].tolist()  # the same bytes, other ids


def test_completion_alone(classifiers: dict[str, str]) -> None:
    """`text: completion` leaves the prompt out: a negative prefix does not count against the response."""
    rewards, _ = reward_fn(classifiers["bert"], label="POSITIVE", output="logit", text="completion")(policy_inputs())
    torch.testing.assert_close(rewards, own_logits(classifiers["bert"], RESPONSES)[:, 2], atol=1e-5, rtol=1e-5)


def test_long_texts_are_cut_from_the_left_with_one_warning(
    classifiers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """64 positions: a 115-byte review keeps [CLS], its last 62 bytes and [SEP]; the short one is untouched."""
    path = classifiers["bert"]
    fn = reward_fn(path, label="POSITIVE", output="logit")
    long = " and then" * 10 + " it was great"
    inputs = policy_inputs(PROMPTS, [long, RESPONSES[1]])
    with caplog.at_level(logging.WARNING, logger="alignkit.rewards.sources"):
        rewards, _ = fn(inputs)
        fn(inputs)
    warnings = [r.getMessage() for r in caplog.records if "classifier reward" in r.getMessage()]
    assert warnings == [
        "classifier reward: 1 of 2 texts are longer than the 64 tokens the classifier reads; their start is cut "
        "so that the response's end is read (warned once per reward source)"
    ]
    whole = PROMPTS[0] + long
    assert len(whole.encode()) == 115  # "The film was" 12 + 10 x 9 + 13
    tokenizer = classifier_tokenizer()
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    cut = torch.tensor([[tokenizer.cls_token_id, *tokenizer(whole[-62:], add_special_tokens=False)["input_ids"], 3]])
    with torch.no_grad():
        expected = model(input_ids=cut).logits[0, 2]
    torch.testing.assert_close(rewards[0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rewards[1], own_logits(path, [PROMPTS[1] + RESPONSES[1]])[0, 2], atol=1e-5, rtol=1e-5)


def test_max_length_is_the_smaller_of_tokenizer_and_positions(classifiers: dict[str, str]) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(classifiers["bert"])
    tokenizer = classifier_tokenizer()
    assert classifier_max_length(model, tokenizer) == POSITIONS  # the tokenizer sets no limit
    tokenizer.model_max_length = 16
    assert classifier_max_length(model, tokenizer) == 16


# -- errors -----------------------------------------------------------------------------------------------
def test_unknown_label_lists_the_labels(classifiers: dict[str, str]) -> None:
    path = classifiers["bert"]
    with pytest.raises(ValueError) as err:
        reward_fn(path, label="positive")
    assert str(err.value) == (
        f"reward.source.label: not a label of the classifier at {path} (got 'positive'); allowed: NEGATIVE (0), "
        "NEUTRAL (1), POSITIVE (2), or an index 0-2; did you mean 'POSITIVE'?"
    )
    nested = {
        "kind": "weighted_sum",
        "terms": [
            {"weight": 1.0, "source": {"kind": "rule", "name": "length_target"}},
            {"weight": 1.0, "source": {"kind": "model", "model": {"path": path}, "label": "JOY"}},
        ],
    }
    with pytest.raises(ValueError, match=r"^reward\.source\.terms\[1\]\.source\.label: not a label .* \(got 'JOY'\)"):
        build_reward(RewardSpec.model_validate({"source": nested}), byte_tokenizer())


def test_index_out_of_range(classifiers: dict[str, str]) -> None:
    path = classifiers["bert"]
    with pytest.raises(ValueError) as err:
        reward_fn(path, label=3)
    assert str(err.value) == (
        f"reward.source.label: index out of range for the classifier at {path}, which has 3 labels (got 3); "
        "allowed: NEGATIVE (0), NEUTRAL (1), POSITIVE (2)"
    )


def test_classifier_without_label_names(tmp_path: Path) -> None:
    """A config with transformers' default names (LABEL_i): a name fails and says to use the index."""
    path = save_classifier(tmp_path / "unnamed", labels=None)
    with pytest.raises(ValueError) as err:
        reward_fn(path, label="POSITIVE")
    assert str(err.value) == (
        f"reward.source.label: not a label of the classifier at {path} (got 'POSITIVE'); allowed: LABEL_0 (0), "
        "LABEL_1 (1), LABEL_2 (2), or an index 0-2; its config.id2label names no classes (only transformers' "
        "defaults LABEL_i), so give the index of the class, as the classifier's model card or training data "
        "defines it"
    )
    by_index, _ = reward_fn(path, label=2, output="logit")(policy_inputs())
    by_default_name, _ = reward_fn(path, label="LABEL_2", output="logit")(policy_inputs())
    assert torch.equal(by_index, by_default_name)


def test_a_causal_lm_is_no_classifier(tmp_path: Path) -> None:
    """from_pretrained would put a random head on it: an error, not a reward of noise."""
    tokenizer = byte_tokenizer()
    spec = ModelSpec(architecture="llama", hidden_size=32, num_layers=1, num_heads=2)
    path = str(save_hf(build_causal_lm(spec, tokenizer), tokenizer, tmp_path / "lm"))
    with pytest.raises(ValueError) as err:
        reward_fn(path, label=0)
    assert str(err.value) == (
        f"reward.source.model.path: `label` reads a trained classification head, but the checkpoint at {path} is a "
        "LlamaForCausalLM (from_pretrained would add a random head); point it at a sequence classifier "
        "(config.architectures ending in ForSequenceClassification)"
    )


def test_a_regression_head_has_only_logits(tmp_path: Path) -> None:
    path = save_classifier(tmp_path / "regression", problem_type="regression")
    with pytest.raises(ValueError, match=r"^reward\.source\.output: the classifier at .* is a regression head"):
        reward_fn(path, label="POSITIVE")
    assert reward_fn(path, label="POSITIVE", output="logit")(policy_inputs())[0].shape == (2,)


def test_schema_checks_what_the_config_alone_shows() -> None:
    """Before anything loads, every problem at once."""

    def problems(source: dict[str, Any]) -> list[str]:
        with pytest.raises(ValidationError) as err:
            RewardSpec.model_validate({"source": {"kind": "model", **source}})
        return [str(p) for p in problems_from_validation(err.value, RewardSpec)]

    assert problems({"model": {"path": "rm"}, "output": "probability", "text": "completion"}) == [
        "source.output: 'probability' reads a class of a sequence classifier, but `label` is not set (got no "
        "label); set `label` (e.g. POSITIVE) to read one class, or remove `output`: a reward model's score is its "
        "one logit",
        "source.text: 'completion' applies to a classifier (`label`), but `label` is not set (got no label); "
        "remove `text`: a reward model scores prompt and response, as it was trained",
    ]
    assert problems({"model": {"architecture": "llama"}, "label": -1}) == [
        "source.label: a class index counts from 0 (got -1); allowed: 0, 1, ...",
        "source.model.architecture: `label` reads a trained classifier's class, but an architecture (got 'llama') "
        "builds random weights with no trained labels; set model.path to a sequence-classifier checkpoint",
    ]
    assert problems({"model": {"path": "c"}, "label": True}) == [
        "source.label: invalid value (got True); allowed: a string or an integer, or null"
    ]
    # with a label the default output is the probability, written into the spec so the resolved config shows it
    labelled = RewardSpec.model_validate({"source": {"kind": "model", "model": {"path": "c"}, "label": "POSITIVE"}})
    assert (labelled.source.output, labelled.source.text) == ("probability", "prompt_and_completion")
    plain = RewardSpec.model_validate({"source": {"kind": "model", "model": {"path": "rm"}}})
    assert (plain.source.label, plain.source.output) == (None, "logit")
    assert RewardSpec.model_validate(labelled.model_dump()) == labelled


# -- the YAML a user writes -------------------------------------------------------------------------------
SNIPPET = """
reward:
  source:
    kind: model
    model: {path: CLASSIFIER}     # e.g. a local copy of lvwerra/distilbert-imdb
    label: POSITIVE               # a name from the checkpoint's id2label, or an index
    output: probability           # or logit, log_probability
    text: prompt_and_completion   # the whole review, as in the DPO paper; or completion
"""


def test_yaml_section_validates_and_builds(classifiers: dict[str, str]) -> None:
    path = classifiers["distilbert"]
    section = yaml.safe_load(SNIPPET.replace("CLASSIFIER", path))["reward"]
    fn = build_reward(RewardSpec.model_validate(section), byte_tokenizer())
    assert isinstance(fn.source, ClassifierSource)
    assert not any(p.requires_grad for p in fn.parameters()) and not fn.source.model.training
    rewards, metrics = fn(policy_inputs())
    expected = own_logits(path, WHOLE).softmax(-1)[:, 2]
    torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=1e-5)
    assert ((rewards > 0) & (rewards < 1)).all() and set(metrics) >= {"reward/mean", "reward/std"}
