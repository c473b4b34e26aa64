"""Online DPO: pairs picked from rewards by hand, its options as DPO checks them, and a loss that micro-batching,
ties and the loss type leave as DPO's."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import torch
from conftest import minimal, tiny_config
from pydantic import ValidationError

from alignkit.algorithms import ALGORITHMS
from alignkit.algorithms.configs.dpo import DPOConfig, LossType
from alignkit.algorithms.configs.online_dpo import DPO_OPTIONS, NOT_ONLINE
from alignkit.algorithms.dpo import dpo_loss
from alignkit.algorithms.online_dpo import preference_pairs
from alignkit.config.errors import ConfigError
from alignkit.config.load import validate_dict
from alignkit.run import build_models


# --- picking the pairs --------------------------------------------------------------------------------------
def test_pairs_from_two_samples_per_prompt_by_hand() -> None:
    """k = 2, scores [0.2, 0.7 | 1, 1 | -1, -3]: prompt 0 prefers row 1 to row 0; prompt 1 ties (both 1), its
    pair is rows 2 (first of the best) and 3 (last of the worst); prompt 2 prefers row 4 (-1) to row 5 (-3).
    Ties 1/3; reward gap (0.5 + 0 + 2) / 3 = 0.8333."""
    chosen, rejected, ties, metrics = preference_pairs(torch.tensor([0.2, 0.7, 1.0, 1.0, -1.0, -3.0]), 2)
    assert chosen.tolist() == [1, 2, 4]
    assert rejected.tolist() == [0, 3, 5]
    assert ties.tolist() == [False, True, False]
    assert metrics["pairs/ties"].item() == pytest.approx(1 / 3)
    assert metrics["pairs/reward_gap"].item() == pytest.approx(2.5 / 3)


def test_best_against_worst_of_three_by_hand() -> None:
    """k = 3, scores [0.1, 0.9, 0.5 | 2, 2, 2 | 1, 3, 1]: prompt 0: best row 1, worst row 0; prompt 1 (rows 3-5)
    ties: first best row 3, last worst row 5; prompt 2 (rows 6-8): best row 7, worst 1 at rows 6 and 8, the
    last: row 8. Ties 1/3; gap (0.8 + 0 + 2) / 3 = 0.9333."""
    chosen, rejected, ties, metrics = preference_pairs(torch.tensor([0.1, 0.9, 0.5, 2.0, 2.0, 2.0, 1.0, 3.0, 1.0]), 3)
    assert (chosen.tolist(), rejected.tolist(), ties.tolist()) == ([1, 3, 7], [0, 5, 8], [False, True, False])
    assert metrics["pairs/reward_gap"].item() == pytest.approx(2.8 / 3)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_a_pair_is_its_prompts_best_and_worst_two_different_rows(k: int) -> None:
    """On integer scores (many ties): the chosen row scores its group's maximum and the rejected its minimum,
    both in the group, never the same row; a tie is exactly a group whose maximum equals its minimum."""
    scores = torch.randint(0, 3, (200 * k,), generator=torch.Generator().manual_seed(k)).float()
    chosen, rejected, ties, _ = preference_pairs(scores, k)
    groups = scores.view(-1, k)
    assert torch.equal(scores[chosen], groups.max(1).values) and torch.equal(scores[rejected], groups.min(1).values)
    assert torch.equal(chosen // k, torch.arange(200)) and torch.equal(rejected // k, torch.arange(200))
    assert (chosen != rejected).all()
    assert torch.equal(ties, groups.max(1).values == groups.min(1).values) and ties.any() and not ties.all()


# --- options ------------------------------------------------------------------------------------------------
def online_dpo(**algorithm: Any) -> Any:
    data = minimal("online_dpo")
    data["algorithm"] = {**data["algorithm"], **algorithm}
    return validate_dict(data)


def test_dpo_options_are_dpos() -> None:
    """Same loss types, defaults and descriptions as DPO's (taken from its schema), and DPO's rules."""
    fields = ALGORITHMS.get("online_dpo").Config.model_fields
    for key in DPO_OPTIONS:
        assert fields[key].default == DPOConfig.model_fields[key].default
        assert fields[key].description == DPOConfig.model_fields[key].description
    assert fields["loss_type"].annotation == LossType
    with pytest.raises(ConfigError, match="label_smoothing applies to loss_type"):
        online_dpo(loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="beta"):
        online_dpo(beta=0)
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        online_dpo(samples_per_prompt=1)


@pytest.mark.parametrize("loss_type", sorted(set(NOT_ONLINE) & set(get_args(LossType))))
def test_loss_types_that_keep_state_across_steps_are_for_offline_dpo(loss_type: str) -> None:
    with pytest.raises(ConfigError, match=rf"algorithm\.loss_type: {loss_type} is for offline dpo only"):
        online_dpo(loss_type=loss_type)


def test_kl_coef_is_refused_the_dpo_loss_holds_the_kl() -> None:
    with pytest.raises(ConfigError, match=r"algorithm\.kl_coef: online_dpo takes no KL term besides the DPO loss"):
        online_dpo(kl_coef=0.05)
    assert online_dpo().algorithm.kl_coef == 0


# --- the loss -----------------------------------------------------------------------------------------------
class FakeTrainer:
    world_size = 1


def module_with_experience(tmp_path: Path, scores: list[float], **algorithm: Any) -> tuple[Any, dict[str, Any]]:
    """An OnlineDPO module and one iteration's experience on 4 prompts x k samples, with these scores."""
    cfg = tiny_config("online_dpo", tmp_path, eval_fraction=0.125, algorithm=algorithm)
    module_cls = ALGORITHMS.get("online_dpo").load()
    models, tok = build_models(cfg, module_cls)
    module = module_cls(cfg, models, tok)
    module._trainer = FakeTrainer()  # sample() and advantages() ask for the world size only
    torch.manual_seed(0)
    texts = ["reverse: cat =", "reverse: dog sun =", "reverse: a b c =", "reverse: sky ="]
    prompts = tok(texts, return_tensors="pt", padding=True, padding_side="left")
    exp = module.experience(
        {"prompt_input_ids": prompts["input_ids"], "prompt_attention_mask": prompts["attention_mask"]}
    )
    exp["scores"] = torch.tensor(scores)
    module.advantages(exp)
    return module, exp


