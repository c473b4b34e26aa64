"""Loading records from files, save_to_disk directories or generators, and checking every row for its kind."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from alignkit.data.generators import DATASETS, GENERATOR_KINDS
from alignkit.data.spec import Format, RecordKind, SourceSpec

READERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# An empty CSV cell is an empty string (an empty prompt, or an empty completion to report), not a NaN.
READER_ARGS = {"csv": {"na_filter": False}}
MAX_REPORTED_ROWS = 3  # enough to show a pattern without burying the first problem


class DataError(ValueError):
    """A problem in the data itself; the message names the source, the 1-based row and the fix."""


def required_fields(kind: RecordKind, fmt: Literal["standard", "conversational"]) -> tuple[str, ...]:
    """The standard columns every row of this kind must hold."""
    if kind == "completion":
        return ("messages",) if fmt == "conversational" else ("prompt", "completion")
    return {
        "preference": ("prompt", "chosen", "rejected"),
        "unpaired": ("prompt", "completion", "label"),
        "prompt": ("prompt",),
    }[kind]


def resolve_format(ds: Dataset, kind: RecordKind, fmt: Format) -> Literal["standard", "conversational"]:
    """`auto` means conversational when the first row's prompt (or messages) is a list of messages."""
    if fmt != "auto":
        return fmt
    field = "messages" if kind == "completion" and "messages" in ds.column_names else "prompt"
    if field not in ds.column_names or len(ds) == 0:
        return "standard"  # the row checks then report what is missing
    return "conversational" if isinstance(ds[0][field], list) else "standard"


def _read(source: SourceSpec) -> Dataset:
    """The raw rows of a source, before column mapping; every failure is a DataError naming the source."""
    if source.generator is not None:
        try:
            return Dataset.from_list(DATASETS.get(source.generator)(**source.args))
        except ValueError as e:  # a generator rejects bad argument values (min_words > max_words, ...)
            raise DataError(f"{source.name}: {e}") from e
    path = Path(source.path)
    if not path.exists():
        raise DataError(f"{source.path}: file not found (relative paths start at {Path.cwd()}); check the path")
    if not path.is_dir() and path.suffix.lower() not in READERS:
        raise DataError(
            f"{source.path}: unsupported file type (got '{path.suffix}'); allowed: "
            f"{', '.join(READERS)}, or a directory written by datasets' save_to_disk"
        )
    try:
        if path.is_dir():
            data = load_from_disk(str(path))
        else:
            reader = READERS[path.suffix.lower()]
            data = load_dataset(reader, data_files=str(path), **READER_ARGS.get(reader, {}))
    except Exception as e:  # datasets/pyarrow raise many types; all mean the same thing to the user
        raise DataError(f"{source.path}: could not be read ({type(e).__name__}: {e})") from e
    if isinstance(data, DatasetDict):
        split = source.split or ("train" if "train" in data else None)
        if split not in data:
            raise DataError(
                f"{source.path}: no split {split!r} (got splits: {', '.join(data)}); set split to one of them"
            )
        return data[split]
    if source.split is not None:
        raise DataError(f"{source.path}: split applies to a DatasetDict directory (got a single Dataset)")
    return data


def source_columns(source: SourceSpec) -> list[str]:
    """The standard column names a source provides (after its `columns` mapping), without checking rows."""
    renames = {col: std for std, col in source.columns.items()}
    return [renames.get(col, col) for col in _read(source).column_names]


def _map_columns(ds: Dataset, source: SourceSpec, key: str) -> Dataset:
    """Rename source columns to the standard names; a mapped name wins over a same-named source column."""
    absent = [col for col in source.columns.values() if col not in ds.column_names]
    if absent:
        raise DataError(
            f"{source.name}: {key}.columns names columns the source lacks (got {', '.join(absent)}); "
            f"columns present: {', '.join(ds.column_names)}"
        )
    renames = {col: std for std, col in source.columns.items() if col != std}
    shadowed = [std for std in renames.values() if std in ds.column_names and std not in renames]
    return ds.remove_columns(shadowed).rename_columns(renames)


