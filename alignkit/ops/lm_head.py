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

from alignkit.ops.layout import Layout, lay_out, padded
from alignkit.ops.logprobs import model_logits, position_ids, token_logprobs

TOKEN_CHUNK = 256  # positions per chunk of the head's matmul
VOCAB_CHUNK = 8192  # vocabulary entries per chunk: a [256 x 8192] float32 block is 8 MB


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


def layout_options(model: nn.Module) -> tuple[bool, bool]:
    """(padding-free, shared prompts) for the model's forwards: what the run set (`trainer.padding_free`,
    `trainer.shared_prompts` mark its models), else the default for its attention kernel: packed rows where the
    kernel is varlen (FlashAttention: no mask, no padding computed), padded rows with sdpa and eager (a packed
    row's mask is dense there, so its attention costs N^2 for N tokens; benchmarks/memory_ladder.py measures
    both); prompts shared only when asked."""
    kernel = getattr(getattr(model, "config", None), "_attn_implementation", None)
    pack = getattr(model, "alignkit_padding_free", None)
    share = getattr(model, "alignkit_shared_prompts", None)
    return (kernel == "flash_attention_2") if pack is None else pack, bool(share)


def layout_for(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, groups: Tensor | None = None) -> Layout:
    """The layout the model's options ask for (`layout_options`); `groups` [S] names the sequences that may share
    their common prefix (ignored unless prompts are shared)."""
    pack, share = layout_options(model)
    pad = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
    return lay_out(input_ids, attention_mask, pack=pack, groups=groups if share else None, pad_token_id=pad)


def model_inputs(model: nn.Module, layout: Layout) -> dict[str, Any]:
    """Keyword arguments of the model's forward for a layout; a 4-D mask in the form the attention kernel reads
    (sdpa: bool, True = attend; eager: added to the scores, 0 or the dtype's minimum)."""
    mask = layout.attention_mask
    if layout.kind == "shared":
        kernel = model.config._attn_implementation
        if kernel not in ("sdpa", "eager"):
            raise ValueError(
                f"shared prompts need a 4-D attention mask, which attn_implementation '{kernel}' does not take; "
                "use 'sdpa' or 'eager', or set trainer.shared_prompts: false"
            )
        if kernel == "eager":
            dtype = next(model.parameters()).dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return {
        "input_ids": layout.input_ids,
        "attention_mask": mask,
        "position_ids": layout.position_ids,
        "use_cache": False,  # with a cache, transformers stops telling packed sequences apart
    }


@contextmanager
def lean_head(model: nn.Module, index: Tensor, targets: Tensor, temperature: float = 1.0) -> Iterator[None]:
    """While the model runs, its head returns [1, K, 2] float32: (log p(targets[k]), entropy) from the hidden state
    at flat position `index[k]` of the [R, L] positions it receives, computed by `chunked_token_logprobs`. An
    index may repeat (a shared prompt's last token predicts the first token of every completion)."""
    head = model.get_output_embeddings()

    def forward(hidden: Tensor) -> Tensor:
        rows = hidden.flatten(0, 1)[index]
        logp, entropy = chunked_token_logprobs(rows, head.weight, head.bias, targets, temperature=temperature)
        return torch.stack([logp, entropy], -1)[None]

    head.forward = forward  # an instance attribute: the module's hooks (FSDP's) still run around it
    try:
        yield
    finally:
        del head.forward


def scored_positions(attention_mask: Tensor, mask: Tensor) -> Tensor:
    """[B, T] bool: the positions whose log-probs count where `mask` is set, the real tokens that something predicts
    (a sequence's first token is predicted by nothing). `sequence_logprobs` sums over these, so their count per row
    turns its sums into per-token means without another forward."""
    return mask.bool() & attention_mask.bool() & (position_ids(attention_mask) > 0)


def _scored(input_ids: Tensor, attention_mask: Tensor, mask: Tensor, layout: Layout) -> tuple[Tensor, Tensor, Tensor]:
    """(positions [S, T] bool that are scored, the layout index of the state predicting each, its target id):
    position t of a row is predicted by its position t - 1, and a sequence's first token by nothing."""
    scored = scored_positions(attention_mask, mask)
    rows, cols = scored.nonzero(as_tuple=True)
    return scored, layout.where[rows, cols - 1], input_ids[rows, cols]


def _unscatter(scored: Tensor, values: Tensor) -> Tensor:
    return values.new_zeros(scored.shape).masked_scatter(scored, values)


def lean_token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    mask: Tensor,
    *,
    temperature: float = 1.0,
    layout: Layout | None = None,
) -> tuple[Tensor, Tensor]:
    """(log p(x_t | x_<t), entropy of the distribution that predicted x_t), each [B, T] float32, at the positions
    t where `mask` [B, T] is set (0 elsewhere and at each sequence's first token): what
    `token_logprobs(model_logits(...))` gives there, without the [B, T, V] logits. The model runs on `layout`
    (default: the padded batch itself, position ids from the attention mask, as in `model_logits`)."""
    layout = layout if layout is not None else padded(input_ids, attention_mask)
    scored, index, targets = _scored(input_ids, attention_mask, mask, layout)
    with lean_head(model, index, targets, temperature):
        out = model(**model_inputs(model, layout)).logits[0]
    return _unscatter(scored, out[:, 0]), _unscatter(scored, out[:, 1])


def laid_out_plain_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    mask: Tensor,
    layout: Layout,
    *,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """`lean_token_logprobs` from the model's own [R, L, V] logits (heads the chunks do not reproduce)."""
    scored, index, targets = _scored(input_ids, attention_mask, mask, layout)
    logits = model(**model_inputs(model, layout)).logits.flatten(0, 1)[index].float() / temperature
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(1, targets[:, None]).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return _unscatter(scored, logp), _unscatter(scored, entropy)


def token_logprobs_and_entropy(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    mask: Tensor,
    *,
    temperature: float = 1.0,
    groups: Tensor | None = None,
) -> tuple[Tensor, Tensor] | None:
    """(log-probs, entropy) [B, T] at the `mask` positions, through the head in chunks where the model allows it
    (`lean_supported`) and on the layout its options ask for (`layout_for`; `groups` for shared prompts). None
    when neither applies: the caller's own plain path on the padded batch is then the computation."""
    layout = layout_for(model, input_ids, attention_mask, groups)
    if lean_supported(model):
        return lean_token_logprobs(model, input_ids, attention_mask, mask, temperature=temperature, layout=layout)
    if layout.kind == "padded":
        return None
    return laid_out_plain_logprobs(model, input_ids, attention_mask, mask, layout, temperature=temperature)


def completion_logprobs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, mask: Tensor, groups: Tensor | None = None
) -> Tensor:
    """log p(x_t | x_<t), [B, T] float32, at the positions `mask` sets and 0 elsewhere: through
    `token_logprobs_and_entropy`, else from the plain [B, T, V] logits of the padded batch."""
    out = token_logprobs_and_entropy(model, input_ids, attention_mask, mask, groups=groups)
    if out is not None:
        return out[0]
    return token_logprobs(model_logits(model, input_ids, attention_mask), input_ids) * mask


def sequence_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    groups: Tensor | None = None,
) -> Tensor:
    """log p(completion | prompt) of each row, [B]: token log-probs summed over the completion tokens.

    Position ids come from the mask, so a row gives the same number however it is padded (left, right, or
    batched with longer rows); padding and prompt tokens never count. `groups`: rows that may share a prompt.
    """
    return completion_logprobs(model, input_ids, attention_mask, completion_mask, groups).sum(-1)
