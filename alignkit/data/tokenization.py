"""Checked records -> token ids with a mask on the trained tokens, truncated to the length limits."""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from alignkit.data.sources import DataError, resolve_format
from alignkit.data.spec import Format, RecordKind

Segments = list[tuple[str, bool]]  # text pieces in order, each with whether its tokens are trained
Messages = list[dict[str, str]]


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
) -> Dataset:
    """Token ids, with completion masks (1 = trained), for every row of `kind`.

    completion/unpaired: input_ids, completion_mask (+ label); preference: chosen_/rejected_ input_ids and
    completion_mask (+ margin); prompt: prompt_input_ids, the prompt as text, and the other columns.
    `source` names the data in errors (a file path or generator:<name>); rows are numbered from 1.
    """
    fmt = resolve_format(ds, kind, fmt)

    def sequence(row: dict[str, Any], completion: str) -> tuple[list[int], list[int]]:
        if fmt == "standard":
            segments = [(row["prompt"], False), (row[completion], True)]
        elif kind == "completion":
            segments = chat_segments(tokenizer, row["messages"])
        else:
            segments = chat_segments(tokenizer, row["prompt"] + row[completion], first_trained=len(row["prompt"]))
        # A chat template closes the assistant turn itself; plain text needs the EOS added to learn to stop.
        ids, mask = encode_segments(tokenizer, segments, append_eos=fmt == "standard")
        return truncate(ids, mask, max_length, max_prompt_length)

    def tokenize_row(row: dict[str, Any], index: int) -> dict[str, Any]:
        try:
            if kind == "prompt":
                text = render(tokenizer, row["prompt"], True) if fmt == "conversational" else row["prompt"]
                return {
                    "prompt": text,
                    "prompt_input_ids": encode(tokenizer, text)[-(max_prompt_length or max_length) :],
                }
            if kind == "preference":
                (c_ids, c_mask), (r_ids, r_mask) = sequence(row, "chosen"), sequence(row, "rejected")
                return {
                    "chosen_input_ids": c_ids,
                    "chosen_completion_mask": c_mask,
                    "rejected_input_ids": r_ids,
                    "rejected_completion_mask": r_mask,
                }
            ids, mask = sequence(row, "completion")
            return {"input_ids": ids, "completion_mask": mask}
        except Exception as e:  # templates and tokenizers raise many types; the row number is what helps
            raise DataError(f"{source}: row {index + 1}: {e}") from e

    # Prompt rows keep their other columns as metadata (answers for rule rewards); the others keep only
    # the columns their batches carry.
    keep = {"prompt": set(ds.column_names) - {"prompt"}, "preference": {"margin"}, "unpaired": {"label"}}
    remove = [c for c in ds.column_names if c not in keep.get(kind, set())]
    return ds.map(tokenize_row, with_indices=True, remove_columns=remove, desc=f"tokenizing {source}")
