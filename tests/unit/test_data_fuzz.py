"""Generated data files, whole and mutated: build_datasets succeeds, or raises a DataError naming file and row.

Every record kind (completion, preference, unpaired, prompt) in both formats is written as every file type it
fits (.jsonl, .json, .csv for standard records, .parquet, a save_to_disk directory), then damaged one way:
a row's field dropped, renamed, emptied, nulled, given a wrong type or a broken message list, non-UTF-8 bytes
or a NUL written into it, made huge; a whole column dropped, renamed or retyped; the file truncated, replaced
by random bytes, a byte flipped, a junk line inserted. Examples are derandomized, so a run is repeatable.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from alignkit.data.build import build_datasets
from alignkit.data.sources import DataError, load_records
from alignkit.data.spec import DataSpec, SourceSpec
from alignkit.models.tokenizer import byte_tokenizer

TOK = byte_tokenizer()
KINDS = ("completion", "preference", "unpaired", "prompt")
FORMATS = ("standard", "conversational")
TEXT_FILES = (".jsonl", ".json", ".csv")
ARROW_FILES = (".parquet", "disk")
MARK = "@@BAD@@"  # a field's text, replaced by raw bytes once the file is written
BAD_BYTES = {"non_utf8": b"a\xff\xfeb", "nul": b"a\x00b", "latin1": "é".encode("latin-1")}
HUGE = 100_000  # characters: far past max_length, so the row is truncated (or its completion cut away)


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(autouse=True, scope="module")
def _own_cache_and_no_bars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Hundreds of files: keep datasets' cache of them out of the user's, and its progress bars quiet."""
    patch = pytest.MonkeyPatch()
    patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache"))
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    yield
    if bars:
        datasets.enable_progress_bars()
    patch.undo()


# ---- records ---------------------------------------------------------------------------------------------

# Any character UTF-8 can write (no lone surrogates), commas, quotes and newlines included; never blank.
TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12).filter(str.strip)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


@st.composite
def records(draw: st.DrawFn, kind: str, fmt: str) -> list[dict[str, Any]]:
    """1 to 6 valid rows of one kind and format; preference rows all have a margin or none does."""
    margin = kind == "preference" and draw(st.booleans())
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        t = [draw(TEXT) for _ in range(4)]
        prompt, answer, other = t[:3] if fmt == "standard" else (user(t[0]), assistant(t[1]), assistant(t[2]))
        row: dict[str, Any] = {
            "completion": {"prompt": t[0], "completion": t[1]} if fmt == "standard" else {"messages": prompt + answer},
            "preference": {"prompt": prompt, "chosen": answer, "rejected": other},
            "unpaired": {"prompt": prompt, "completion": answer, "label": draw(st.booleans())},
            "prompt": {"prompt": prompt, "answer": t[3]},
        }[kind]
        if margin:
            row["margin"] = draw(st.floats(-10, 10, allow_nan=False))
        rows.append(row)
    return rows


def file_types(fmt: str) -> tuple[str, ...]:
    """CSV cells are text: conversational rows (lists of messages) do not fit in one."""
    return (*TEXT_FILES, *ARROW_FILES) if fmt == "standard" else (".jsonl", ".json", *ARROW_FILES)


# ---- files -----------------------------------------------------------------------------------------------


def csv_cell(value: Any) -> str:
    return "" if value is None else json.dumps(value) if isinstance(value, list | dict) else str(value)


def write(rows: list[dict[str, Any]], path: Path, raw: bytes | None = None) -> Path:
    """Rows to a file (or directory) chosen by the path's suffix; MARK in a text file becomes `raw`."""
    if path.suffix in TEXT_FILES:
        if path.suffix == ".jsonl":
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        elif path.suffix == ".json":
            text = json.dumps(rows, ensure_ascii=False, indent=1)
        else:
            out = io.StringIO()
            columns = list(dict.fromkeys(k for r in rows for k in r))
            writer = csv.DictWriter(out, columns, restval="")
            writer.writeheader()
            writer.writerows({k: csv_cell(v) for k, v in r.items()} for r in rows)
            text = out.getvalue()
        data = text.encode()
        path.write_bytes(data.replace(MARK.encode(), raw) if raw is not None else data)
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def build(path: Path, kind: str, max_prompt_length: int | None = None) -> datasets.Dataset:
    spec = DataSpec(train=SourceSpec(path=str(path)), max_length=512, max_prompt_length=max_prompt_length)
    return build_datasets(spec, kind, TOK, seed=0)[0]


