"""What every rollout engine returns (`Rollout`) and takes (`SamplingParams`), and scoring a rollout under a model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from alignkit.ops.layout import consecutive_groups
from alignkit.ops.lm_head import token_logprobs_and_entropy
from alignkit.ops.logprobs import model_logits, token_logprobs
from alignkit.ops.rl import entropy_from_logits


@dataclass
class Rollout:
    """Prompts and the responses sampled for them, laid out for one scoring forward pass.

    Each row is its left-padded prompt (P columns) followed by its response, right-padded with the pad id
    to the longest response of the batch (R <= max_new_tokens columns).
    """

    sequences: Tensor  # [B, P + R]
    attention_mask: Tensor  # [B, P + R]: real prompt tokens and response tokens up to and including its EOS
    response_mask: Tensor  # [B, P + R]: response tokens only, the EOS that ended it included
    prompt_length: int  # P
    finished: Tensor  # [B] bool: the response ended with EOS within max_new_tokens
    # [B, P + R] float32: each response token's log-prob under the sampling distribution (see `score`), 0 off
    # the response; None when the engine does not return them
    logprobs: Tensor | None = None

    @property
    def response_lengths(self) -> Tensor:
        """[B] float: number of response tokens of each row (its EOS included)."""
        return self.response_mask.sum(-1).float()

    def index(self, rows: Tensor | list[int]) -> Rollout:
        """The rollout of the selected rows, in the given order."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.sequences.device)
        return Rollout(
            sequences=self.sequences[rows],
            attention_mask=self.attention_mask[rows],
            response_mask=self.response_mask[rows],
            prompt_length=self.prompt_length,
            finished=self.finished[rows],
            logprobs=None if self.logprobs is None else self.logprobs[rows],
        )

    def repeat_interleave(self, n: int) -> Rollout:
        """Every row n times in a row (row i*n + j is copy j of row i), the layout `generate` gives samples."""
        return self.index(torch.arange(len(self.sequences), device=self.sequences.device).repeat_interleave(n))


def concat_rollouts(rollouts: list[Rollout], pad_token_id: int) -> Rollout:
    """The rows of several rollouts in one, in order: prompts left-padded to the longest prompt, responses
    right-padded to the longest response (log-probs kept when every part has them)."""
    p = max(r.prompt_length for r in rollouts)
    width = max(r.sequences.shape[1] - r.prompt_length for r in rollouts)

    def fit(r: Rollout, x: Tensor, value: float) -> Tensor:
        return F.pad(x, (p - r.prompt_length, width - (x.shape[1] - r.prompt_length)), value=value)

    with_logprobs = all(r.logprobs is not None for r in rollouts)
    return Rollout(
        sequences=torch.cat([fit(r, r.sequences, pad_token_id) for r in rollouts]),
        attention_mask=torch.cat([fit(r, r.attention_mask, 0) for r in rollouts]),
        response_mask=torch.cat([fit(r, r.response_mask, 0) for r in rollouts]),
        prompt_length=p,
        finished=torch.cat([r.finished for r in rollouts]),
        logprobs=torch.cat([fit(r, r.logprobs, 0.0) for r in rollouts]) if with_logprobs else None,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class SamplingParams:
    """How to sample, the same for every engine."""

    max_new_tokens: int
    eos_token_id: int
    pad_token_id: int
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False  # argmax tokens; temperature then only defines the returned log-probs
    num_samples: int = 1  # G: samples per prompt, row i*G + j is sample j of prompt i
    synced: bool = False  # other ranks generate in step (world size > 1): keep calling the model until all are done


def check_prompts(prompt_ids: Tensor, prompt_mask: Tensor, params: SamplingParams) -> None:
    """What every engine can rely on: left-padded [B, P] prompts and sampling parameters in range."""
    if params.max_new_tokens < 1 or params.num_samples < 1:
        raise ValueError(
            f"max_new_tokens and num_samples must be >= 1 (got {params.max_new_tokens} and {params.num_samples})"
        )
    if not params.greedy and (params.temperature <= 0 or not 0 < params.top_p <= 1):
        raise ValueError(
            f"sampling needs temperature > 0 and 0 < top_p <= 1 (got temperature {params.temperature}, top_p "
            f"{params.top_p}); use greedy=True for argmax decoding"
        )
    if prompt_ids.shape != prompt_mask.shape or prompt_ids.ndim != 2:
        raise ValueError(
            f"prompt_ids and prompt_mask must both be [B, P] (got {tuple(prompt_ids.shape)}, "
            f"{tuple(prompt_mask.shape)})"
        )
    if not prompt_mask[:, -1].all():
        raise ValueError(
            "prompts must be left-padded with at least one real token each (some rows' last column is padding); "
            "collate prompts with padding_side='left'"
        )


def rollout_from_tokens(
    prompt_ids: Tensor, prompt_mask: Tensor, tokens: Tensor, logprobs: Tensor | None, params: SamplingParams
) -> Rollout:
    """The Rollout of prompts [B, P], each repeated G times, and the tokens [B*G, R] sampled for them (anything
    after a row's first EOS is ignored), cut to the longest response; `logprobs` [B*G, R] of those tokens, or None."""
    is_eos = tokens == params.eos_token_id
    lengths = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, tokens.shape[1])
    width = int(lengths.max())
    g = params.num_samples
    prompts = prompt_ids.repeat_interleave(g, dim=0)
    rollout = rollout_from_sequences(
        torch.cat([prompts, tokens[:, :width]], dim=1),
        prompt_mask.repeat_interleave(g, dim=0),
        params.eos_token_id,
        params.pad_token_id,
    )
    if logprobs is not None:
        logprobs = torch.cat(
            [torch.zeros(prompts.shape, dtype=torch.float32, device=prompts.device), logprobs[:, :width]], 1
        )
        rollout.logprobs = logprobs.masked_fill(~rollout.response_mask.bool(), 0.0)
    return rollout