def step(module: Any, exp: dict[str, Any], micro_batch_size: int) -> tuple[float, list[torch.Tensor]]:
    """The summed micro-batch losses and the gradient of one minibatch of all pairs, in micro-batches."""
    rows = exp["train_rows"]
    counts = {"tokens": torch.tensor(0.0), "sequences": torch.tensor(float(len(rows))), "epoch": 0}
    module.zero_grad()
    total = 0.0
    for part in rows.split(micro_batch_size):
        loss, metrics = module.loss(exp, part, counts)
        loss.backward()
        total += loss.item()
        assert "loss" not in metrics  # the update's own
    return total, [p.grad.clone() for p in module.policy.parameters() if p.grad is not None]


def test_micro_batches_of_one_pair_give_the_gradient_of_one_of_four(tmp_path: Path) -> None:
    """4 prompts x 2 samples, one tie (prompt 1): the shares of 3 preferred pairs add up to their mean loss. At
    the first step the policy is its reference, every log-ratio is 0 and sigmoid DPO's loss is log 2 whatever
    the pairs; micro-batches of 1 and 2 pairs give the loss and gradient of one of 4."""
    module, exp = module_with_experience(tmp_path, [0.0, 1.0, 2.0, 2.0, 5.0, 3.0, 1.0, 0.5])
    assert exp["pairs_per_minibatch"].item() == 3
    loss, whole = step(module, exp, 4)
    assert loss == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)
    assert whole and any(g.abs().sum() > 0 for g in whole)
    for micro in (1, 2):
        parts_loss, parts = step(module, exp, micro)
        assert parts_loss == pytest.approx(loss, abs=1e-6)
        for w, p in zip(whole, parts, strict=True):
            torch.testing.assert_close(p, w, rtol=1e-4, atol=1e-7)