def assert_loads_or_names(path: Path, kind: str, row: int | None, max_prompt_length: int | None = None) -> None:
    """build_datasets succeeds, or its DataError names the file on every line, and `row` when one is at fault.

    The outcome is recorded as an event: pytest --hypothesis-show-statistics shows how often each happened.
    """
    try:
        build(path, kind, max_prompt_length)
    except DataError as e:
        message = str(e)
        for line in message.splitlines():
            assert line.startswith(f"{path}: ") or re.fullmatch(r"\(\d+ more bad rows\)", line), message
        if row is not None:
            assert re.search(rf"^{re.escape(str(path))}: row {row}\b", message, re.M), message
        event("DataError naming a row" if re.search(r"^\S+: row \d+", message, re.M) else "DataError naming the file")
    else:
        event("loaded")


# ---- mutations -------------------------------------------------------------------------------------------

Mutation = Callable[[Any], Any]
VALUE_MUTATIONS: dict[str, Mutation] = {
    "null": lambda v: None,
    "empty": lambda v: "",
    "blank": lambda v: " \n\t",
    "int": lambda v: 7,
    "float": lambda v: 1.5,
    "bool": lambda v: True,
    "list": lambda v: ["a", "b"],
    "dict": lambda v: {"a": "b"},
    "string": lambda v: "true",
    "huge": lambda v: [{**m, "content": "x" * HUGE} for m in v] if isinstance(v, list) else "x" * HUGE,
}
MESSAGE_MUTATIONS: dict[str, Mutation] = {
    "no_messages": lambda v: [],
    "strings": lambda v: [m["content"] for m in v],
    "no_content": lambda v: [{"role": m["role"]} for m in v],
    "int_content": lambda v: [{**m, "content": 3} for m in v],
    "null_role": lambda v: [{**m, "role": None} for m in v],
    "nested": lambda v: [v],
    "assistant_first": lambda v: [m for m in v if m["role"] != "user"],
    "empty_content": lambda v: [{**m, "content": ""} for m in v],
}


def mutate_row(row: dict[str, Any], field: str, mutation: str) -> tuple[dict[str, Any], bytes | None]:
    """The row with one field mutated, and the raw bytes MARK stands for where the mutation is bytes."""
    row = dict(row)
    if mutation == "drop":
        del row[field]
    elif mutation == "rename":
        row[field + "_x"] = row.pop(field)
    elif mutation in BAD_BYTES:
        value = row[field]
        row[field] = MARK if not isinstance(value, list) else [{**m, "content": MARK} for m in value]
        return row, BAD_BYTES[mutation]
    elif mutation in MESSAGE_MUTATIONS:
        if isinstance(row[field], list):
            row[field] = MESSAGE_MUTATIONS[mutation](row[field])
    else:
        row[field] = VALUE_MUTATIONS[mutation](row[field])
    return row, None


KIND_FORMAT = st.tuples(st.sampled_from(KINDS), st.sampled_from(FORMATS))


# ---- properties ------------------------------------------------------------------------------------------


@fuzz_settings(100)
@given(data=st.data(), kind_format=KIND_FORMAT)
def test_valid_files_load_as_written(data: st.DataObject, kind_format: tuple[str, str]) -> None:
    kind, fmt = kind_format
    rows = data.draw(records(kind, fmt))
    suffix = data.draw(st.sampled_from(file_types(fmt)))
    with tempfile.TemporaryDirectory() as tmp:
        path = write(rows, Path(tmp) / f"d{suffix}" if suffix != "disk" else Path(tmp) / "disk")
        loaded = load_records(SourceSpec(path=str(path)), kind).to_list()
        if suffix == ".csv":  # text cells: what the rows say as text, label and margin parsed back
            rows = [{k: v if k in ("label", "margin") else csv_cell(v) for k, v in r.items()} for r in rows]
        assert [{k: r[k] for k in rows[0]} for r in loaded] == rows
        assert len(build(path, kind)) == len(rows)