def rollout_from_sequences(sequences: Tensor, prompt_mask: Tensor, eos_token_id: int, pad_token_id: int) -> Rollout:
    """Masks recomputed from each response's first EOS; what generate put after it becomes padding."""
    p = prompt_mask.shape[1]
    response = sequences[:, p:]
    is_eos = response == eos_token_id
    finished = is_eos.any(-1)
    first_eos = torch.where(finished, is_eos.int().argmax(-1), response.shape[1])
    steps = torch.arange(response.shape[1], device=response.device)
    in_response = steps[None, :] <= first_eos[:, None]
    response = response.masked_fill(~in_response, pad_token_id)
    prompt_mask = prompt_mask.bool()
    return Rollout(
        sequences=torch.cat([sequences[:, :p], response], dim=1),
        attention_mask=torch.cat([prompt_mask, in_response], dim=1).long(),
        response_mask=torch.cat([torch.zeros_like(prompt_mask), in_response], dim=1).long(),
        prompt_length=p,
        finished=finished,
    )


def score(
    model: torch.nn.Module, rollout: Rollout, *, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Per-token log-probs [B, P + R] (float32) of the response tokens under softmax(logits / temperature).

    With `with_entropy`, also the entropy [B, P + R] of the distribution that predicted each response
    token. Both are 0 off the response. Gradients flow when the caller has them enabled (the policy);
    wrap the call in torch.no_grad for reference or old log-probs.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    # The head in chunks, response positions only: no [tokens x vocabulary] logits (ops/lm_head.py); on packed
    # rows, and with a prompt's samples sharing it, when the run asks (ops/layout.py).
    groups = consecutive_groups(rollout.sequences[:, : rollout.prompt_length])
    out = token_logprobs_and_entropy(
        model, rollout.sequences, rollout.attention_mask, rollout.response_mask, temperature=temperature, groups=groups
    )
    if out is not None:
        return out[0], out[1] if with_entropy else None
    # Only the logits that predict response tokens (positions P - 1 onwards): a long prompt's logits over
    # the vocabulary are never materialised.
    p = rollout.prompt_length
    width = rollout.sequences.shape[1] - p + 1
    logits = model_logits(model, rollout.sequences, rollout.attention_mask, keep_last=width)
    if temperature != 1.0:
        # Upcast before dividing, as generate does, so bf16 rounding does not differ from the sampler's.
        logits = logits.float() / temperature
    response = rollout.response_mask.bool()
    pad = torch.nn.functional.pad
    logprobs = pad(token_logprobs(logits, rollout.sequences[:, p - 1 :])[:, 1:], (p, 0)).masked_fill(~response, 0.0)
    if not with_entropy:
        return logprobs, None
    # Entropy at t is that of the distribution at t - 1, the one that predicted token t.
    entropy = pad(entropy_from_logits(logits[:, :-1]), (p, 0))
    return logprobs, entropy.masked_fill(~response, 0.0)


def decode_responses(tokenizer: PreTrainedTokenizerBase, rollout: Rollout) -> list[str]:
    """The response text of each row, its EOS and padding removed."""
    return _decode(tokenizer, rollout.sequences, rollout.response_mask)


def decode_prompts(tokenizer: PreTrainedTokenizerBase, rollout: Rollout) -> list[str]:
    """The prompt text of each row, padding and special tokens removed."""
    p = rollout.prompt_length
    return _decode(tokenizer, rollout.sequences[:, :p], rollout.attention_mask[:, :p])


def _decode(tokenizer: PreTrainedTokenizerBase, ids: Tensor, mask: Tensor) -> list[str]:
    rows = [row[keep.bool()].tolist() for row, keep in zip(ids.cpu(), mask.cpu(), strict=True)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)
