"""Reward sources and their post-processing: exact values by hand, the spec's errors, a tiny reward model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from alignkit.config.errors import problems_from_validation
from alignkit.models import ModelSpec, build_scalar_model, byte_tokenizer, save_hf, sequence_scores
from alignkit.rewards import REWARDS, RewardFunction, RewardInputs, RewardSpec, build_reward
from alignkit.rewards.sources import ModelSource, RuleSource, same_tokenizer


# -- test-only rules: fixed scores from the prompt rows, so that every number below is exact ----------------
def column_score(prompts: Sequence[str], completions: Sequence[str], score: Sequence[float]) -> list[float]:
    return [float(s) for s in score]


def safety_score(prompts: Sequence[str], completions: Sequence[str], safety: Sequence[float]) -> list[float]:
    return [float(s) for s in safety]


def exact_answer(
    prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any], bonus: float = 0.0
) -> list[float]:
    return [1.0 + bonus if c.strip() == str(a) else 0.0 for c, a in zip(completions, answer, strict=True)]


@pytest.fixture
def rules(monkeypatch: pytest.MonkeyPatch) -> None:
    # The registry has no removal, and a rule left registered would join test_rewards' every-rule contract
    # test, which calls rules without metadata; monkeypatch takes these out again after each test.
    for fn in (column_score, safety_score, exact_answer):
        monkeypatch.setitem(REWARDS._items, fn.__name__, fn)
        monkeypatch.setitem(REWARDS._descriptions, fn.__name__, "")


def text_inputs(
    responses: list[str], metadata: list[dict[str, Any]] | None = None, finished: list[bool] | None = None
) -> RewardInputs:
    """Inputs for sources that read only text and metadata; the token ids are placeholders."""
    n = len(responses)
    return RewardInputs(
        prompts=[f"p{i}" for i in range(n)],
        responses=responses,
        sequences=torch.zeros(n, 1, dtype=torch.long),
        attention_mask=torch.ones(n, 1, dtype=torch.long),
        finished=torch.tensor(finished if finished is not None else [True] * n),
        metadata=metadata,
    )


def scores_of(values: list[float], finished: list[bool] | None = None) -> RewardInputs:
    return text_inputs(["r"] * len(values), [{"score": v} for v in values], finished)


def reward_fn(source: dict[str, Any], **section: Any) -> RewardFunction:
    return build_reward(RewardSpec.model_validate({"source": source, **section}), byte_tokenizer())


SCORE = {"kind": "rule", "name": "column_score"}


def values(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: v.item() for k, v in metrics.items()}


# -- rule ------------------------------------------------------------------------------------------------
def test_rule_reads_metadata_keywords(rules: None) -> None:
    """exact_answer with args {bonus: 0.5}: 'answer' comes from each prompt row.

    ' 4 ' vs answer '4': match -> 1 + 0.5 = 1.5; '8' vs answer 7 (an int column): no match -> 0.
    """
    fn = reward_fn({"kind": "rule", "name": "exact_answer", "args": {"bonus": 0.5}})
    rewards, metrics = fn(text_inputs([" 4 ", "8"], [{"answer": "4", "unsafe": False}, {"answer": 7}]))
    assert rewards.tolist() == [1.5, 0.0]
    assert rewards.dtype == torch.float32
    assert metrics["reward/mean"].item() == 0.75


def test_rule_needs_its_metadata_column(rules: None) -> None:
    fn = reward_fn({"kind": "rule", "name": "exact_answer"})
    with pytest.raises(ValueError, match="rule 'exact_answer' reads answer from the prompt rows, but not every row"):
        fn(text_inputs(["4", "8"], [{"answer": "4"}, {}]))


def test_rule_must_return_one_reward_per_response() -> None:
    source = RuleSource(lambda prompts, completions: [1.0], name="short")
    with pytest.raises(ValueError, match=r"rule 'short' returned 1 rewards for 2 responses"):
        source(text_inputs(["a", "b"]))


def test_registered_rule_through_the_spec() -> None:
    """length_target, target 4: 'abcd' -> 1; 'ab' -> 1 - 2/4 = 0.5."""
    rewards, _ = reward_fn({"kind": "rule", "name": "length_target", "args": {"target": 4}})(
        text_inputs(["abcd", "ab"])
    )
    assert rewards.tolist() == [1.0, 0.5]


# -- weighted sum -----------------------------------------------------------------------------------------
def test_weighted_sum_by_hand() -> None:
    """2 x length_target(target 4) - 1 x keyword_count(words [good]).

    'abcd': 2 x 1 - 0 = 2; 'good': 2 x 1 - 1 = 1; 'ab good' (7 chars): 2 x (1 - 3/4) - 1 = -0.5.
    Term means (unweighted): length (1 + 1 + 0.25) / 3 = 0.75, keywords 2/3; raw mean 2.5 / 3.
    """
    fn = reward_fn(
        {
            "kind": "weighted_sum",
            "terms": [
                {"weight": 2.0, "source": {"kind": "rule", "name": "length_target", "args": {"target": 4}}},
                {"weight": -1.0, "source": {"kind": "rule", "name": "keyword_count", "args": {"words": ["good"]}}},
            ],
        }
    )
    rewards, metrics = fn(text_inputs(["abcd", "good", "ab good"]))
    assert rewards.tolist() == [2.0, 1.0, -0.5]
    m = values(metrics)
    assert m["reward/0_rule"] == 0.75
    assert m["reward/1_rule"] == pytest.approx(2 / 3)
    assert m["reward/mean"] == pytest.approx(2.5 / 3)


# -- llama2 -----------------------------------------------------------------------------------------------
LLAMA2 = {
    "kind": "llama2",
    "safety": {"kind": "rule", "name": "safety_score"},
    "helpfulness": SCORE,  # the helpfulness score is the rows' `score` column
}
# safety s, helpfulness h, flag -> which score is used:
#   flagged unsafe                    -> safety: 2.0
#   sigmoid(-2) = 0.119 < 0.15        -> safety: -2.0
#   sigmoid(-1) = 0.269 >= 0.15       -> helpfulness: 0.5
#   sigmoid(0) = 0.5, flag "false"    -> helpfulness: -4.0
LLAMA2_ROWS = [
    {"safety": 2.0, "score": -1.0, "unsafe": True},
    {"safety": -2.0, "score": 3.0, "unsafe": False},
    {"safety": -1.0, "score": 0.5, "unsafe": False},
    {"safety": 0.0, "score": -4.0, "unsafe": "false"},
]


def test_llama2_selection_by_hand(rules: None) -> None:
    """R_c = sigmoid(s) if flagged or sigmoid(s) < 0.15 else sigmoid(h); logit(R_c) is the chosen raw score.

    Rows (see LLAMA2_ROWS): [2.0, -2.0, 0.5, -4.0]; 2 of 4 scored by safety. Means: safety
    (2 - 2 - 1 + 0) / 4 = -0.25, helpfulness (-1 + 3 + 0.5 - 4) / 4 = -0.375.
    """
    rewards, metrics = reward_fn(LLAMA2, normalize="none")(text_inputs(["r"] * 4, LLAMA2_ROWS))
    assert rewards.tolist() == [2.0, -2.0, 0.5, -4.0]
    chosen_sigmoid = torch.sigmoid(torch.tensor([2.0, -2.0, 0.5, -4.0]))
    torch.testing.assert_close(rewards, torch.logit(chosen_sigmoid))
    m = values(metrics)
    assert m["reward/safety_share"] == 0.5
    assert (m["reward/safety"], m["reward/helpfulness"]) == (-0.25, -0.375)


def test_llama2_large_scores_stay_finite(rules: None) -> None:
    """sigmoid(30) rounds to 1 in float32 and logit(1) = inf; the selected score comes back as it is."""
    rows = [{"safety": 30.0, "score": -30.0, "unsafe": True}, {"safety": 30.0, "score": 40.0, "unsafe": False}]
    rewards, _ = reward_fn(LLAMA2, normalize="none")(text_inputs(["r", "r"], rows))
    assert rewards.tolist() == [30.0, 40.0]


def test_llama2_whitens_by_default_and_needs_the_flag(rules: None) -> None:
    assert RewardSpec.model_validate({"source": LLAMA2}).normalize == "batch"  # Touvron et al. 2023
    assert RewardSpec.model_validate({"source": LLAMA2, "normalize": "none"}).normalize == "none"
    assert RewardSpec.model_validate({"source": SCORE}).normalize == "none"
    rows = [{k: v for k, v in row.items() if k != "unsafe"} for row in LLAMA2_ROWS]
    with pytest.raises(ValueError, match=r"prompt row 0 has no 'unsafe' column .* set unsafe_key: null"):
        reward_fn(LLAMA2)(text_inputs(["r"] * 4, rows))
    # without flags only the threshold selects: row 0 (sigmoid(2) = 0.88) now uses helpfulness
    rewards, _ = reward_fn({**LLAMA2, "unsafe_key": None}, normalize="none")(text_inputs(["r"] * 4, rows))
    assert rewards.tolist() == [-1.0, -2.0, 0.5, -4.0]


# -- post-processing -------------------------------------------------------------------------------------
def test_eos_penalty_before_normalising(rules: None) -> None:
    """Raw [2, 1, 0], finished [yes, no, yes], penalty -1 -> [2, 0, 0]; then whitened over the batch.

    mean 2/3; M2 = (4/3)^2 + 2 (2/3)^2 = 8/3; var = M2 / (n - 1) = 4/3; std 1.154701.
    (4/3) / 1.154701 = 1.154701; (-2/3) / 1.154701 = -0.577350.
    """
    inputs = scores_of([2.0, 1.0, 0.0], finished=[True, False, True])
    rewards, metrics = reward_fn(SCORE, eos_penalty=-1.0)(inputs)
    assert rewards.tolist() == [2.0, 0.0, 0.0]
    assert metrics["reward/eos_penalized"].item() == pytest.approx(1 / 3)
    assert metrics["reward/mean"].item() == 1.0  # before the penalty
    whitened, _ = reward_fn(SCORE, eos_penalty=-1.0, normalize="batch")(inputs)
    torch.testing.assert_close(whitened, torch.tensor([1.154701, -0.577350, -0.577350]))


def test_batch_whitening_by_hand(rules: None) -> None:
    """[1, 2, 3, 4]: mean 2.5, M2 = 2.25 + 0.25 + 0.25 + 2.25 = 5, var 5/3, std 1.290994.

    -> [-1.161895, -0.387298, 0.387298, 1.161895]: mean 0, population std sqrt(3/4) = 0.866025.
    """
    rewards, metrics = reward_fn(SCORE, normalize="batch")(scores_of([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(rewards, torch.tensor([-1.161895, -0.387298, 0.387298, 1.161895]))
    m = values(metrics)
    assert m["reward/mean"] == 2.5 and m["reward/processed_mean"] == pytest.approx(0.0, abs=1e-7)
    assert m["reward/processed_std"] == pytest.approx(0.866025, abs=1e-6)


def test_batch_whitening_of_one_row_only_centres(rules: None) -> None:
    assert reward_fn(SCORE, normalize="batch")(scores_of([3.0]))[0].tolist() == [0.0]


def test_running_normaliser_by_hand_and_resume(rules: None) -> None:
    """Welford over calls, each batch added before it is normalised.

    Call 1 [1, 3]: n 2, mean 2, M2 2, var 2 -> [-1, 1] / 1.414214 = [-0.707107, 0.707107].
    Call 2 [5, 7]: batch mean 6, M2 2; merged n 4, mean 2 + (6 - 2) x 2/4 = 4, M2 2 + 2 + 4^2 x 2 x 2/4 = 20,
    var 20/3, std 2.581989 -> [1, 3] / 2.581989 = [0.387298, 1.161895].
    Call 3 [9] (after a reload): n 5, mean 5, M2 20 + 5^2 x 4 x 1/5 = 40, var 10 -> 4 / 3.162278 = 1.264911.
    """
    fn = reward_fn(SCORE, normalize="running")
    torch.testing.assert_close(fn(scores_of([1.0, 3.0]))[0], torch.tensor([-0.707107, 0.707107]))
    rewards, metrics = fn(scores_of([5.0, 7.0]))
    torch.testing.assert_close(rewards, torch.tensor([0.387298, 1.161895]))
    assert metrics["reward/running_mean"].item() == 4.0
    assert metrics["reward/running_std"].item() == pytest.approx(2.581989, abs=1e-6)

    state = fn.state_dict()
    assert state["running._extra_state"] == {"count": 4.0, "mean": 4.0, "m2": 20.0}
    resumed = reward_fn(SCORE, normalize="running")
    resumed.load_state_dict(state)
    for f in (fn, resumed):
        assert f(scores_of([9.0]))[0].item() == pytest.approx(1.264911, abs=1e-6)


def test_running_normaliser_learns_only_in_training(rules: None) -> None:
    """In eval mode (validation) held-out rewards are normalised but not added to the statistics."""
    fn = reward_fn(SCORE, normalize="running")
    fn(scores_of([1.0, 3.0]))
    fn.eval()
    assert fn(scores_of([5.0]))[0].item() == pytest.approx(3 / math.sqrt(2), abs=1e-6)  # (5 - 2) / sqrt(2)
    assert fn.running.moments == (2.0, 2.0, 2.0)


def test_clip_after_normalising(rules: None) -> None:
    """clip 1: [-3, 0.5, 2] -> [-1, 0.5, 1], 2 of 3 clipped; whitened [1, 2, 3, 4] -> [-1, -0.387, 0.387, 1]."""
    rewards, metrics = reward_fn(SCORE, clip=1.0)(scores_of([-3.0, 0.5, 2.0]))
    assert rewards.tolist() == [-1.0, 0.5, 1.0]
    assert metrics["reward/clipped"].item() == pytest.approx(2 / 3)
    whitened, _ = reward_fn(SCORE, clip=1.0, normalize="batch")(scores_of([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(whitened, torch.tensor([-1.0, -0.387298, 0.387298, 1.0]))


def test_inputs_must_agree_on_the_batch_size() -> None:
    with pytest.raises(ValueError, match="every field needs one entry per row"):
        RewardInputs(["p"], ["r", "s"], torch.zeros(2, 1), torch.ones(2, 1), torch.ones(2, dtype=torch.bool))


# -- reward model -----------------------------------------------------------------------------------------
TINY = ModelSpec(architecture="llama", hidden_size=32, num_layers=1, num_heads=2)
PROMPTS, RESPONSES, FINISHED = ["hi", "hello there"], ["ok", "fine, thanks a lot"], [True, False]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    tokenizer = byte_tokenizer()
    model = build_scalar_model(TINY, tokenizer).eval()
    return save_hf(model, tokenizer, tmp_path_factory.mktemp("rm") / "reward_model"), model


def policy_batch(side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte-tokenizer ids of BOS + prompt + response (+ EOS when finished), padded on `side` with junk ids.

    side 'rollout': left-padded prompt then right-padded response, as a rollout lays them out.
    """
    tok = byte_tokenizer()
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    responses = [
        tok(r, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if f else [])
        for r, f in zip(RESPONSES, FINISHED, strict=True)
    ]
    p_len, r_len = max(map(len, prompts)), max(map(len, responses))
    rows, masks = [], []
    for p, r in zip(prompts, responses, strict=True):
        if side == "rollout":
            pieces = [([7] * (p_len - len(p)), 0), (p, 1), (r, 1), ([7] * (r_len - len(r)), 0)]
        else:  # everything real first, then right padding
            pieces = [(p + r, 1), ([7] * (p_len + r_len - len(p) - len(r)), 0)]
        rows.append([t for ids, _ in pieces for t in ids])
        masks.append([m for ids, m in pieces for _ in ids])
    return torch.tensor(rows), torch.tensor(masks)


