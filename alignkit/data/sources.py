"""Loading records from files, save_to_disk directories, generators or load_dataset, and checking every row."""

from __future__ import annotations

import codecs
import csv
import json
import logging
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict, Value, load_dataset, load_from_disk
from datasets import config as datasets_config
from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError

from alignkit.data.generators import DATASETS, GENERATOR_KINDS
from alignkit.data.spec import STANDARD_COLUMNS, Format, RecordKind, SourceSpec

READERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
MAX_REPORTED_ROWS = 3  # enough to show a pattern without burying the first problem
LABEL_TEXT = {"true": True, "false": False}  # a CSV label cell, lower-cased
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that are no UTF-8, as errors="surrogateescape" reads them
_SURROGATE = re.compile("[\ud800-\udfff]")  # a parsed JSON \ud800-style escape of half a character
_SPACE = re.compile(r"\s*")


class DataError(ValueError):
    """A problem in the data itself; the message names the source, the 1-based row and the fix."""


class BadRows:
    """A source's bad rows: the first MAX_REPORTED_ROWS in full, and how many there are in all."""

    def __init__(self, name: str) -> None:
        self.name, self.lines, self.count = name, [], 0

    def add(self, where: str, problems: list[str]) -> None:
        """`where` is "row N", or another place in the file for a problem that is no row's."""
        if problems:
            self.count += 1
            if self.count <= MAX_REPORTED_ROWS:
                self.lines += [f"{self.name}: {where}: {p}" for p in problems]

    def raise_any(self, note: str = "") -> None:
        if self.count:
            more = [f"({self.count - MAX_REPORTED_ROWS} more bad rows)"] if self.count > MAX_REPORTED_ROWS else []
            raise DataError("\n".join(self.lines + more + ([note] if note else [])))


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


def _where(row: int, line: int) -> str:
    """A row by its 1-based number among the records, with its line in the file where the two differ."""
    return f"row {row}" if row == line else f"row {row} (line {line})"


def _cause(e: BaseException) -> str:
    """The innermost exception of a chain: datasets wraps the reader's own error in a vague one."""
    for _ in range(10):
        if (inner := e.__cause__ or e.__context__) is None:
            break
        e = inner
    return f"{type(e).__name__}: {one_line(str(e))[:200]}"


def one_line(text: str) -> str:
    """Another library's message on one line, so that every line of a DataError starts with the source."""
    return " ".join(text.split())


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys)


def _json_type(value: Any) -> str:
    names = {"dict": "one JSON object", "list": "a list", "str": "a string", "bool": "true/false", "NoneType": "null"}
    return names.get(type(value).__name__, "a number")


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return isinstance(value, list) and any(map(_has_surrogate, value))


def _record_problems(value: Any, raw: str) -> list[str]:
    """What is wrong with one parsed JSON row; `raw` is its text, read with errors="surrogateescape"."""
    if match := _UNDECODABLE.search(raw):
        return [f"not UTF-8 (byte {ord(match[0]) - 0xDC00:#04x}); save the file as UTF-8"]
    if not isinstance(value, dict):
        got = _json_type(value)
        return [f'not a JSON object (got {got}); write each row as an object, e.g. {{"prompt": "...", ...}}']
    if not value:  # datasets reads a file of only these as no rows at all
        return ['an empty JSON object; write the row\'s columns, e.g. {"prompt": "...", ...}']
    if _has_surrogate(value):
        return ["a \\u escape encodes half a UTF-16 surrogate pair, which is no character; fix the escape"]
    return []


def _parse_json(text: str, pos: int = 0, single_line: bool = False) -> tuple[Any, int, list[str]]:
    """(value, end, problems) of the JSON value at `pos`; problems say where its syntax breaks."""
    try:
        value, end = _JSON.raw_decode(text, pos)
    except _DuplicateKey as e:
        return None, pos, [f"key {e.args[0]!r} appears twice in one object; keep one"]
    except json.JSONDecodeError as e:
        at = f"column {e.colno}" if single_line else f"line {e.lineno} column {e.colno}"
        return None, pos, [f"not valid JSON ({e.msg.removesuffix(' at')} at {at})"]
    except RecursionError:
        return None, pos, ["nested too deeply to read; flatten it"]
    return value, end, []


