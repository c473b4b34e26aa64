"""Checked records -> token ids with a mask on the trained tokens, truncated to the length limits."""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from alignkit.data.sources import BadRows, one_line, resolve_format
from alignkit.data.spec import Format, RecordKind

Segments = list[tuple[str, bool]]  # text pieces in order, each with whether its tokens are trained
Messages = list[dict[str, str]]
# Per-row columns written by the tokenizing map and removed after it; being columns, they survive its cache.
PROBLEM, TRUNCATED = "_alignkit_problem", "_alignkit_truncated"

log = logging.getLogger(__name__)


def render(tokenizer: PreTrainedTokenizerBase, messages: Messages, add_generation_prompt: bool = False) -> str:
    """A conversation as text, through the tokenizer's chat template."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_segments(tokenizer: PreTrainedTokenizerBase, messages: Messages, first_trained: int = 0) -> Segments:
    """Split a rendered conversation into pieces; assistant turns from index `first_trained` on are trained.

    An assistant turn spans from the rendering of the turns before it (with the generation prompt) to the
    rendering that includes it. Both must be prefixes of the whole text, as with templates that render
    turn by turn; a template that rewrites earlier turns breaks this, and guessing would mask wrong tokens.
    """
    full = render(tokenizer, messages)
    segments, pos = [], 0
    for i, message in enumerate(messages):
        if i < first_trained or message["role"] != "assistant":
            continue
        if i == 0:  # chat templates cannot render the empty conversation before it
            raise ValueError(
                "message 1 is an assistant turn, so nothing before it shows where the assistant's tokens begin; "
                "start the conversation with a user or system message"
            )
        start, end = render(tokenizer, messages[:i], True), render(tokenizer, messages[: i + 1])
        if not (full.startswith(start) and full.startswith(end) and pos <= len(start) <= len(end)):
            raise ValueError(
                f"the chat template does not render the first {i} messages (+ generation prompt) and the "
                f"first {i + 1} as prefixes of the whole conversation, so the assistant tokens cannot be "
                "located; use a chat template that renders turn by turn"
            )
        segments += [(full[pos : len(start)], False), (full[len(start) : len(end)], True)]
        pos = len(end)
    return [*segments, (full[pos:], False)]


def encode(tokenizer: PreTrainedTokenizerBase, text: str, first: bool = True) -> list[int]:
    """Token ids of one piece; only the first piece gets BOS, unless a chat template already wrote it."""
    bos = tokenizer.bos_token
    special = first and not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def encode_segments(
    tokenizer: PreTrainedTokenizerBase, segments: Segments, append_eos: bool
) -> tuple[list[int], list[int]]:
    """Pieces tokenized one by one and concatenated, so the trained/untrained boundary is exact."""
    ids: list[int] = []
    mask: list[int] = []
    for j, (text, trained) in enumerate(segments):
        piece = encode(tokenizer, text, first=j == 0)
        ids += piece
        mask += [int(trained)] * len(piece)
    if append_eos:
        ids.append(tokenizer.eos_token_id)
        mask.append(1)
    return ids, mask


def truncate(
    ids: list[int], mask: list[int], max_length: int, max_prompt_length: int | None
) -> tuple[list[int], list[int]]:
    """Cut the prompt (tokens before the first trained one) from the left, then the rest from the right."""
    prompt_len = mask.index(1) if 1 in mask else len(mask)
    start = max(0, prompt_len - max_prompt_length) if max_prompt_length is not None else 0
    ids, mask = ids[start : start + max_length], mask[start : start + max_length]
    if 1 not in mask:
        raise ValueError(
            f"no completion tokens are left after truncation to max_length={max_length} (the prompt takes "
            f"{prompt_len - start} tokens); raise data.max_length or set data.max_prompt_length"
        )
    return ids, mask


def tokenize_records(
    ds: Dataset,
    kind: RecordKind,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    max_prompt_length: int | None = None,
    fmt: Format = "auto",
    *,
    source: str = "data",
    key: str | None = None,
) -> Dataset:
    """Token ids, with completion masks (1 = trained), for every row of `kind`.

    completion/unpaired: input_ids, completion_mask (+ label); preference: chosen_/rejected_ input_ids and
    completion_mask (+ margin); prompt: prompt_input_ids, the prompt as text, and the other columns.
    `source` names the data in errors (a file path or generator:<name>); rows are numbered from 1. Every row
    that cannot be tokenized is reported (up to MAX_REPORTED_ROWS) in one DataError; rows cut to the length
    limits are counted and reported once, as a warning naming `key` (data.train or data.eval) when given.
    """
    fmt = resolve_format(ds, kind, fmt)

    def sequence(row: dict[str, Any], completion: str) -> tuple[list[int], list[int], bool]:
        if fmt == "standard":
            segments = [(row["prompt"], False), (row[completion], True)]
        elif kind == "completion":
            segments = chat_segments(tokenizer, row["messages"])
        else:
            segments = chat_segments(tokenizer, row["prompt"] + row[completion], first_trained=len(row["prompt"]))
        # A chat template closes the assistant turn itself; plain text needs the EOS added to learn to stop.
        ids, mask = encode_segments(tokenizer, segments, append_eos=fmt == "standard")
        cut_ids, cut_mask = truncate(ids, mask, max_length, max_prompt_length)
        return cut_ids, cut_mask, len(cut_ids) < len(ids)

    def tokenize_row(row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if kind == "prompt":
            text = render(tokenizer, row["prompt"], True) if fmt == "conversational" else row["prompt"]
            ids, limit = encode(tokenizer, text), max_prompt_length or max_length
            return {"prompt": text, "prompt_input_ids": ids[-limit:]}, len(ids) > limit
        if kind == "preference":
            (c_ids, c_mask, c_cut), (r_ids, r_mask, r_cut) = sequence(row, "chosen"), sequence(row, "rejected")
            return {
                "chosen_input_ids": c_ids,
                "chosen_completion_mask": c_mask,
                "rejected_input_ids": r_ids,
                "rejected_completion_mask": r_mask,
            }, c_cut or r_cut
        ids, mask, cut = sequence(row, "completion")
        return {"input_ids": ids, "completion_mask": mask}, cut

    # A bad row gets placeholder tokens of the right types, so that the map goes on to find every bad row.
    placeholder = {
        "prompt": {"prompt": "", "prompt_input_ids": [0]},
        "preference": {f"{s}_{n}": [0] for s in ("chosen", "rejected") for n in ("input_ids", "completion_mask")},
    }.get(kind, {"input_ids": [0], "completion_mask": [0]})

    def checked_row(row: dict[str, Any]) -> dict[str, Any]:
        try:
            out, cut = tokenize_row(row)
            return {**out, PROBLEM: "", TRUNCATED: cut}
        except Exception as e:  # templates and tokenizers raise many types; the row number is what helps
            return {**placeholder, PROBLEM: one_line(str(e)) or type(e).__name__, TRUNCATED: False}

    # Prompt rows keep their other columns as metadata (answers for rule rewards); the others keep only
    # the columns their batches carry.
    keep = {"prompt": set(ds.column_names) - {"prompt"}, "preference": {"margin"}, "unpaired": {"label"}}
    remove = [c for c in ds.column_names if c not in keep.get(kind, set())]
    out = ds.map(checked_row, remove_columns=remove, desc=f"tokenizing {source}")
    bad = BadRows(source)
    for i, problem in enumerate(out[PROBLEM], 1):
        bad.add(f"row {i}", [problem] if problem else [])
    bad.raise_any()
    if cut := sum(out[TRUNCATED]):
        where = f"{key} ({source})" if key else source
        if kind == "prompt":
            limit = f"max_prompt_length {max_prompt_length}" if max_prompt_length else f"max_length {max_length}"
            log.warning(f"{where}: {cut} of {len(out)} prompts longer than {limit} were cut from the left")
        else:
            prompts = f"prompts from the left to max_prompt_length {max_prompt_length}, " if max_prompt_length else ""
            log.warning(
                f"{where}: {cut} of {len(out)} rows were truncated ({prompts}completions from the right to "
                f"max_length {max_length}); raise data.max_length to keep them whole"
            )
    return out.remove_columns([PROBLEM, TRUNCATED])
