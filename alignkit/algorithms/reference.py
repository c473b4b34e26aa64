"""Sequence log-probs of a batch's sequences in one forward (and their token counts); the frozen reference model's:
a forward every step, or a cache filled once before training."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import Tensor

from alignkit.data.collate import concat_sequences
from alignkit.data.loader import ShardedSampler
from alignkit.ops import sequence_logprobs
from alignkit.ops.layout import pair_groups
from alignkit.ops.lm_head import scored_positions

log = logging.getLogger(__name__)


def forward_logps(model: torch.nn.Module, batch: dict[str, Tensor], prefixes: tuple[str, ...]) -> Tensor:
    """[B, len(prefixes)] sequence log-probs of each prefix's sequences, in one forward; a row's sequences (a
    pair's chosen and rejected) share their prompt when the run asks for it (`trainer.shared_prompts`)."""
    ids, attention, completion = concat_sequences(batch, prefixes)
    rows = len(ids) // len(prefixes)
    logps = sequence_logprobs(model, ids, attention, completion, pair_groups(rows, len(prefixes), ids.device))
    return logps.view(len(prefixes), -1).T


def completion_lengths(batch: dict[str, Tensor], prefixes: tuple[str, ...]) -> Tensor:
    """[B, len(prefixes)] the number of tokens each of `forward_logps`'s log-probs sums over, read from the masks:
    its sums divided by these are per-token means (length-normalised log-probs) without another forward."""
    _, attention, completion = concat_sequences(batch, prefixes)
    counts = scored_positions(attention, completion).sum(-1)
    return counts.view(len(prefixes), -1).T


def reference_logps(module: Any, batch: dict[str, Tensor], prefixes: tuple[str, ...], split: str) -> Tensor:
    """[B, len(prefixes)] reference log-probs: from the precomputed cache when there is one, else a forward."""
    cache: dict[str, Tensor] | None = getattr(module, "ref_cache", None)
    if cache is not None:
        return cache[split][batch["index"].cpu()].to(module.device)
    with torch.no_grad():
        return forward_logps(module.reference, batch, prefixes)


@torch.no_grad()
def precompute_reference_logps(module: Any, prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """{split: [N, len(prefixes)]} reference log-probs of every row of the train and eval sets.

    Each rank computes its share (so a sharded reference works: all ranks forward in step) and the shares
    are gathered, so every rank holds the whole table. Called from `on_fit_start`, after sharding.
    """
    trainer, data = module.trainer, module.trainer.datamodule
    start = time.perf_counter()
    cache = {}
    for split, dataset in (("train", data.train_set), ("eval", data.eval_set)):
        if dataset is None:
            continue
        sampler = ShardedSampler(
            len(dataset), rank=trainer.global_rank, world=trainer.world_size, seed=0, shuffle=False
        )
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=module.cfg.trainer.micro_batch_size, sampler=sampler, collate_fn=data.collator
        )
        indices, values = [], []
        for batch in loader:
            batch = {k: v.to(module.device) for k, v in batch.items()}
            indices.append(batch["index"])
            values.append(forward_logps(module.reference, batch, prefixes).float())
        index, value = torch.cat(indices), torch.cat(values)
        if trainer.world_size > 1:  # every rank has as many rows (the sampler pads), so shapes agree
            index, value = module.all_gather(index).flatten(), module.all_gather(value).flatten(0, 1)
        table = torch.full((len(dataset), len(prefixes)), float("nan"))
        table[index.cpu()] = value.cpu()
        cache[split] = table
    log.info(
        f"reference log-probs of {sum(len(t) for t in cache.values())} rows precomputed in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return cache


def fill_reference_cache(module: Any, prefixes: tuple[str, ...]) -> None:
    """Set `module.ref_cache` once, when the algorithm asks for precomputed reference log-probs (on_fit_start)."""
    if module.algo.precompute_ref_logps and getattr(module, "ref_cache", None) is None:
        module.ref_cache = precompute_reference_logps(module, prefixes)