def model_inputs(side: str = "rollout") -> RewardInputs:
    ids, mask = policy_batch(side)
    return RewardInputs(PROMPTS, RESPONSES, ids, mask, torch.tensor(FINISHED), [{}, {}])


def test_model_source_scores_the_policy_ids(reward_model_dir: tuple[Path, torch.nn.Module]) -> None:
    """Same tokenizer as the policy: the rollout's ids are scored as they are, wherever the padding is."""
    path, model = reward_model_dir
    fn = reward_fn({"kind": "model", "model": {"path": str(path)}})
    source = fn.source
    assert isinstance(source, ModelSource) and source.reuse_ids
    ids, mask = policy_batch("rollout")
    with torch.no_grad():
        expected = sequence_scores(model, ids, mask)
    rewards, metrics = fn(model_inputs("rollout"))
    torch.testing.assert_close(rewards, expected)
    torch.testing.assert_close(fn(model_inputs("right"))[0], expected, atol=1e-5, rtol=1e-5)
    assert rewards.dtype == torch.float32 and metrics["reward/mean"].item() == pytest.approx(expected.mean().item())


def test_model_source_retokenizes_text_like_the_data_layer(reward_model_dir: tuple[Path, torch.nn.Module]) -> None:
    """From text with the model's own tokenizer: BOS + prompt, response, EOS when finished -> the same ids."""
    _, model = reward_model_dir
    tok = byte_tokenizer()
    text_path = ModelSource(model, tok, reuse_ids=False)
    torch.testing.assert_close(text_path(model_inputs())[0], ModelSource(model, tok, reuse_ids=True)(model_inputs())[0])