def test_tied_pairs_add_nothing(tmp_path: Path) -> None:
    """Every prompt's two scores equal: no preference anywhere, a zero loss and a zero gradient that still flows
    through the policy (every process runs its backward)."""
    module, exp = module_with_experience(tmp_path, [1.0] * 8)
    assert exp["ties"].all() and exp["metrics"]["pairs/ties"].item() == 1
    loss, grads = step(module, exp, 2)
    assert loss == 0 and grads and all(g.abs().sum() == 0 for g in grads)


def smoothing_for(loss_type: str) -> float:
    """label_smoothing 0, or 1e-3 where DPO's checks want some (EXO's labels (1 - eps, eps))."""
    try:
        DPOConfig(loss_type=loss_type)
        return 0.0
    except ValidationError:
        return 1e-3


@pytest.mark.parametrize("loss_type", [t for t in get_args(LossType) if t not in NOT_ONLINE])
def test_every_dpo_loss_type_starts_where_dpo_loss_does_at_zero_log_ratios(loss_type: str, tmp_path: Path) -> None:
    """Best of 3 against worst, each loss type: at the first step (policy = reference) the loss is dpo_loss with
    all four log-ratios 0, and the implicit rewards are 0."""
    scores = [0.0, 1.0, 2.0, 3.0, 3.0, 3.0, 1.0, 0.0, 5.0, 2.0, 2.0, 2.0]
    eps = smoothing_for(loss_type)
    options = {"samples_per_prompt": 3, "loss_type": loss_type, "beta": 0.5, "label_smoothing": eps}
    module, exp = module_with_experience(tmp_path, scores, **options)
    assert exp["train_rows"].tolist() == [2, 3, 8, 9] and exp["ties"].tolist() == [False, True, False, True]
    counts = {"tokens": torch.tensor(0.0), "sequences": torch.tensor(4.0), "epoch": 0}
    loss, metrics = module.loss(exp, exp["train_rows"], counts)
    zero = torch.zeros(2)
    expected, _ = dpo_loss(zero, zero, zero, zero, beta=0.5, loss_type=loss_type, label_smoothing=eps)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert metrics["rewards/margins"].item() == pytest.approx(0.0, abs=1e-5)
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"} <= set(
        metrics
    )
    assert metrics["kl/ref"].item() == pytest.approx(0.0, abs=1e-5) and "entropy" in metrics


@pytest.mark.parametrize(("normalize", "per_token"), [("none", False), ("tokens", True)])
def test_log_ratios_per_token_where_logps_normalize_says(normalize: str, per_token: bool, tmp_path: Path) -> None:
    """IPO, beta 0.5 (target margin 1/(2 beta) = 1), the reference's chosen log-probs moved down by 1 so that at
    the first step each pair's summed log-ratios are c = 1, r = 0. Sums: h = 1, on target, loss 0. Per token:
    h = 1/n, n the chosen response's tokens (EOS included), loss the mean of (1/n - 1)^2 over the pairs."""
    options = {"loss_type": "ipo", "beta": 0.5, "logps_normalize": normalize}
    module, exp = module_with_experience(tmp_path, [0.0, 1.0, 2.0, 3.0, 1.0, 0.0, 5.0, 2.0], **options)
    chosen = exp["train_rows"]
    exp["ref_seq"] = exp["ref_seq"].index_add(0, chosen, torch.full((4,), -1.0))
    counts = {"tokens": torch.tensor(0.0), "sequences": torch.tensor(4.0), "epoch": 0}
    loss, _ = module.loss(exp, chosen, counts)
    n = exp["rollout"].response_lengths[chosen]
    expected = ((1 / n - 1) ** 2).mean().item() if per_token else 0.0
    assert loss.item() == pytest.approx(expected, abs=1e-4)
