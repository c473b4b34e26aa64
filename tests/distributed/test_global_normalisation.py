"""REINFORCE++'s global advantage normalisation with the real all-reduce (gloo): the same 8 responses spread over
1, 2 and 4 processes get the same advantages, each row the one it gets when one process holds them all."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_rollout_fsdp import rendezvous

from alignkit.ops.rl import reinforce_pp_advantages
from alignkit.rewards.normalize import batch_moments

pytestmark = pytest.mark.distributed

LENGTHS = [1, 5, 3, 2, 5, 4, 1, 3]  # response tokens per row: the rows' token counts differ, as the parts' do


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(8, generator=gen)
    mask = torch.zeros(8, 7, dtype=torch.long)
    for row, length in enumerate(LENGTHS):
        mask[row, 1 : 1 + length] = 1
    return scores, torch.rand(8, 7, generator=gen) * mask, mask


def worker(rank: int, world: int, init_method: str, out: str) -> None:

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        scores, kl, mask = batch()
        rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
        for baseline in (None, 2):  # groups of 2 stay on one process when 8 rows are split in 1, 2 or 4
            adv = reinforce_pp_advantages(scores[rows], kl[rows], mask[rows], 0.05, batch_moments, group_size=baseline)
            torch.save(adv, f"{out}/{baseline}_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_advantages_do_not_depend_on_the_number_of_processes(tmp_path: Path, world: int) -> None:

    mp.spawn(worker, args=(world, rendezvous(tmp_path), str(tmp_path)), nprocs=world, join=True)
    scores, kl, mask = batch()
    for baseline in (None, 2):
        alone = reinforce_pp_advantages(scores, kl, mask, 0.05, batch_moments, group_size=baseline)
        spread = torch.cat([torch.load(tmp_path / f"{baseline}_{rank}.pt") for rank in range(world)])
        torch.testing.assert_close(spread, alone, atol=1e-6, rtol=0)
        assert abs(float(alone[mask.bool()].mean())) < 1e-6  # normalised over all 24 tokens together
