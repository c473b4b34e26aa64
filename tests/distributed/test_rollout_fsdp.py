"""Rollouts from an FSDP2-sharded policy on two CPU processes (gloo) agree with the unsharded model, for both
rollout engines, with ranks that finish decoding at different steps."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORLD_SIZE = 2
# Each rank its own prompts (left padding inside each batch) and its own budget: rank 0 is done after 3
# steps and must keep joining rank 1's all-gathers for 7 more, which only synced generation does (without
# it rank 1 would wait forever on the first all-gather rank 0 skips).
PROMPTS = {0: ["a longer prompt on rank zero", "hi"], 1: ["rank one", "x", "medium prompt"]}
MAX_NEW_TOKENS = {0: 3, 1: 10}


def rendezvous(tmp_path) -> str:
    """A file store for the process group: a TCP port picked free and released before rank 0 binds it can be
    taken meanwhile (even by rank 1's own connecting socket), which failed a run now and then."""
    return f"file://{tmp_path / 'rendezvous'}"


def worker(rank: int, init_method: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from alignkit.models import ModelSpec, build_causal_lm, byte_tokenizer
    from alignkit.rollout.generate import generate
    from alignkit.rollout.rollout import SamplingParams, score
    from alignkit.rollout.sampler import BuiltinEngine

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD_SIZE)
    try:
        tok = byte_tokenizer()
        tok.padding_side = "left"
        spec = ModelSpec(architecture="llama", hidden_size=32, num_layers=2, num_heads=2)
        reference = build_causal_lm(spec, tok)  # same init_seed on both ranks: the same weights
        sharded = build_causal_lm(spec, tok)
        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        for layer in sharded.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(sharded, mesh=mesh)

        batch = tok(PROMPTS[rank], return_tensors="pt", padding=True)
        kw = {"max_new_tokens": MAX_NEW_TOKENS[rank], "eos_token_id": tok.eos_token_id, "pad_token_id": 0}
        got = generate(sharded, batch["input_ids"], batch["attention_mask"], greedy=True, synced=True, **kw)
        expected = generate(reference, batch["input_ids"], batch["attention_mask"], greedy=True, **kw)

        assert got.sequences.shape == (len(PROMPTS[rank]), batch["input_ids"].shape[1] + MAX_NEW_TOKENS[rank])
        assert torch.equal(got.sequences, expected.sequences)
        assert torch.equal(got.attention_mask, expected.attention_mask)
        assert torch.equal(got.response_mask, expected.response_mask)
        assert torch.equal(got.finished, expected.finished)
        # scoring is a plain forward of the sharded model: the same per-token log-probs
        torch.testing.assert_close(score(sharded, got)[0], score(reference, expected)[0], atol=1e-5, rtol=1e-5)

        # The built-in engine, eager and static-shape, G = 2: rank 0 runs out of rows after 3 steps and keeps
        # making dummy forwards while rank 1 decodes; its rows leave the batch and it prefills each prompt once.
        expected = generate(reference, batch["input_ids"], batch["attention_mask"], greedy=True, num_samples=2, **kw)
        params = SamplingParams(greedy=True, num_samples=2, synced=True, **kw)
        for static in (False, True):
            got = BuiltinEngine(static=static).generate(sharded, batch["input_ids"], batch["attention_mask"], params)
            assert torch.equal(got.sequences, expected.sequences), static
            assert torch.equal(got.finished, expected.finished), static
            torch.testing.assert_close(got.logprobs, score(reference, expected)[0], atol=1e-5, rtol=0)
    finally:
        dist.destroy_process_group()


def test_synced_greedy_generation_under_fsdp_matches_the_unsharded_model(tmp_path) -> None:
    mp.spawn(worker, args=(rendezvous(tmp_path),), nprocs=WORLD_SIZE, join=True)