def _message_problem(field: str, value: Any, allow_empty: bool) -> str | None:
    if not isinstance(value, list) or not (value or allow_empty):
        return f"'{field}' must be a non-empty list of {{role, content}} messages (got {str(value)[:60]!r})"
    for j, m in enumerate(value, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"'{field}' message {j} needs string 'role' and 'content' (got {str(m)[:60]!r})"
    if field != "prompt" and not any(m["role"] == "assistant" and m["content"].strip() for m in value):
        return f"'{field}' has no non-empty assistant message"
    return None


def row_problems(
    row: dict[str, Any], kind: RecordKind, fmt: Literal["standard", "conversational"], key: str = "data.train"
) -> list[str]:
    """Everything wrong with one row for this kind, each with its fix; [] when the row is fine."""
    problems = []
    for field in required_fields(kind, fmt):
        value = row.get(field)
        # An empty prompt is a valid unconditional example, except where the prompt is all there is.
        allow_empty = field == "prompt" and kind != "prompt"
        if value is None:
            present = ", ".join(k for k, v in row.items() if v is not None)
            problems.append(
                f"missing '{field}' (columns present: {present}); map a column with {key}.columns.{field}: <name>"
            )
        elif field == "label":
            if not isinstance(value, bool):
                problems.append(
                    f"'label' must be true or false (got {value!r} of type {type(value).__name__}); "
                    "write booleans, not 0/1 or strings"
                )
        elif fmt == "conversational":
            problem = _message_problem(field, value, allow_empty)
            problems += [problem] if problem else []
        elif not isinstance(value, str):
            hint = "; set format: conversational for lists of messages" if isinstance(value, list) else ""
            problems.append(f"'{field}' must be a string (got {type(value).__name__}){hint}")
        elif not value.strip() and not allow_empty:
            problems.append(f"'{field}' is empty; drop the row or fill it in")
    margin = row.get("margin", 0.0)
    if kind == "preference" and (isinstance(margin, bool) or not isinstance(margin, int | float) or math.isnan(margin)):
        problems.append(f"'margin' must be a number (got {margin!r}); fill it in or drop the margin column")
    return problems


def load_records(source: SourceSpec, kind: RecordKind, fmt: Format = "auto", *, key: str = "data.train") -> Dataset:
    """Load a source, map its columns to the standard names, apply its limit and check every row for `kind`.

    `key` is the config path of the source (data.train or data.eval), used in the fixes errors suggest.
    """
    if source.generator is not None and kind not in GENERATOR_KINDS[source.generator]:
        fitting = [name for name, kinds in GENERATOR_KINDS.items() if kind in kinds]
        raise DataError(
            f"{source.name}: makes {' or '.join(GENERATOR_KINDS[source.generator])} records, not the {kind} "
            f"records needed here; generators that make {kind} records: {', '.join(fitting) or 'none'}"
        )
    ds = _read(source)
    if source.limit is not None:
        ds = ds.select(range(min(source.limit, len(ds))))
    ds = _map_columns(ds, source, key)
    if len(ds) == 0:
        raise DataError(f"{source.name}: no rows; point {key} at a source with records")
    fmt = resolve_format(ds, kind, fmt)
    # A column absent from the whole source would make every row say the same thing: report row 1 only.
    absent = any(f not in ds.column_names for f in required_fields(kind, fmt))
    errors, bad_rows = [], 0
    for i, row in enumerate(ds.select(range(1)) if absent else ds, 1):
        problems = row_problems(row, kind, fmt, key)
        bad_rows += bool(problems)
        if problems and bad_rows <= MAX_REPORTED_ROWS:
            errors += [f"{source.name}: row {i}: {p}" for p in problems]
    if errors:
        more = f"\n({bad_rows - MAX_REPORTED_ROWS} more bad rows)" if bad_rows > MAX_REPORTED_ROWS else ""
        raise DataError("\n".join(errors) + more)
    return ds