def test_model_source_decides_by_the_vocabulary() -> None:
    """Token ids are reused only when they mean the same: an extra token, or another pad id, forces text."""
    extra, other_pad = byte_tokenizer(), byte_tokenizer()
    extra.add_tokens(["<tool>"])
    other_pad.pad_token = other_pad.eos_token
    assert same_tokenizer(byte_tokenizer(), byte_tokenizer())
    assert not same_tokenizer(byte_tokenizer(), extra)
    assert not same_tokenizer(byte_tokenizer(), other_pad)


def test_reward_model_is_frozen(reward_model_dir: tuple[Path, torch.nn.Module]) -> None:
    """No gradients, and eval mode (no dropout) even after the holding system switches to training."""
    path, _ = reward_model_dir
    fn = reward_fn(
        {"kind": "weighted_sum", "terms": [{"weight": 1.0, "source": {"kind": "model", "model": {"path": str(path)}}}]}
    )
    fn.train()
    params = list(fn.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert fn.training and not any(m.training for m in fn.source.modules())
    rewards, metrics = fn(model_inputs())
    assert not rewards.requires_grad and set(metrics) >= {"reward/0_model", "reward/mean"}


# -- the spec ---------------------------------------------------------------------------------------------
def problems(section: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as err:
        RewardSpec.model_validate(section)
    return [str(p) for p in problems_from_validation(err.value, RewardSpec)]


def test_spec_unknown_rule_names_the_closest() -> None:
    assert problems({"source": {"kind": "rule", "name": "lenght_target"}}) == [
        "source.name: unknown reward 'lenght_target'; allowed: answer_format, countdown, exact_answer, keyword_count, "
        "length_target, regex_match, review_sentiment; did you mean 'length_target'?"
    ]


def test_spec_unknown_rule_argument() -> None:
    nested = {
        "kind": "weighted_sum",
        "terms": [{"weight": 1, "source": {"kind": "rule", "name": "regex_match", "args": {"patern": "x"}}}],
    }
    assert problems({"source": nested}) == [
        "source.terms[0].source.args: unknown argument for rule 'regex_match' (got 'patern'); allowed: pattern; "
        "did you mean 'pattern'?"
    ]


def test_spec_empty_weighted_sum_and_unknown_kind() -> None:
    assert problems({"source": {"kind": "weighted_sum", "terms": []}}) == [
        "source.terms: weighted_sum needs at least one term (got an empty list); write e.g. "
        "`terms: [{weight: 1.0, source: {kind: rule, name: length_target}}]`"
    ]
    assert problems({"source": {"kind": "rules", "name": "length_target"}}) == [
        "source.kind: unknown source 'rules'; allowed: rule, model, weighted_sum, llama2; did you mean 'rule'?"
    ]
    assert problems({"source": {"name": "length_target"}}) == [
        "source.kind: missing 'kind'; allowed: llama2, model, rule, weighted_sum"
    ]


def test_spec_checks_bounds_and_nested_models() -> None:
    found = problems(
        {
            "source": {
                "kind": "llama2",
                "safety": {"kind": "model", "model": {"architecture": "llama", "hidden_size": 30, "num_heads": 4}},
                "helpfulness": SCORE | {"name": "length_targt"},
                "threshold": 1.5,
            },
            "clip": 0,
        }
    )
    assert found[0].startswith("source.safety.model.num_heads: must divide hidden_size (got num_heads=4")
    assert "source.helpfulness.name: unknown reward 'length_targt'" in found[1]
    assert found[2:] == [
        "source.threshold: should be less than 1 (got 1.5); allowed: a number > 0 and < 1; e.g. `threshold: 0.15` "
        "(the default)",
        "clip: should be greater than 0 (got 0); allowed: a number > 0, or null",
    ]


# -- several processes ------------------------------------------------------------------------------------
def _moments_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from alignkit.rewards.normalize import RunningMoments, batch_moments

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        x = torch.tensor([[1.0, 3.0], [5.0, 7.0, 9.0]][rank])
        running = RunningMoments()
        running.update(batch_moments(x))
        rewards, _ = RewardFunction(RuleSource(lambda p, c: x.tolist()), normalize="batch")(text_inputs(["r"] * len(x)))
        torch.save({"moments": running.moments, "rewards": rewards}, Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow
def test_moments_span_all_processes(tmp_path: Path) -> None:
    """Rank 0 holds [1, 3], rank 1 [5, 7, 9]: n 5, mean 5, M2 16 + 4 + 0 + 4 + 16 = 40 on both ranks.

    Batch whitening uses those moments (var 40 / 4 = 10): rank 0 gets [-4, -2] / 3.162278 = [-1.264911, -0.632456].
    """
    torch.multiprocessing.spawn(_moments_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]
    assert [r["moments"] for r in results] == [(5.0, 5.0, 40.0)] * 2
    torch.testing.assert_close(results[0]["rewards"], torch.tensor([-1.264911, -0.632456]))
    torch.testing.assert_close(results[1]["rewards"], torch.tensor([0.0, 0.632456, 1.264911]))