def _scan_json_lines(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(where, problems) of every row of a JSON lines file; blank lines hold no row, as for datasets."""
    row = 0
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="\n") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            row += 1
            text = text.rstrip("\r\n")  # a row cut off inside a string then reads as unterminated
            value, end, problems = _parse_json(text, len(text) - len(text.lstrip()), single_line=True)
            if not problems and text[end:].strip():
                problems = [f"text after the JSON object (column {end + 1}); write one object per line"]
            yield _where(row, line), problems or _record_problems(value, text)


def _scan_json(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(where, problems) of every row of a .json file: a list of objects, or JSON lines as datasets reads it."""
    text = path.read_bytes().removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="surrogateescape")
    pos = _SPACE.match(text).end()
    if not text.startswith("[", pos):
        value, end, problems = _parse_json(text, pos)
        if problems or text[end:].strip():
            yield from _scan_json_lines(path)
        else:  # one value that datasets could not take as rows
            problem = f"{_json_type(value)}, not a list of rows; write a list of objects, or one object per line"
            yield "line 1", [problem]
        return
    row, line, counted = 0, 1, pos
    pos = _SPACE.match(text, pos + 1).end()
    while not text.startswith("]", pos):
        row += 1
        line, counted = line + text.count("\n", counted, pos), pos
        value, end, problems = _parse_json(text, pos)
        yield f"row {row} (line {line})", problems or _record_problems(value, text[pos:end])
        if problems:
            return
        pos = _SPACE.match(text, end).end()
        if not text.startswith(",", pos):
            if not text.startswith("]", pos):
                line += text.count("\n", counted, pos)
                yield f"line {line}", [f"expected ',' or ']' after row {row}; separate rows with commas, end with ']'"]
                return
            break
        pos = _SPACE.match(text, pos + 1).end()
    if text[pos + 1 :].strip():
        line += text.count("\n", counted, pos)
        yield f"line {line}", ["text after the closing ']'; remove it"]


def _scan_csv(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(where, problems) of every row of a CSV file; rows count from the one after the header."""
    limit = csv.field_size_limit(2**31 - 1)  # a long completion is no problem here; the tokenizer truncates it
    try:
        with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            reader = csv.reader(f, strict=True)
            header, row, end = None, 0, 0
            while True:
                start = end + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    where = "header" if header is None else _where(row + 1, start)
                    yield where, [f'bad quoting ({e}); close every quoted field, and write a quote inside one as ""']
                    return
                end = reader.line_num
                if not fields:  # pandas skips blank lines
                    continue
                problems = [
                    f"not UTF-8 (byte {ord(m[0]) - 0xDC00:#04x}); save the file as UTF-8"
                    for m in filter(None, map(_UNDECODABLE.search, fields))
                ][:1]
                if header is None:
                    header = fields
                    if problems:
                        yield "header (line 1)", problems
                    continue
                row += 1
                if len(fields) > len(header):
                    problems.append(
                        f"{len(fields)} fields under a header of {len(header)}; quote fields that hold commas"
                    )
                yield _where(row, start), problems
    finally:
        csv.field_size_limit(limit)


def _scan(path: Path, reader: str, name: str) -> int:
    """Raise a DataError naming the rows whose text breaks the file's syntax; else return how many rows it holds."""
    scan = _scan_csv if reader == "csv" else _scan_json_lines if path.suffix.lower() == ".jsonl" else _scan_json
    bad, rows = BadRows(name), 0
    for where, problems in scan(path):
        rows += 1
        bad.add(where, problems)
    bad.raise_any()
    return rows


def _first_non_utf8(path: Path) -> tuple[int, int] | None:
    """(line, byte) where a file stops being UTF-8, or None when all of it is."""
    decoder, lines = codecs.getincrementaldecoder("utf-8")(), 0
    with path.open("rb") as f:
        while True:
            chunk = f.read(1 << 24)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                # The decoder's held-back bytes of an unfinished character are no newline.
                return lines + e.object[: e.start].count(b"\n") + 1, e.object[e.start]
            if not chunk:
                return None
            lines += chunk.count(b"\n")


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets logs a reader's failure before raising it; the DataError says it once, with the row."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _reader_args(reader: str, path: Path, source: SourceSpec) -> dict[str, Any]:
    if reader == "csv":
        # An empty cell is an empty string (an empty prompt, or an empty completion to report), not a NaN. The
        # standard columns stay text as written: pandas reads a completion "42" as a number, and fails on a
        # column whose type changes between its 10,000-row chunks; the row checks parse label and margin.
        names = {source.columns.get(std, std) for std in STANDARD_COLUMNS}
        return {"na_filter": False, "converters": dict.fromkeys(names, str)}
    if reader == "json":
        # One chunk for the whole file: datasets casts every later 10 MB chunk to the first one's types, which
        # silently turns a number or a list in a text column into text. Within a chunk, mixed types stay as
        # written, for the row checks to report.
        return {"chunksize": max(10 << 20, path.stat().st_size + 1)}
    return {}


def _read_json_list(path: Path) -> Dataset | None:
    """A .json list of rows through Python's json, which keeps every digit of a float: datasets passes a list
    through pandas' ujson, which keeps 10 (a margin of -9.87654321e-05 became -9.87654e-05). None when the
    file is no such list or a column mixes types; datasets then keeps mixed columns as JSON for the row checks.
    """
    text = path.read_bytes().removeprefix(codecs.BOM_UTF8).decode()
    if not text.lstrip().startswith("["):
        return None
    try:
        rows = _JSON.decode(text)
        if not all(isinstance(row, dict) and row for row in rows):
            return None
        columns = list(dict.fromkeys(k for row in rows for k in row))
        return Dataset(pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows]))
    except (ValueError, TypeError, OverflowError, RecursionError, pa.ArrowException):
        return None  # datasets reads it, or fails and the scan names the row