@fuzz_settings(160)
@given(data=st.data(), kind_format=KIND_FORMAT)
def test_a_mutated_row_of_a_text_file_is_named(data: st.DataObject, kind_format: tuple[str, str]) -> None:
    kind, fmt = kind_format
    rows = data.draw(records(kind, fmt))
    suffix = data.draw(st.sampled_from([s for s in file_types(fmt) if s in TEXT_FILES]))
    mutations = [*VALUE_MUTATIONS, "drop", "rename", *BAD_BYTES, *(MESSAGE_MUTATIONS if fmt != "standard" else [])]
    mutation = data.draw(st.sampled_from(mutations))
    i = data.draw(st.integers(0, len(rows) - 1))
    field = data.draw(st.sampled_from(sorted(rows[i])))
    rows[i], raw = mutate_row(rows[i], field, mutation)
    max_prompt_length = data.draw(st.sampled_from([None, 256]))
    with tempfile.TemporaryDirectory() as tmp:
        path = write(rows, Path(tmp) / f"d{suffix}", raw)
        assert_loads_or_names(path, kind, i + 1, max_prompt_length)


@fuzz_settings(120)
@given(data=st.data(), kind_format=KIND_FORMAT)
def test_a_mutated_column_names_the_first_row(data: st.DataObject, kind_format: tuple[str, str]) -> None:
    """Drop, rename, retype or null a whole column, in every file type: a bad column shows first in row 1."""
    kind, fmt = kind_format
    rows = data.draw(records(kind, fmt))
    suffix = data.draw(st.sampled_from(file_types(fmt)))
    field = data.draw(st.sampled_from(sorted(rows[0])))
    mutation = data.draw(st.sampled_from(["drop", "rename", "null", "empty", "int", "float", "bool", "list", "string"]))
    rows = [mutate_row(r, field, mutation)[0] for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        path = write(rows, Path(tmp) / f"d{suffix}" if suffix != "disk" else Path(tmp) / "disk")
        assert_loads_or_names(path, kind, 1)


def damage_file(path: Path, how: str, where: float, noise: bytes) -> None:
    data = path.read_bytes()
    at = int(where * len(data))
    line_end = data.find(b"\n", at) + 1  # 0 when no line ends after `at`: the junk line goes first
    damaged = {
        "truncate": data[:at],
        "random": noise,
        "flip": data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :] if at < len(data) else data,
        "insert": data[:at] + noise + data[at:],
        "junk_line": data[:line_end] + noise.replace(b"\n", b"") + b"\n" + data[line_end:],
        "bom": b"\xef\xbb\xbf" + data,
        "crlf": data.replace(b"\n", b"\r\n"),
        "blank_lines": data.replace(b"\n", b"\n\n"),
    }[how]
    path.write_bytes(damaged)


@fuzz_settings(200)
@given(
    data=st.data(),
    kind_format=KIND_FORMAT,
    how=st.sampled_from(["truncate", "random", "flip", "insert", "junk_line", "bom", "crlf", "blank_lines", "unlink"]),
    where=st.floats(0, 1, exclude_max=True),
    noise=st.binary(min_size=0, max_size=64),
)
def test_a_damaged_file_names_the_file(
    data: st.DataObject, kind_format: tuple[str, str], how: str, where: float, noise: bytes
) -> None:
    """Truncated, random, flipped or padded bytes, in any file type or any file of a saved dataset."""
    kind, fmt = kind_format
    rows = data.draw(records(kind, fmt))
    suffix = data.draw(st.sampled_from(file_types(fmt)))
    with tempfile.TemporaryDirectory() as tmp:
        path = write(rows, Path(tmp) / f"d{suffix}" if suffix != "disk" else Path(tmp) / "disk")
        files = sorted(p for p in path.iterdir()) if path.is_dir() else [path]
        target = data.draw(st.sampled_from(files))
        if how == "unlink":
            target.unlink()
        else:
            damage_file(target, how, where, noise)
        assert_loads_or_names(path, kind, None)
