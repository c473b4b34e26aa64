"""How a batch of token sequences is laid out for one forward: padded rows, one packed row, or shared prompts.

Every sequence-scoring path (log-probs through the LM head, a scalar head's values) takes a padded batch [S, T]
and its attention mask, and can run the model on another arrangement of the same tokens, then read each
token's hidden state back where it landed (`Layout.where`):

- padded (the reference): the batch as it is, a 2-D attention mask, position ids from the mask.
- packed ("padding-free"): every real token of the batch in one row [1, N], position ids restarting at 0 for
  each sequence and no attention mask, so transformers tells the sequences apart from the position ids (a
  block-diagonal mask for sdpa/eager, the varlen kernel for FlashAttention). Nothing is computed for padding;
  with sdpa the packed row's mask is dense, so attention itself costs N^2 instead of sum(len^2).
- shared prompts: sequences of one group (a DPO pair's chosen and rejected; a GRPO group's G responses) whose
  first tokens are equal are laid out as [common prefix, suffix 1, suffix 2, ...] in one row, the suffixes'
  positions continuing from the prefix's end and a 4-D mask letting each suffix see the prefix and itself but
  no other suffix (Wang & Hegde 2024, "Accelerating Direct Preference Optimization with Prefix Sharing",
  arXiv 2410.20305). A causal model's hidden state at a prefix token depends only on the prefix, so every
  token's hidden state, and hence every log-prob, value and gradient, equals the unshared layout's.
  Combined with packing, the groups' rows are concatenated into one row under one 4-D mask.

Layouts are built on the host from small integer tensors; the model's activations are where the saving is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignkit.ops.logprobs import position_ids


@dataclass(frozen=True)
class Layout:
    """Model inputs for one forward, and where each token of the padded batch [S, T] sits in them."""

    input_ids: Tensor  # [R, L]
    position_ids: Tensor  # [R, L]
    # [R, L] 2-D padding mask (padded), None (packed: sequences told apart by their position ids) or
    # [R, 1, L, L] bool, True where a query may attend a key (shared prompts)
    attention_mask: Tensor | None
    where: Tensor  # [S, T] long: row * L + column of each real token of the batch; -1 on padding
    kind: str = "padded"  # padded | packed | shared (rows of groups, or one packed row, under a 4-D mask)

    def gather(self, states: Tensor) -> Tensor:
        """[S, T, ...] from per-position states [R, L, ...] of the layout; padding positions get row 0's first
        state (callers mask them)."""
        flat = states.flatten(0, 1)
        return flat[self.where.clamp(min=0)]


def padded(input_ids: Tensor, attention_mask: Tensor) -> Layout:
    """The batch as it is: the reference every other layout is tested equal to."""
    s, t = input_ids.shape
    where = torch.arange(s * t, device=input_ids.device).view(s, t).masked_fill(~attention_mask.bool(), -1)
    return Layout(input_ids, position_ids(attention_mask), attention_mask, where, "padded")


def common_prefix(a: Tensor, b: Tensor) -> int:
    """Length of the longest common prefix of two 1-D id tensors."""
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0, 0]) if len(differ) else n


def lay_out(
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    pack: bool = False,
    groups: Tensor | None = None,
    pad_token_id: int = 0,
) -> Layout:
    """The layout of a padded batch (either padding side): `pack` concatenates every row into one; `groups` [S]
    (equal values = one group, e.g. a pair's chosen and rejected) shares each group's common prefix.

    Without either, the padded layout itself. A group's members after its first are laid out after the first's
    tokens as suffixes of the prefix they all share with it; a member that shares nothing is a separate sequence.
    """
    if not pack and groups is None:
        return padded(input_ids, attention_mask)
    device = input_ids.device
    s, t = input_ids.shape
    real = attention_mask.bool().cpu()
    host_ids = input_ids.cpu()
    tokens = [host_ids[i][real[i]] for i in range(s)]
    columns = [real[i].nonzero().squeeze(1) for i in range(s)]
    if groups is None:
        members = [[i] for i in range(s)]
    else:
        order: dict[int, list[int]] = {}
        for i, g in enumerate(groups.cpu().tolist()):
            order.setdefault(g, []).append(i)
        members = list(order.values())

    # Each group becomes one block: its prefix (branch 0) then every member's suffix (branch k + 1).
    blocks = []  # (ids, positions, branch, [(member, its token indices -> block offsets)])
    any_shared = False
    for group in members:
        first = tokens[group[0]]
        prefix = min((common_prefix(first, tokens[m]) for m in group[1:]), default=0)
        any_shared |= prefix > 0
        ids, pos, branch = [first[:prefix]], [torch.arange(prefix)], [torch.zeros(prefix, dtype=torch.long)]
        offsets, size = [], prefix
        for k, m in enumerate(group):
            n = len(tokens[m])
            ids.append(tokens[m][prefix:])
            pos.append(torch.arange(prefix, n))
            branch.append(torch.full((n - prefix,), k + 1, dtype=torch.long))
            # token j of member m sits at j (j < prefix) or size + j - prefix
            j = torch.arange(n)
            offsets.append((m, torch.where(j < prefix, j, size + j - prefix)))
            size += n - prefix
        blocks.append((torch.cat(ids), torch.cat(pos), torch.cat(branch), offsets))

    rows = [blocks] if pack else [[b] for b in blocks]
    length = max(sum(len(b[0]) for b in row) for row in rows)
    r = len(rows)
    ids_out = torch.full((r, length), pad_token_id, dtype=input_ids.dtype)
    pos_out = torch.zeros((r, length), dtype=torch.long)
    segment = torch.full((r, length), -1, dtype=torch.long)
    branch_out = torch.zeros((r, length), dtype=torch.long)
    where = torch.full((s, t), -1, dtype=torch.long)
    for row_i, row in enumerate(rows):
        col = 0
        for seg_i, (ids, pos, branch, offsets) in enumerate(row):
            n = len(ids)
            ids_out[row_i, col : col + n] = ids
            pos_out[row_i, col : col + n] = pos
            segment[row_i, col : col + n] = seg_i
            branch_out[row_i, col : col + n] = branch
            for m, offset in offsets:
                where[m, columns[m]] = row_i * length + col + offset
            col += n

    if not any_shared and not pack:
        return padded(input_ids, attention_mask)  # no group's sequences have a first token in common
    if any_shared:
        # query i attends key j: same sequence block, j not after i, and j in the prefix or in i's own suffix
        seg_q, seg_k = segment[:, :, None], segment[:, None, :]
        br_q, br_k = branch_out[:, :, None], branch_out[:, None, :]
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        mask = (seg_q == seg_k) & (seg_q >= 0) & causal & ((br_k == 0) | (br_k == br_q))
        mask |= torch.eye(length, dtype=torch.bool)  # padding attends itself: no all-masked row (NaN in sdpa)
        attention = mask[:, None].to(device)
    else:
        attention = None
    kind = "shared" if any_shared else "packed"
    return Layout(ids_out.to(device), pos_out.to(device), attention, where.to(device), kind)


def consecutive_groups(prompts: Tensor) -> Tensor:
    """[S] group ids: rows whose `prompts` [S, P] equal the previous row's join its group (a rollout's G samples
    of one prompt, which `generate` lays out next to each other)."""
    same = torch.zeros(len(prompts), dtype=torch.bool, device=prompts.device)
    same[1:] = (prompts[1:] == prompts[:-1]).all(-1)
    return (~same).long().cumsum(0) - 1


def pair_groups(n: int, copies: int, device: torch.device | None = None) -> Tensor:
    """[copies * n] group ids of `copies` blocks of n rows concatenated (chosen then rejected): row i of each
    block is in group i."""
    return torch.arange(n, device=device).repeat(copies)
