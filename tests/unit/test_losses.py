"""Loss functions and shared tensor ops against numbers worked out by hand, plus their limits and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alignkit.algorithms.configs.sft import SFTConfig
from alignkit.algorithms.reference import completion_lengths, forward_logps
from alignkit.algorithms.reward_model import bradley_terry_loss
from alignkit.algorithms.sft import AGGREGATIONS, sft_loss
from alignkit.models import ARCHITECTURES, ModelSpec, build_causal_lm, byte_tokenizer
from alignkit.ops import masked_mean, masked_sum, model_logits, position_ids, sequence_logprobs, token_logprobs

# -- SFT ------------------------------------------------------------------------------------------------

# Position 0 is never trained (nothing predicts it); the -9 of row 1 is a padding position, masked out.
LOGPS = torch.tensor([[0.0, -1.0, -2.0, -3.0], [0.0, -0.5, -1.5, -9.0]])
MASK = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]])


def test_sft_token_mean_by_hand() -> None:
    """NLL of the trained tokens: row 0 -> 1, 2, 3; row 1 -> 0.5, 1.5.

    token_mean = (1 + 2 + 3 + 0.5 + 1.5) / 5 = 8 / 5 = 1.6; ppl = exp(1.6); tokens = 5.
    """
    loss, metrics = sft_loss(LOGPS, MASK, "token_mean")
    assert loss.item() == pytest.approx(1.6)
    assert metrics["loss"].item() == pytest.approx(1.6)
    assert metrics["ppl"].item() == pytest.approx(math.exp(1.6))
    assert metrics["tokens"].item() == 5


def test_sft_sequence_mean_by_hand() -> None:
    """Each row's mean first: row 0 -> (1 + 2 + 3) / 3 = 2, row 1 -> (0.5 + 1.5) / 2 = 1; mean = 1.5.

    ppl stays the token-mean exp(1.6): it is a property of the tokens, not of the weighting.
    """
    loss, metrics = sft_loss(LOGPS, MASK, "sequence_mean")
    assert loss.item() == pytest.approx(1.5)
    assert metrics["ppl"].item() == pytest.approx(math.exp(1.6))
    assert metrics["tokens"].item() == 5


def test_sft_aggregations_cover_the_config_literal() -> None:
    """Every value the config accepts has a function, and nothing else does."""
    literal = SFTConfig.model_fields["loss_aggregation"].annotation.__args__
    assert set(AGGREGATIONS) == set(literal)


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_sft_properties(aggregation: str) -> None:
    # masked positions do not count, whatever they hold
    other = LOGPS.clone()
    other[1, 3], other[:, 0] = -1000.0, -1000.0
    assert sft_loss(other, MASK, aggregation)[0].item() == pytest.approx(sft_loss(LOGPS, MASK, aggregation)[0].item())
    # with equally long completions the two aggregations agree
    even = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    assert sft_loss(LOGPS, even, aggregation)[0].item() == pytest.approx(sft_loss(LOGPS, even, "token_mean")[0].item())
    # a perfect model (log p = 0 on every trained token) has zero loss and perplexity 1
    loss, metrics = sft_loss(torch.zeros(2, 4), MASK, aggregation)
    assert loss.item() == 0.0 and metrics["ppl"].item() == 1.0
    # the gradient reaches exactly the trained tokens: d loss / d logp = -weight on the mask, 0 elsewhere
    logps = LOGPS.clone().requires_grad_()
    sft_loss(logps, MASK, aggregation)[0].backward()
    assert torch.equal(logps.grad != 0, MASK.bool())
    assert (logps.grad <= 0).all()


def test_sft_sequence_mean_gradient_weights_short_sequences_more() -> None:
    """sequence_mean: d loss / d logp = -1 / (B x n_row): row 0 (3 tokens) -1/6, row 1 (2 tokens) -1/4.

    token_mean: -1 / 5 on every trained token.
    """
    logps = LOGPS.clone().requires_grad_()
    sft_loss(logps, MASK, "sequence_mean")[0].backward()
    expected = torch.tensor([[0, -1 / 6, -1 / 6, -1 / 6], [0, -1 / 4, -1 / 4, 0]])
    torch.testing.assert_close(logps.grad, expected)
    logps.grad = None
    sft_loss(logps, MASK, "token_mean")[0].backward()
    torch.testing.assert_close(logps.grad, MASK * -0.2)


# -- Bradley-Terry ----------------------------------------------------------------------------------------

CHOSEN, REJECTED = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])


def test_bradley_terry_by_hand() -> None:
    """diff = [2, 0]; -log sigmoid(d) = log(1 + e^-d): log(1 + e^-2) = 0.126928, log 2 = 0.693147.

    loss = (0.126928 + 0.693147) / 2 = 0.410038. Metrics: chosen mean 1, rejected mean 0, margins mean 1,
    accuracy 1/2 (a tie is not a correct ranking).
    """
    loss, metrics = bradley_terry_loss(CHOSEN, REJECTED)
    assert loss.item() == pytest.approx(0.410038, abs=1e-6)
    assert loss.item() == pytest.approx((math.log1p(math.exp(-2)) + math.log(2)) / 2)
    assert {k: v.item() for k, v in metrics.items()} == pytest.approx(
        {
            "loss": loss.item(),
            "rewards/chosen": 1.0,
            "rewards/rejected": 0.0,
            "rewards/margins": 1.0,
            "rewards/accuracies": 0.5,
        }
    )


def test_bradley_terry_with_margin_by_hand() -> None:
    """margin = [1, -1]: diff - margin = [2 - 1, 0 + 1] = [1, 1]; loss = log(1 + e^-1) = 0.313262.

    The metrics still report the raw reward margin (mean 1), not the margin-shifted one.
    """
    loss, metrics = bradley_terry_loss(CHOSEN, REJECTED, margin=torch.tensor([1.0, -1.0]))
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)
    assert metrics["rewards/margins"].item() == 1.0


def test_bradley_terry_with_centering_by_hand() -> None:
    """center_coef = 0.01: (chosen + rejected)^2 = [4, 0], mean 2; loss = 0.410038 + 0.01 x 2 = 0.430038."""
    loss, metrics = bradley_terry_loss(CHOSEN, REJECTED, center_coef=0.01)
    assert loss.item() == pytest.approx(0.430038, abs=1e-6)
    assert metrics["loss"].item() == pytest.approx(0.430038, abs=1e-6)  # the logged loss includes the term


@pytest.mark.parametrize("score", [-7.0, 0.0, 0.5, 30.0])
def test_bradley_terry_equal_scores_give_log_2(score: float) -> None:
    scores = torch.full((3,), score)
    assert bradley_terry_loss(scores, scores.clone())[0].item() == pytest.approx(math.log(2))


def test_bradley_terry_limits_and_shift_invariance() -> None:
    big = bradley_terry_loss(torch.tensor([60.0, 40.0]), torch.tensor([0.0, -20.0]))[0]
    assert 0.0 <= big.item() < 1e-15  # a large positive margin costs (almost) nothing
    wrong = bradley_terry_loss(torch.tensor([0.0]), torch.tensor([50.0]))[0]
    assert wrong.item() == pytest.approx(50.0, rel=1e-6)  # -log sigmoid(-x) -> x for a large wrong margin
    # only differences matter (without centering, which pins the offset)
    c, r = torch.randn(8, generator=torch.Generator().manual_seed(0)), torch.randn(8)
    a = bradley_terry_loss(c, r)[0]
    assert bradley_terry_loss(c + 3.0, r + 3.0)[0].item() == pytest.approx(a.item(), rel=1e-6)
    assert bradley_terry_loss(c + 3.0, r + 3.0, center_coef=0.1)[0].item() > a.item()


def test_bradley_terry_gradient() -> None:
    """d loss / d chosen_i = -(1 - sigmoid(diff_i)) / B and d loss / d rejected_i = +(1 - sigmoid(diff_i)) / B.

    With centering, both gain 2 c (chosen_i + rejected_i) / B.
    """
    g = torch.Generator().manual_seed(1)
    chosen = torch.randn(5, generator=g).requires_grad_()
    rejected = torch.randn(5, generator=g).requires_grad_()
    bradley_terry_loss(chosen, rejected)[0].backward()
    diff = (chosen - rejected).detach()
    torch.testing.assert_close(chosen.grad, -(1 - torch.sigmoid(diff)) / 5)
    torch.testing.assert_close(rejected.grad, (1 - torch.sigmoid(diff)) / 5)

    chosen.grad = rejected.grad = None
    bradley_terry_loss(chosen, rejected, center_coef=0.5)[0].backward()
    center = 2 * 0.5 * (chosen + rejected).detach() / 5
    torch.testing.assert_close(chosen.grad, -(1 - torch.sigmoid(diff)) / 5 + center)
    torch.testing.assert_close(rejected.grad, (1 - torch.sigmoid(diff)) / 5 + center)


# -- ops --------------------------------------------------------------------------------------------------


def test_token_logprobs_by_hand() -> None:
    """Vocabulary of 2; tokens [1, 0, 1].

    t = 0: nothing predicts it -> 0.
    t = 1: logits[0] = [0, 0] -> p(0) = 1/2 -> log(1/2) = -0.693147.
    t = 2: logits[1] = [ln 3, 0] -> p(1) = 1 / (3 + 1) -> log(1/4) = -1.386294.
    The last position's logits predict nothing in the sequence and are ignored.
    """
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    out = token_logprobs(logits, torch.tensor([[1, 0, 1]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, -math.log(2), -math.log(4)]]))
    assert out.dtype == torch.float32


def test_token_logprobs_matches_log_softmax_and_upcasts() -> None:
    g = torch.Generator().manual_seed(0)
    logits, ids = torch.randn(3, 7, 11, generator=g), torch.randint(0, 11, (3, 7), generator=g)
    expected = F.log_softmax(logits, -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, ids)[:, 1:], expected)
    assert token_logprobs(logits.bfloat16(), ids).dtype == torch.float32


def test_masked_sum_and_mean_by_hand() -> None:
    """x = [[1, 2], [3, 4]], mask = [[1, 0], [1, 1]]: sum 1 + 3 + 4 = 8, mean 8 / 3; per row [1, 7], [1, 3.5]."""
    x, mask = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1, 0], [1, 1]])
    assert masked_sum(x, mask).item() == 8.0
    assert masked_mean(x, mask).item() == pytest.approx(8 / 3)
    torch.testing.assert_close(masked_sum(x, mask, dim=-1), torch.tensor([1.0, 7.0]))
    torch.testing.assert_close(masked_mean(x, mask, dim=-1), torch.tensor([1.0, 3.5]))
    torch.testing.assert_close(masked_mean(x, mask.bool(), dim=0), torch.tensor([2.0, 4.0]))


def test_masked_mean_of_an_empty_mask_is_zero_not_nan() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    empty = torch.zeros(2, 2)
    assert masked_mean(x, empty).item() == 0.0
    torch.testing.assert_close(masked_mean(x, torch.tensor([[0, 0], [1, 0]]), dim=-1), torch.tensor([0.0, 3.0]))


def test_position_ids_by_hand() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 2, 3, 4]])
    assert torch.equal(position_ids(mask), expected)


TEXTS = ["reverse: cat dog =", "hi", "a somewhat longer sentence here"]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_left_and_right_padding_give_the_same_sequence_logprobs(arch: str, attn: str) -> None:
    """Positions come from the mask, so the padding side changes nothing (gpt2 has learned positions)."""
    tok = byte_tokenizer()
    kw = {"num_kv_heads": 1} if "num_kv_heads" in ARCHITECTURES.get(arch).names else {}
    spec = ModelSpec(architecture=arch, hidden_size=32, num_layers=1, num_heads=2, attn_implementation=attn, **kw)
    model = build_causal_lm(spec, tok).eval()
    sums = {}
    for side in ("left", "right"):
        tok.padding_side = side
        batch = tok(TEXTS, return_tensors="pt", padding=True)
        mask = batch["attention_mask"]
        # a token is predicted when it and the token before it are real (the first real token is not)
        predicted = mask * F.pad(mask[:, :-1], (1, 0))
        with torch.no_grad():
            sums[side] = sequence_logprobs(model, batch["input_ids"], mask, predicted)
    torch.testing.assert_close(sums["left"], sums["right"], rtol=1e-5, atol=1e-5)
    # and each equals the unpadded sequence alone
    for i, text in enumerate(TEXTS):
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            alone = token_logprobs(model(input_ids=ids).logits, ids)[0, 1:].sum()
        torch.testing.assert_close(sums["left"][i], alone, rtol=1e-5, atol=1e-5)


def test_sequence_logprobs_sums_the_completion_tokens_only() -> None:
    """Completion = the last 2 tokens of each row: their log-probs summed, prompt and padding left out."""
    tok = byte_tokenizer()
    model = build_causal_lm(ModelSpec(architecture="llama", hidden_size=32, num_layers=1, num_heads=2), tok).eval()
    batch = tok(["abcd", "xy"], return_tensors="pt", padding=True)  # right padding: [BOS a b c d], [BOS x y PAD PAD]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    completion = torch.tensor([[0, 0, 0, 1, 1], [0, 1, 1, 0, 0]])
    with torch.no_grad():
        got = sequence_logprobs(model, ids, mask, completion)
        per_token = token_logprobs(model_logits(model, ids, mask), ids)
    expected = torch.stack([per_token[0, 3] + per_token[0, 4], per_token[1, 1] + per_token[1, 2]])
    torch.testing.assert_close(got, expected)


def test_completion_lengths_turn_forward_logps_into_per_token_means() -> None:
    """The counts are the tokens forward_logps sums over (completion tokens that something predicts): a pair's
    chosen [BOS a b | c d] has 2, its rejected [BOS a b | x PAD] 1; so sums / counts are per-token means, no
    second forward. A completion starting at a sequence's first token has that token left out of both."""
    tok = byte_tokenizer()
    model = build_causal_lm(ModelSpec(architecture="llama", hidden_size=32, num_layers=1, num_heads=2), tok).eval()
    chosen = tok(["abcd", "wxyz"], return_tensors="pt", padding=True)
    rejected = tok(["abx", "w"], return_tensors="pt", padding=True)
    width = chosen["input_ids"].shape[1]
    rejected = {k: F.pad(v, (0, width - v.shape[1])) for k, v in rejected.items()}
    batch = {
        "chosen_input_ids": chosen["input_ids"],
        "chosen_attention_mask": chosen["attention_mask"],
        "chosen_completion_mask": torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]]),  # row 2: all of it
        "rejected_input_ids": rejected["input_ids"],
        "rejected_attention_mask": rejected["attention_mask"],
        "rejected_completion_mask": torch.tensor([[0, 0, 0, 1, 0], [0, 1, 0, 0, 0]]),
    }
    lengths = completion_lengths(batch, ("chosen_", "rejected_"))
    assert lengths.tolist() == [[2, 1], [4, 1]]  # row 2's chosen: BOS is predicted by nothing
    with torch.no_grad():
        sums = forward_logps(model, batch, ("chosen_", "rejected_"))
        per_token = token_logprobs(
            model_logits(model, chosen["input_ids"], chosen["attention_mask"]), chosen["input_ids"]
        )
    torch.testing.assert_close(sums[0, 0] / lengths[0, 0], per_token[0, 3:5].mean())
    torch.testing.assert_close(sums[1, 0] / lengths[1, 0], per_token[1, 1:5].mean())
