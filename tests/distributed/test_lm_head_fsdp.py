"""The chunked LM head under FSDP2 on two CPU processes (gloo): the head's weight is gathered by the model's
own forward, and values and gradients equal the plain path of an unsharded copy, on padded rows and on a packed
row whose pair shares its prompt (each rank's row of another length)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_rollout_fsdp import rendezvous

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORLD_SIZE = 2


def worker(rank: int, init_method: str, tied: bool) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignkit.ops.layout import lay_out
    from alignkit.ops.lm_head import lean_token_logprobs
    from alignkit.ops.logprobs import model_logits, token_logprobs

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD_SIZE)
    try:
        config = LlamaConfig(
            vocab_size=500,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=tied,
        )
        torch.manual_seed(0)
        reference = LlamaForCausalLM(config)
        sharded = LlamaForCausalLM(config)
        sharded.load_state_dict(reference.state_dict())
        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        for layer in sharded.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(sharded, mesh=mesh)  # the head and embeddings: the root's group, gathered in its forward

        gen = torch.Generator().manual_seed(rank)  # each rank its own batch
        ids = torch.randint(0, 500, (2, 12), generator=gen)
        attention = torch.ones_like(ids)
        mask = torch.zeros_like(ids)
        mask[:, 6:] = 1
        layout = None
        if tied:  # and the two rows sharing their prompt in one packed row, of a different length on each rank
            ids[1, :6] = ids[0, :6]
            attention[1, 12 - rank :] = 0
            mask = mask * attention
            layout = lay_out(ids, attention, pack=True, groups=torch.tensor([0, 0]))
            assert layout.kind == "shared" and layout.input_ids.shape == (1, 18 - rank)
        lean = lean_token_logprobs(sharded, ids, attention, mask, layout=layout)[0]
        lean.sum().backward()
        plain = token_logprobs(model_logits(reference, ids, attention), ids) * mask
        plain.sum().backward()
        torch.testing.assert_close(lean, plain.detach(), atol=1e-5, rtol=0)
        for (name, p), (_, q) in zip(sharded.named_parameters(), reference.named_parameters(), strict=True):
            expected = q.grad.clone()
            dist.all_reduce(expected)  # FSDP averages the ranks' gradients
            torch.testing.assert_close(p.grad.full_tensor(), expected / WORLD_SIZE, atol=1e-5, rtol=1e-5, msg=name)
        # both ranks done before either tears gloo down: a rank that exits while the other's gloo threads still
        # talk to it aborted a CI run once ("terminate called without an active exception", SIGABRT)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("tied", [False, True])
def test_lean_logprobs_under_fsdp_equal_the_unsharded_plain_path(tied: bool, tmp_path) -> None:
    mp.spawn(worker, args=(rendezvous(tmp_path), tied), nprocs=WORLD_SIZE, join=True)