def _read_file(path: Path, source: SourceSpec) -> Dataset | DatasetDict:
    """A file through datasets; on failure, the rows at fault as found by a scan of our own."""
    name, reader = str(source.path), READERS[path.suffix.lower()]
    if path.stat().st_size == 0:
        return Dataset.from_dict({})
    if reader != "parquet" and (bad := _first_non_utf8(path)) is not None:
        _scan(path, reader, name)
        raise DataError(f"{name}: line {bad[0]}: not UTF-8 (byte {bad[1]:#04x}); save the file as UTF-8")
    if path.suffix.lower() == ".json" and (rows := _read_json_list(path)) is not None:
        return rows
    try:
        with _quiet_datasets():
            return load_dataset(reader, data_files=str(path), **_reader_args(reader, path, source))
    except Exception as e:  # datasets/pyarrow raise many types; a scan of our own finds the row
        if reader == "parquet":
            try:
                if pq.read_metadata(path).num_rows == 0:
                    return Dataset.from_dict({})
            except Exception:  # not parquet at all: the message below says so
                pass
            raise DataError(
                f"{name}: not a readable parquet file ({_cause(e)}); it may be truncated or not parquet at all: "
                "write it again"
            ) from e
        if _scan(path, reader, name) == 0:
            return Dataset.from_dict({})
        raise DataError(f"{name}: could not be read ({_cause(e)}); check that it is valid {reader}") from e


def _read_dir(path: Path, name: str) -> Dataset | DatasetDict:
    try:
        with _quiet_datasets():
            return load_from_disk(str(path))
    except Exception as e:
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            raise DataError(
                f"{name}: a save_to_disk directory with missing or corrupt files ({_cause(e)}); save the dataset again"
            ) from e
        files = sorted(p.name for p in path.iterdir())
        held = f"holds {', '.join(files[:4])}{', ...' if len(files) > 4 else ''}" if files else "is empty"
        raise DataError(
            f"{name}: not a saved dataset (the directory {held}, with no state.json or dataset_dict.json); point "
            "path at a directory written by save_to_disk, or at one .jsonl, .json, .parquet or .csv file"
        ) from e


def _data_files(source: SourceSpec) -> list[str]:
    """A hub source's data_files as one flat list of paths or patterns."""
    files = source.data_files
    if files is None:
        return []
    if isinstance(files, dict):
        return [f for value in files.values() for f in ([value] if isinstance(value, str) else value)]
    return [files] if isinstance(files, str) else list(files)


def _hub_call(source: SourceSpec) -> str:
    """The load_dataset call that reads a hub source, as the fix in an error writes it."""
    args = [repr(source.hub)] + [f"{k}={v!r}" for k, v in _hub_args(source).items() if v is not None]
    return f"datasets.load_dataset({', '.join(args)})"


