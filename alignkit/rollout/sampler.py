"""The built-in rollout engine: a preallocated KV cache, one prefill per prompt, finished rows leaving the batch.

What it does that Hugging Face `generate` does not, for the same samples:

- The prompt is run once (the prefill) and its keys and values are written G times into the cache, once per
  sample; `generate` runs every prompt G times.
- The cache is allocated once for the longest possible rollout (prompt + max_new_tokens columns), and every
  decode step writes one column in place; a growing cache copies itself at every step.
- A row that has produced its EOS leaves the batch: the last live row moves into its slot, so a decode step
  computes live rows only; `generate` decodes padding for finished rows until the longest one stops.
- The sampling math is float32 whatever the model's dtype: logits / temperature, the top-p nucleus, the draw.
  It returns the log-probability of every sampled token under softmax(logits / temperature), the distribution
  `score` computes, so a trainer can use them as the old log-probs instead of running the policy again.
- On CUDA, each decode step can run as a captured graph (`torch.compile(mode="reduce-overhead")`): the cache
  is then read at its full length under a mask, and live rows are padded to a bucket of fixed sizes (powers of
  two), so a step's shapes, and its graph, repeat.

Greedy decoding gives `generate`'s tokens (the same forwards; only the batch composition differs), and the
log-probs equal `score`'s within float32 rounding; tests/unit/test_sampler.py holds both.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

from alignkit.models.modes import eval_mode
from alignkit.ops.logprobs import position_ids as mask_positions
from alignkit.rollout.engine import RolloutEngine
from alignkit.rollout.rollout import Rollout, SamplingParams, check_prompts, rollout_from_tokens


class SlotLayer(CacheLayerMixin):
    """One attention layer's keys and values for `rows` sequences of up to `capacity` tokens, allocated once.

    Live rows occupy slots 0..n-1 (n = the decode batch); `move` refills a finished row's slot with a live one.
    Column j holds token j of every row: the left-padded prompt, then one column per decoding step.
    During the prefill (`expand` = G) the prompt's keys and values are written into G consecutive slots each,
    and the prompt attends to its own keys only.

    `static` (captured decode steps): the write position is a tensor updated in place (`position`), and a
    step reads all `capacity` columns under the mask, so its shapes never change.
    """

    is_compileable = False
    is_sliding = False
    is_croppable = False

    def __init__(self, rows: int, capacity: int, position: Tensor | None = None) -> None:
        super().__init__()
        self.rows, self.capacity = rows, capacity
        self.length = 0  # columns filled
        self.expand = 0  # during a prefill: the slots each prompt row is written into (G); 0 otherwise
        self.position = position  # static mode: 0-dim long tensor, the column the next token goes to
        self.is_compileable = position is not None

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.device = key_states.device
        heads = key_states.shape[1]
        shape = (self.rows, heads, self.capacity)
        # a static step reads every column, masked ones too: zeros there, as garbage could hold NaNs (0 * NaN)
        new = torch.zeros if self.position is not None else torch.empty
        self.keys = new((*shape, key_states.shape[-1]), dtype=key_states.dtype, device=self.device)
        self.values = new((*shape, value_states.shape[-1]), dtype=value_states.dtype, device=self.device)
        if self.position is not None:
            torch._dynamo.mark_static_address(self.keys)
            torch._dynamo.mark_static_address(self.values)
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, heads, q, _ = key_states.shape
        s = self.length
        if self.expand:  # prefill: every prompt into its G slots, attending to itself
            g = self.expand
            self.keys.view(n, g, heads, self.capacity, -1)[:, :, :, s : s + q].copy_(key_states.unsqueeze(1))
            self.values.view(n, g, heads, self.capacity, -1)[:, :, :, s : s + q].copy_(value_states.unsqueeze(1))
            self.length = s + q
            return key_states, value_states
        if self.position is not None:  # static: one token at `position`, all columns read
            index = self.position.view(1)
            self.keys[:n].index_copy_(2, index, key_states)
            self.values[:n].index_copy_(2, index, value_states)
            return self.keys[:n], self.values[:n]
        self.keys[:n, :, s : s + q] = key_states
        self.values[:n, :, s : s + q] = value_states
        self.length = s + q
        return self.keys[:n, :, : s + q], self.values[:n, :, : s + q]

    def move(self, dst: Tensor, src: Tensor) -> None:
        """Copy the filled columns of slots `src` into slots `dst`."""
        if self.is_initialized:
            self.keys[dst, :, : self.length] = self.keys[src, :, : self.length]
            self.values[dst, :, : self.length] = self.values[src, :, : self.length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if self.position is not None and not self.expand:
            return self.capacity, 0
        return self.length + query_length, 0

    def get_seq_length(self) -> Any:
        if self.position is not None and not self.expand:
            return self.position
        return self.length

    def get_max_length(self) -> int:
        return self.capacity


class SlotCache(Cache):
    """A `SlotLayer` per decoder layer; `prefill(G)` and `move` act on all of them."""

    def __init__(self, num_layers: int, rows: int, capacity: int, static: bool = False, device: Any = None) -> None:
        position = torch.zeros((), dtype=torch.long, device=device) if static else None
        if position is not None:
            torch._dynamo.mark_static_address(position)
        super().__init__(layers=[SlotLayer(rows, capacity, position) for _ in range(num_layers)])
        self.position = position
        self.capacity = capacity

    def prefilling(self, g: int) -> None:
        """The next forward is a prefill whose rows each fill `g` slots (0: decoding again)."""
        for layer in self.layers:
            layer.expand = g

    def move(self, dst: Tensor, src: Tensor) -> None:
        for layer in self.layers:
            layer.move(dst, src)

    def rewind(self) -> None:
        """Empty, for the next prefill (a kept static cache's old columns are overwritten or masked)."""
        for layer in self.layers:
            layer.length = 0

    def seek(self, column: int) -> None:
        """Static mode: the next token goes to `column`."""
        self.position.fill_(column)
        for layer in self.layers:
            layer.length = column + 1  # the columns filled once this step has run (what `move` copies)


def supports_slot_cache(model: torch.nn.Module) -> str | None:
    """None if the model's attention layers all keep a plain key/value cache (what SlotLayer replaces), else why
    not: linear-attention, sliding-window-only or indexed layers keep other state."""
    from transformers import DynamicCache

    try:
        probe = DynamicCache(config=model.config)
    except Exception as err:  # a config DynamicCache cannot read
        return f"its config does not describe its cache ({err})"
    kinds = {type(layer) for layer in probe.layers}
    odd = sorted(k.__name__ for k in kinds if k is not DynamicLayer and k.__name__ != "DynamicSlidingWindowLayer")
    return f"its layers keep {', '.join(odd)} state" if odd else None


def _num_layers(model: torch.nn.Module) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ValueError(f"cannot tell how many layers {type(model).__name__} has from its config")


def sample_tokens(logits: Tensor, params: SamplingParams) -> tuple[Tensor, Tensor]:
    """(token [n], its log-prob [n]) from next-token logits [n, V], in float32.

    The log-prob is under softmax(logits / temperature), the distribution `score` computes, also for greedy
    decoding (whose token is the argmax of the logits) and under top-p (whose draw is from the nucleus).
    """
    logits = logits.float()
    if params.temperature != 1.0:
        logits = logits / params.temperature
    normaliser = torch.logsumexp(logits, dim=-1, keepdim=True)
    if params.greedy:
        tokens = logits.argmax(-1)
    else:
        probs = (logits - normaliser).exp_()
        if params.top_p < 1.0:
            probs = _top_p(probs, params.top_p)
        tokens = _draw(probs)
    return tokens, (logits.gather(-1, tokens[:, None]) - normaliser).squeeze(-1)


def _draw(probs: Tensor) -> Tensor:
    """One token per row, drawn with probability proportional to `probs` [n, V].

    On CPU: the row's cumulative distribution (float64, so a 150k vocabulary's tail keeps its widths) inverted
    at one uniform number per row. torch.multinomial draws an exponential per vocabulary entry instead, which
    took most of a CPU decode step at Qwen's 151,936 entries (benchmarks/rollout_speed.py). On CUDA, where those
    draws are cheap and a float64 [n, V] copy is not, torch.multinomial.
    """
    if probs.device.type == "cuda":
        return torch.multinomial(probs, 1).squeeze(-1)
    cdf = probs.double().cumsum_(-1)
    u = torch.rand((len(probs), 1), dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    # right=True: the first entry whose cumulative mass exceeds u, never one of probability 0
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def _top_p(probs: Tensor, top_p: float) -> Tensor:
    """Probabilities outside the nucleus zeroed: the most likely tokens whose mass first reaches top_p are kept
    (Holtzman et al. 2020), as transformers' TopPLogitsWarper keeps them (ties broken by the sort)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


class BuiltinEngine(RolloutEngine):
    """alignkit's sampler: one prefill per prompt shared by its samples, a preallocated cache, finished rows leave
    the batch, float32 sampling; returns the sampled tokens' log-probs. CUDA graphs for the decode step on GPU."""

    name = "builtin"
    returns_logprobs = True

    def __init__(self, spec: Any = None, *, static: bool | None = None) -> None:
        """`spec`: the run's RolloutSpec (its `compile`). `static` forces the static-shape decode step on or off
        whatever `compile` says (tests run it uncompiled on CPU)."""
        self.compile = "auto" if spec is None else spec.compile
        self.static = static
        # static mode: the cache and the compiled step are kept between calls (their addresses are part of a
        # captured graph), one per (model, rows, capacity)
        self._static: dict[tuple[int, int, int], tuple[SlotCache, Any]] = {}

    def _compiles(self, model: torch.nn.Module, device: torch.device) -> bool:
        """`compile: auto` compiles on CUDA, for models that are not sharded: an FSDP2 model's forward all-gathers
        its parameters, which a captured graph cannot hold."""
        if self.compile != "auto":
            return bool(self.compile)
        return device.type == "cuda" and not any(isinstance(p, DTensor) for p in model.parameters())

    def generate(
        self, model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, params: SamplingParams
    ) -> Rollout:
        check_prompts(prompt_ids, prompt_mask, params)
        why = supports_slot_cache(model)
        if why is not None:
            raise ValueError(
                f"rollout.engine builtin cannot sample from {type(model).__name__}: {why}; "
                "set rollout.engine: hf (transformers' generate)"
            )
        with eval_mode(model), torch.no_grad():
            return self._generate(model, prompt_ids, prompt_mask, params)

    def _generate(self, model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, p: SamplingParams) -> Rollout:
        device = prompt_ids.device
        b, width = prompt_ids.shape
        g, steps = p.num_samples, p.max_new_tokens
        n = b * g  # rows, sample j of prompt i at row i * g + j
        compiles = self._compiles(model, device)
        static = compiles if self.static is None else self.static
        if static:
            # a fixed capacity for prompts up to a multiple of 64 tokens wide, so that the step's shapes repeat
            cache, decode = self._static_step(model, n, -(-width // 64) * 64 + steps, compiles)
            cache.rewind()
        else:
            cache, decode = SlotCache(_num_layers(model), n, width + steps), None

        # Prefill: each prompt once, its keys and values into its G slots; the logits of its last token only.
        cache.prefilling(g)
        logits = model(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            position_ids=mask_positions(prompt_mask),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        cache.prefilling(0)
        logits = logits.repeat_interleave(g, dim=0)

        tokens = torch.full((n, steps), p.pad_token_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((n, steps), dtype=torch.float32, device=device)
        # Per slot (live rows first): its row, attention mask over the cache's columns, next position.
        row = torch.arange(n, device=device)
        mask = torch.zeros((n, cache.capacity), dtype=torch.long, device=device)
        mask[:, :width] = prompt_mask.long().repeat_interleave(g, dim=0)
        position = prompt_mask.long().sum(-1).repeat_interleave(g, dim=0)
        live = n

        for t in itertools.count():
            if t < steps and live:  # `logits` predict the next token of slots 0..live-1
                token, logprob = sample_tokens(logits, p)
                tokens[row[:live], t] = token
                logprobs[row[:live], t] = logprob
                mask[:live, width + t] = 1
                done = token == p.eos_token_id
                if done.any():
                    live = _leave(cache, done, row, mask, position, token, live)
            decoding = live if t + 1 < steps else 0
            # Under `synced` every rank makes one forward per round while any rank decodes: a rank with nothing
            # left runs a dummy one, so that a sharded model's all-gathers stay paired across ranks.
            if not (_any_rank_live(decoding, device) if p.synced else decoding):
                break
            if not decoding:
                model(input_ids=token[:1, None], use_cache=False)
                continue
            column = width + t
            if decode is None:
                logits = _step(model, cache, token[:live], mask[:live, : column + 1], position[:live])
            else:
                cache.seek(column)
                logits = decode(token[:live], mask[:live], position[:live])
            position[:live] += 1
        return rollout_from_tokens(prompt_ids, prompt_mask, tokens, logprobs, p)

    def _static_step(self, model: Any, rows: int, capacity: int, compiles: bool) -> tuple[SlotCache, Any]:
        """(cache, step) for static shapes: live rows padded to a bucket (powers of two from 8, and `rows`), the
        whole cache read under the mask; the step compiled (CUDA graphs on GPU) when `compiles`."""
        key = (id(model), rows, capacity)
        if key in self._static:
            return self._static[key]
        device = next(model.parameters()).device
        cache = SlotCache(_num_layers(model), rows, capacity, static=True, device=device)
        step = _step
        if compiles:
            mode = "reduce-overhead" if device.type == "cuda" else None  # reduce-overhead = CUDA graphs
            step = torch.compile(_step, mode=mode, dynamic=False)
            # one graph per (rows, capacity, bucket), all of `_step`'s code: training's and evaluation's row counts
            # with their buckets pass dynamo's default of 8, after which it would fall back to eager
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        buckets = sorted({min(rows, 2**k) for k in range(3, rows.bit_length() + 1)} | {rows})

        def decode(token: Tensor, mask: Tensor, position: Tensor) -> Tensor:
            n = len(token)
            b = next(size for size in buckets if size >= n)
            if b > n:  # padding rows repeat the first live row; their outputs are dropped
                fill = torch.zeros(b - n, dtype=torch.long, device=token.device)
                token, mask, position = (torch.cat([x, x[fill]]) for x in (token, mask, position))
            return step(model, cache, token, mask, position)[:n]

        self._static[key] = (cache, decode)
        return cache, decode


def _step(model: Any, cache: SlotCache, token: Tensor, mask: Tensor, position: Tensor) -> Tensor:
    """Next-token logits [n, V] after one more token per live row (the decode step)."""
    return model(
        input_ids=token[:, None],
        attention_mask=mask,
        position_ids=position[:, None],
        cache=cache,
        use_cache=True,
    ).logits[:, -1]


def _leave(
    cache: SlotCache, done: Tensor, row: Tensor, mask: Tensor, position: Tensor, token: Tensor, live: int
) -> int:
    """Finished rows leave the batch: each slot freed below the new live count takes a live row from above it, so
    live rows stay in slots 0..n-1 and only as many rows move as have finished. Returns n."""
    keep = ~done
    new_live = int(keep.sum())
    slots = torch.arange(live, device=done.device)
    holes = slots[:new_live][done[:new_live]]
    movers = slots[new_live:][keep[new_live:]]
    if len(holes):
        cache.move(holes, movers)
        row[holes] = row[movers]
        mask[holes] = mask[movers]
        position[holes] = position[movers]
        token[holes] = token[movers]
    return new_live


def _any_rank_live(live: int, device: torch.device) -> bool:
    flag = torch.tensor([float(live > 0)], device=device)
    torch.distributed.all_reduce(flag)
    return bool(flag.item() > 0)
