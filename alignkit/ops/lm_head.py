"""Log-probabilities (and entropy) of chosen tokens through the LM head in chunks: no [tokens x vocabulary]
tensor ever exists.

With a real vocabulary (Llama 3: 128,256 tokens; Qwen 2.5: 151,936) the logits, their float32 copy and the
log-softmax kept for backward are the largest tensors of a training step, larger than the weights of a small
model. Here only the positions whose loss counts go through the head, a chunk of tokens and a slice of the
vocabulary at a time, with an online log-sum-exp in float32; backward recomputes each chunk's logits instead
of keeping them. The plain path (`alignkit.ops.logprobs.token_logprobs` on the model's logits) stays as the
reference these functions are tested equal to, values and gradients.

The head runs inside the model's own forward: `lean_head` swaps the output embedding's `forward` for the
chunked computation while the model is called, so whatever the model's forward does to gather its weights
(FSDP2's pre-forward all-gather of the root's parameters, tied embeddings) has happened when the head reads
them, and FSDP's backward hooks see the weight's gradient as they would a plain `nn.Linear`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.ops.logprobs import model_logits, position_ids, token_logprobs

TOKEN_CHUNK = 1024  # positions per chunk of the head's matmul
VOCAB_CHUNK = 32768  # vocabulary entries per chunk: a [1024 x 32768] float32 block is 128 MB at most


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class ChunkedTokenLogprobs(torch.autograd.Function):
    """(log p(target), entropy) per row of `hidden` [N, H] under softmax((hidden W^T + b) / temperature).

    Forward keeps, per row, only the log-sum-exp and the expected logit (for the entropy); backward recomputes
    the logits chunk by chunk. The gradient of the log-prob wrt logit z_j is 1[j = y] - p_j; of the entropy
    H = lse(z) - sum_i p_i z_i it is -p_j (z_j - E_p[z]); both are divided by the temperature.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        temperature: float,
        token_chunk: int,
        vocab_chunk: int,
    ) -> tuple[Tensor, Tensor]:
        n, v = hidden.shape[0], weight.shape[0]
        lse = hidden.new_empty(n, dtype=torch.float32)
        mean_z = hidden.new_empty(n, dtype=torch.float32)
        target_z = hidden.new_empty(n, dtype=torch.float32)
        for rows in _chunks(n, token_chunk):
            h = hidden[rows]
            m = torch.full((h.shape[0],), -torch.inf, device=h.device)  # running max
            s = torch.zeros(h.shape[0], device=h.device)  # sum of exp(z - m)
            sz = torch.zeros(h.shape[0], device=h.device)  # sum of exp(z - m) * z
            y = targets[rows]
            for cols in _chunks(v, vocab_chunk):
                z = _logits(h, weight, bias, cols) / temperature
                new_m = torch.maximum(m, z.max(-1).values)
                scale = torch.exp(m - new_m)
                e = torch.exp(z - new_m[:, None])
                s = s * scale + e.sum(-1)
                sz = sz * scale + (e * z).sum(-1)
                m = new_m
                inside = (y >= cols.start) & (y < cols.stop)
                if inside.any():
                    picked = z.gather(1, (y - cols.start).clamp(0, z.shape[1] - 1)[:, None]).squeeze(1)
                    target_z[rows] = torch.where(inside, picked, target_z[rows])
            lse[rows] = m + torch.log(s)
            mean_z[rows] = sz / s
        ctx.save_for_backward(hidden, weight, bias, targets, lse, mean_z)
        ctx.temperature, ctx.token_chunk, ctx.vocab_chunk = temperature, token_chunk, vocab_chunk
        return target_z - lse, lse - mean_z

    @staticmethod
    def backward(ctx: Any, grad_logp: Tensor, grad_entropy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        hidden, weight, bias, targets, lse, mean_z = ctx.saved_tensors
        t = ctx.temperature
        need_h, need_w, need_b = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        grad_logp = grad_logp.float()
        grad_entropy = grad_entropy.float()
        for rows in _chunks(hidden.shape[0], ctx.token_chunk):
            h, y = hidden[rows], targets[rows]
            gl, ge = grad_logp[rows, None], grad_entropy[rows, None]
            acc_h = torch.zeros(h.shape, dtype=torch.float32, device=h.device) if need_h else None
            for cols in _chunks(weight.shape[0], ctx.vocab_chunk):
                z = _logits(h, weight, bias, cols) / t
                p = torch.exp(z - lse[rows, None])
                g = -p * (gl + ge * (z - mean_z[rows, None]))
                inside = (y >= cols.start) & (y < cols.stop)
                rows_in = inside.nonzero().squeeze(1)
                g[rows_in, y[rows_in] - cols.start] += gl[rows_in, 0]
                g = (g / t).to(hidden.dtype)  # the logits' gradient, in the dtype the matmul ran in
                if need_h:
                    acc_h += (g @ weight[cols]).float()
                if need_w:
                    grad_w[cols] += (g.T @ h).float()
                if need_b:
                    grad_b[cols] += g.float().sum(0)
            if need_h:
                grad_h[rows] = acc_h.to(hidden.dtype)
        return (
            grad_h,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
            None,
            None,
            None,
            None,
        )


def _logits(h: Tensor, weight: Tensor, bias: Tensor | None, cols: slice) -> Tensor:
    """One block of logits, computed in the model's dtype as its head would, then float32 (the plain path's
    `logits.float()`)."""
    return F.linear(h, weight[cols], None if bias is None else bias[cols]).float()


def chunked_token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    token_chunk: int = TOKEN_CHUNK,
    vocab_chunk: int = VOCAB_CHUNK,
) -> tuple[Tensor, Tensor]:
    """(log p(targets), entropy), each [N] float32, of rows `hidden` [N, H] through the head (weight [V, H])."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    return ChunkedTokenLogprobs.apply(hidden, weight, bias, targets, temperature, token_chunk, vocab_chunk)


def lean_supported(model: nn.Module) -> bool:
    """Whether the model's head is a plain linear map this module reproduces: no logit scaling or soft-capping
    (Gemma 2's `final_logit_softcapping`, Cohere's `logit_scale`), which the plain path then handles; and the
    run did not ask for the plain path (`trainer.chunked_logprobs: false` marks its models)."""
    if getattr(model, "alignkit_plain_head", False):
        return False
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = getattr(model, "config", None)
    special = any(getattr(config, k, None) not in (None, 1.0) for k in ("final_logit_softcapping", "logit_scale"))
    return isinstance(head, nn.Linear) and not special


@contextmanager
def lean_head(model: nn.Module, targets: Tensor, mask: Tensor, temperature: float = 1.0) -> Iterator[None]:
    """While the model runs, its head returns [B, T, 2] float32: (log p(targets[b, t]), entropy) at each position
    t where `mask` is set, computed by `chunked_token_logprobs` from that position's hidden state, and 0
    elsewhere. `targets` and `mask` are [B, T], aligned with the positions the head receives."""
    head = model.get_output_embeddings()

    def forward(hidden: Tensor) -> Tensor:
        keep = mask.bool()
        logp, entropy = chunked_token_logprobs(
            hidden[keep], head.weight, head.bias, targets[keep], temperature=temperature
        )
        out = hidden.new_zeros(*hidden.shape[:2], 2, dtype=torch.float32)
        return out.index_put((keep,), torch.stack([logp, entropy], -1))

    head.forward = forward  # an instance attribute: the module's hooks (FSDP's) still run around it
    try:
        yield
    finally:
        del head.forward


def lean_token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    mask: Tensor,
    *,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """(log p(x_t | x_<t), entropy of the distribution that predicted x_t), each [B, T] float32, at the positions
    t where `mask` [B, T] is set (0 elsewhere and at t = 0): what `token_logprobs(model_logits(...))` gives
    there, without the [B, T, V] logits. Position ids come from the attention mask, as in `model_logits`."""
    targets = F.pad(input_ids[:, 1:], (0, 1))
    predicts = F.pad(mask[:, 1:].bool(), (0, 1))  # position t's hidden state predicts token t + 1
    with lean_head(model, targets, predicts, temperature):
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
        ).logits
    out = F.pad(out[:, :-1], (0, 0, 1, 0))
    return out[..., 0], out[..., 1]


def completion_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, mask: Tensor) -> Tensor:
    """log p(x_t | x_<t), [B, T] float32, at the positions `mask` sets and 0 elsewhere: through the head in chunks
    where the model's head allows it (`lean_supported`), else from the plain [B, T, V] logits."""
    if lean_supported(model):
        return lean_token_logprobs(model, input_ids, attention_mask, mask)[0]
    return token_logprobs(model_logits(model, input_ids, attention_mask), input_ids) * mask


def sequence_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor) -> Tensor:
    """log p(completion | prompt) of each row, [B]: token log-probs summed over the completion tokens.

    Position ids come from the mask, so a row gives the same number however it is padded (left, right, or
    batched with longer rows); padding and prompt tokens never count.
    """
    return completion_logprobs(model, input_ids, attention_mask, completion_mask).sum(-1)