def _hub_args(source: SourceSpec) -> dict[str, Any]:
    args = {"name": source.config, "split": source.split or "train", "revision": source.revision}
    return {**args, "data_files": source.data_files}


def _read_hub(source: SourceSpec, key: str) -> Dataset:
    """A source through datasets.load_dataset: a hub dataset, a local directory of data files or a builder."""
    where = f"{key} ({source.name})"
    saved = Path(source.hub)
    if (saved / "state.json").is_file() or (saved / "dataset_dict.json").is_file():
        raise DataError(
            f"{where}: a directory written by save_to_disk, which load_dataset does not read; set "
            f"{key}.path: {source.hub} in place of hub:"
        )
    extra = _reader_args("csv", Path(), source) if source.hub == "csv" else {}  # CSV cells as for a path: source
    try:
        with _quiet_datasets():
            return load_dataset(source.hub, **_hub_args(source), **extra)
    except ConnectionError as e:  # datasets raises it when offline, or when the hub does not answer
        offline = " (offline: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set)" if datasets_config.HF_HUB_OFFLINE else ""
        raise DataError(
            f"{where}: could not reach the Hugging Face hub to load '{source.hub}'{offline}, and no copy is cached; "
            f"check the name, then either run where the hub is reachable, or download it beforehand where it is: "
            f"{_hub_call(source)}.save_to_disk('DIR'), and set {key}.path: DIR in place of hub:"
        ) from e
    except DatasetNotFoundError as e:  # a missing, private or gated dataset, or a missing revision
        raise DataError(
            f"{where}: not found on the Hugging Face hub ({_cause(e)}); check the name and revision at "
            f"https://huggingface.co/datasets/{source.hub}, and for a private or gated dataset log in with "
            "`hf auth login`"
        ) from e
    except FileNotFoundError as e:  # data_files that match nothing, or a name neither local nor on the hub
        what = f"data_files {source.data_files!r}" if source.data_files is not None else f"hub '{source.hub}'"
        raise DataError(
            f"{where}: {what} not found ({_cause(e)}); check the path (relative paths start at {Path.cwd()}) or "
            "the hub name"
        ) from e
    except StopIteration as e:  # datasets' json builder, given a pattern that matches no file or only empty ones
        raise DataError(
            f"{where}: data_files {source.data_files!r} match no file, or only empty ones; check the pattern "
            f"(relative paths start at {Path.cwd()})"
        ) from e
    except ValueError as e:  # an unknown split or configuration
        raise DataError(f"{where}: {one_line(str(e)).rstrip('.')}; check {key}.split and {key}.config") from e
    except DatasetGenerationError as e:  # a data file that its builder cannot parse: a scan of our own finds the row
        for file in map(Path, _data_files(source)):
            if file.is_file() and READERS.get(file.suffix.lower()) == source.hub:
                _scan(file, source.hub, str(file))
        raise DataError(
            f"{where}: could not be read ({_cause(e)}); check its files, or read one with path: to have its bad "
            "rows named"
        ) from e


def _read(source: SourceSpec, key: str = "data.train") -> Dataset:
    """The raw rows of a source, before column mapping; every failure is a DataError naming the source."""
    if source.hub is not None:
        return _read_hub(source, key)
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
    data = _read_dir(path, source.path) if path.is_dir() else _read_file(path, source)
    if isinstance(data, DatasetDict):
        split = source.split or ("train" if "train" in data else None)
        if split not in data:
            raise DataError(
                f"{source.path}: no split {split!r} (got splits: {', '.join(data)}); set split to one of them"
            )
        data = data[split]
    elif source.split is not None:
        raise DataError(f"{source.path}: split applies to a DatasetDict directory (got a single Dataset)")
    try:
        # Arrow files are trusted as written: a flipped byte shows up as bad offsets or bytes that are no UTF-8
        # only when a row is read, as a raw UnicodeDecodeError or worse. A full validation reads every buffer once.
        data.data.table.validate(full=True)
    except pa.ArrowException as e:
        raise DataError(f"{source.path}: corrupt data ({_cause(e)}); write the file or directory again") from e
    return data


def source_columns(source: SourceSpec | list[SourceSpec]) -> list[str]:
    """The standard column names a source provides (after its `columns` mapping), without checking rows; of a
    mixture, the names every source provides."""
    if isinstance(source, list):
        each = [source_columns(s) for s in source]
        return [col for col in each[0] if all(col in cols for cols in each[1:])]
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
    if not allow_empty and not any(m["content"].strip() for m in value):
        return f"'{field}' has only empty messages; drop the row or fill it in"
    return None


def parse_label(value: Any, text_cells: bool = False) -> bool | None:
    """A row's label as a boolean; None when it is not one. CSV cells are text: 'true' or 'false', any case."""
    if text_cells and isinstance(value, str):
        return LABEL_TEXT.get(value.strip().lower())
    return value if isinstance(value, bool) else None


def parse_margin(value: Any, text_cells: bool = False) -> float | None:
    """A row's margin as a finite number; None when it is not one. CSV cells are text, e.g. '1.5'."""
    if text_cells and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def row_problems(
    row: dict[str, Any],
    kind: RecordKind,
    fmt: Literal["standard", "conversational"],
    key: str = "data.train",
    *,
    text_cells: bool = False,
) -> list[str]:
    """Everything wrong with one row for this kind, each with its fix; [] when the row is fine.

    `text_cells`: the row comes from a CSV file, whose cells are all text; label and margin are then parsed.
    """
    problems = []
    for field in required_fields(kind, fmt):
        value = row.get(field)
        # An empty prompt is a valid unconditional example, except where the prompt is all there is.
        allow_empty = field == "prompt" and kind != "prompt"
        if field not in row:
            present = ", ".join(k for k, v in row.items() if v is not None)
            problems.append(
                f"missing '{field}' (columns present: {present}); map a column with {key}.columns.{field}: <name>"
            )
        elif value is None:
            problems.append(f"missing '{field}' (null or absent in this row); fill it in or drop the row")
        elif field == "label":
            if parse_label(value, text_cells) is None:
                write = "true or false" if text_cells else "booleans, not 0/1 or strings"
                problems.append(
                    f"'label' must be true or false (got {value!r} of type {type(value).__name__}); write {write}"
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
    if kind == "preference" and parse_margin(margin, text_cells) is None:
        problems.append(f"'margin' must be a finite number (got {margin!r}); fill it in or drop the margin column")
    return problems


def _typed_cells(ds: Dataset, kind: RecordKind) -> Dataset:
    """A checked CSV source's label and margin text as the booleans and numbers that batches carry."""
    parse = {"label": parse_label, "margin": parse_margin}
    columns = [c for c in {"unpaired": ["label"], "preference": ["margin"]}.get(kind, []) if c in ds.column_names]
    if not columns:
        return ds
    features = ds.features.copy()
    features.update({c: Value("bool" if c == "label" else "float64") for c in columns})
    return ds.map(
        lambda batch: {c: [parse[c](v, True) for v in batch[c]] for c in columns}, batched=True, features=features
    )


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
    ds = _read(source, key)
    if source.limit is not None:
        ds = ds.select(range(min(source.limit, len(ds))))
    if len(ds) == 0:  # before mapping: an empty file has no columns to map
        raise DataError(f"{source.name}: no rows; point {key} at a source with records")
    ds = _map_columns(ds, source, key)
    fmt = resolve_format(ds, kind, fmt)
    text_cells = source.hub == "csv" or (source.path is not None and Path(source.path).suffix.lower() == ".csv")
    # A column absent from the whole source would make every row say the same thing: report row 1 only.
    absent = any(f not in ds.column_names for f in required_fields(kind, fmt))
    bad = BadRows(source.name)
    for i, row in enumerate(ds.select(range(1)) if absent else ds, 1):
        bad.add(f"row {i}", row_problems(row, kind, fmt, key, text_cells=text_cells))
    bad.raise_any(_single_object_note(source, len(ds)))
    return _typed_cells(ds, kind) if text_cells else ds


def _single_object_note(source: SourceSpec, rows: int) -> str:
    """Why a .json file of one object has one odd row: datasets reads an object on one line as one row."""
    if rows != 1 or source.path is None or Path(source.path).suffix.lower() != ".json":
        return ""
    with open(source.path, "rb") as f:
        if not f.read(64).removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"{"):
            return ""
    return (
        f"{source.name}: holds one JSON object, read as one row; to give rows, write a list of objects "
        '([{"prompt": "...", ...}, ...]) or one object per line'
    )
