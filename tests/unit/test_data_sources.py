"""Loading records from every supported source, column mapping, and row errors that name file and row."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from alignkit.data import DataError, SourceSpec, load_records, write_jsonl

PREFS = [
    {"prompt": "Q1", "chosen": " good one", "rejected": " bad one"},
    {"prompt": "Q2", "chosen": " fine", "rejected": " poor"},
    {"prompt": "", "chosen": " yes", "rejected": " no"},
]


def write(records: list[dict], path: Path) -> Path:
    """Records to a file (or save_to_disk directory) chosen by the path's suffix."""
    if path.suffix == ".jsonl":
        return write_jsonl(records, path)
    if path.suffix == ".json":
        path.write_text(json.dumps(records))
        return path
    ds = Dataset.from_list(records)  # arrow needs one type per column: only files above can mix them
    if path.suffix == ".parquet":
        ds.to_parquet(str(path))
    elif path.suffix == ".csv":
        ds.to_csv(str(path))
    elif path.name == "dict":
        DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(path))
    else:
        ds.save_to_disk(str(path))
    return path


def load(path: Path, kind: str = "preference", **spec) -> Dataset:
    return load_records(SourceSpec(path=str(path), **spec), kind)


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.parquet", "d.csv", "disk", "dict"])
def test_every_source_type_loads_the_same_records(tmp_path: Path, name: str) -> None:
    path = write(PREFS, tmp_path / name)
    assert load(path).to_list() == PREFS


def test_split_of_a_dataset_dict_directory(tmp_path: Path) -> None:
    path = write(PREFS, tmp_path / "dict")
    assert load(path, split="test").to_list() == PREFS[:1]
    with pytest.raises(DataError, match=r"no split 'dev' \(got splits: train, test\)"):
        load(path, split="dev")


def test_column_mapping_and_limit(tmp_path: Path) -> None:
    renamed = [
        {"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"], "id": i} for i, r in enumerate(PREFS)
    ]
    path = write(renamed, tmp_path / "renamed.jsonl")
    ds = load(path, columns={"prompt": "question", "chosen": "good", "rejected": "bad"}, limit=2)
    assert [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ds] == PREFS[:2]
    assert ds["id"] == [0, 1]  # unmapped columns ride along


def test_mapped_column_wins_over_a_same_named_column(tmp_path: Path) -> None:
    rows = [{"prompt": "old", "question": "new", "completion": " c"}]
    ds = load(write(rows, tmp_path / "p.jsonl"), "completion", columns={"prompt": "question"})
    assert ds[0]["prompt"] == "new"


def test_missing_rejected_names_file_row_and_fix(tmp_path: Path) -> None:
    # Other rows hold 'rejected', so the fix is this row's value, not a column mapping.
    rows = [*PREFS, {"prompt": "Q", "chosen": " c"}, *PREFS]
    path = write(rows, tmp_path / "prefs.jsonl")
    with pytest.raises(DataError) as err:
        load(path)
    assert str(err.value) == (
        f"{path}: row 4: missing 'rejected' (null or absent in this row); fill it in or drop the row"
    )


def test_column_absent_everywhere_is_reported_once(tmp_path: Path) -> None:
    path = write([{"prompt": "Q", "chosen": " c"}] * 5, tmp_path / "prefs.jsonl")
    with pytest.raises(DataError, match=r"row 1: missing 'rejected'") as err:
        load(path)
    assert "row 2" not in str(err.value)


# Not the string "true" beside real booleans: datasets stores a mixed column as JSON text and reads it back
# as the boolean. A column of only strings stays strings, and is caught.
@pytest.mark.parametrize("bad", [1, 0, "yes"])
def test_kto_label_must_be_a_real_bool(tmp_path: Path, bad: object) -> None:
    rows = [
        {"prompt": "Q", "completion": " a", "label": True},
        {"prompt": "Q", "completion": " b", "label": bad},
    ]
    path = write(rows, tmp_path / "kto.jsonl")
    with pytest.raises(DataError, match=rf"kto\.jsonl: row 2: 'label' must be true or false \(got {bad!r}"):
        load(path, "unpaired")


def test_kto_label_strings_are_an_error(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Q", "completion": " a", "label": "true"},
        {"prompt": "Q", "completion": " b", "label": "false"},
    ]
    with pytest.raises(DataError, match=r"kto\.jsonl: row 1: 'label' must be true or false \(got 'true' of type str"):
        load(write(rows, tmp_path / "kto.jsonl"), "unpaired")


def test_empty_completion_and_several_bad_rows(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Q", "completion": " ok"},
        {"prompt": "Q", "completion": ""},
        {"prompt": "Q", "completion": 3},
    ]
    path = write(rows, tmp_path / "sft.json")
    with pytest.raises(DataError) as err:
        load(path, "completion")
    message = str(err.value)
    assert f"{path}: row 2: 'completion' is empty" in message
    assert "row 3: 'completion' must be a string (got int)" in message


def test_empty_chosen_is_an_error(tmp_path: Path) -> None:
    path = write([PREFS[0], {**PREFS[1], "chosen": "  "}], tmp_path / "p.jsonl")
    with pytest.raises(DataError, match=r"p\.jsonl: row 2: 'chosen' is empty"):
        load(path)


def test_mapping_a_column_that_does_not_exist(tmp_path: Path) -> None:
    path = write(PREFS, tmp_path / "prefs.parquet")
    with pytest.raises(DataError, match=r"names columns the source lacks \(got good\); columns present: prompt"):
        load(path, columns={"chosen": "good"})


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        load(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("hi")
    with pytest.raises(DataError, match=r"unsupported file type \(got '\.txt'\); allowed: \.jsonl"):
        load(tmp_path / "d.txt")


def test_conversational_rows_are_detected_and_checked(tmp_path: Path) -> None:
    user = [{"role": "user", "content": "hi"}]
    good = {
        "prompt": user,
        "chosen": [{"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "assistant", "content": "go"}],
    }
    bad = {**good, "rejected": [{"role": "user", "content": "go"}]}
    path = write([good, bad], tmp_path / "chat.jsonl")
    with pytest.raises(DataError, match=r"row 2: 'rejected' has no non-empty assistant message"):
        load(path)
    assert load(path, limit=1).to_list() == [good]


def test_generator_of_the_wrong_kind() -> None:
    with pytest.raises(
        DataError,
        match=r"generator:reverse_words: makes completion or prompt records, not the "
        r"preference records needed here; generators that make preference records: sentiment_pairs",
    ):
        load_records(SourceSpec(generator="reverse_words"), "preference")


# Regression tests for files that used to end in a raw traceback, a message without the row, or silent
# coercion; each now names the file and, where a row is at fault, the row.

GOOD_LINE = b'{"prompt": "Q", "completion": " a"}\n'


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        (b"{not json\n", r"row 2: not valid JSON \(Expecting property name enclosed in double quotes at column 2\)"),
        (b'{"prompt": "Q", "co\n', r"row 2: not valid JSON \(Unterminated string starting at column 17\)"),
        (b'{"prompt": "Q\x00", "completion": " a"}\n', r"row 2: not valid JSON \(Invalid control character"),
        (b"[1, 2]\n", r"row 2: not a JSON object \(got a list\); write each row as an object"),
        (b'{"prompt": "Q", "prompt": "R", "completion": " a"}\n', r"row 2: key 'prompt' appears twice"),
        (b'{"prompt": "Q\\ud800", "completion": " a"}\n', r"row 2: a \\u escape encodes half a UTF-16 surrogate"),
        (b'{"prompt": "Q\xff", "completion": " a"}\n', r"row 2: not UTF-8 \(byte 0xff\); save the file as UTF-8"),
    ],
)
def test_a_broken_json_line_names_its_row(tmp_path: Path, bad_line: bytes, message: str) -> None:
    # datasets reported none of these with a row; the non-UTF-8 one escaped as a raw UnicodeDecodeError.
    path = tmp_path / "sft.jsonl"
    path.write_bytes(GOOD_LINE + bad_line + GOOD_LINE)
    with pytest.raises(DataError, match=rf"^{path}: {message}"):
        load(path, "completion")


def test_json_line_rows_skip_blank_lines_and_give_the_line_too(tmp_path: Path) -> None:
    path = tmp_path / "sft.jsonl"
    path.write_bytes(GOOD_LINE + b"\n\n" + b"{oops\n" * 5)
    with pytest.raises(DataError) as err:
        load(path, "completion")
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"{path}: row 2 (line 4): not valid JSON")
    assert lines[2].startswith(f"{path}: row 4 (line 6): not valid JSON")
    assert lines[3] == "(2 more bad rows)"


def test_a_type_change_after_the_first_10_mb_is_reported_not_cast(tmp_path: Path) -> None:
    # datasets reads JSON lines in 10 MB chunks and cast later chunks to the first one's types: this int
    # prompt was silently trained on as the text "7".
    big = {"prompt": "Q", "completion": "x" * (1 << 20)}
    path = write([big] * 11 + [{"prompt": 7, "completion": " a"}], tmp_path / "big.jsonl")
    with pytest.raises(DataError, match=rf"^{path}: row 12: 'prompt' must be a string \(got int\)$"):
        load(path, "completion")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.json", b'[{"a": 1},\n {"a" 1}]', r"row 2 \(line 2\): not valid JSON \(Expecting ':' .* at line 2 column 7"),
        ("d.json", b'[{"a": 1}\n {"a": 1}]', r"line 2: expected ',' or '\]' after row 1; separate rows with commas"),
        ("d.json", b'[{"prompt": "Q", "completion": " a"}, 3]', r"row 2 \(line 1\): not a JSON object \(got a"),
        ("d.json", b'[{"prompt": "Q\xfe", "completion": " a"}]', r"row 1 \(line 1\): not UTF-8 \(byte 0xfe\)"),
        ("d.json", b'"just text"', r"line 1: a string, not a list of rows; write a list of objects"),
        ("d.csv", b"prompt,completion\nQ,a\nQ,a,b\n", r"row 2 \(line 3\): 3 fields under a header of 2; quote fields"),
        ("d.csv", b'prompt,completion\nQ,a\n"Q,a\n', r"row 2 \(line 3\): bad quoting \(unexpected end of data\)"),
        ("d.csv", b"prompt,completion\nQ,a\nQ\xff,a\n", r"row 2 \(line 3\): not UTF-8 \(byte 0xff\)"),
        ("d.csv", b"\xff\xfep\x00r\x00o\x00m\x00p\x00t\x00\n\x00", r"header \(line 1\): not UTF-8 \(byte 0xff\)"),
    ],
)
def test_broken_json_and_csv_files_name_the_row(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"^{path}: {message}"):
        load(path, "completion")


def test_a_json_object_of_lists_says_it_is_one_row(tmp_path: Path) -> None:
    path = tmp_path / "cols.json"
    path.write_text('{"prompt": ["Q1", "Q2"], "chosen": [" a", " b"], "rejected": [" c", " d"]}')
    with pytest.raises(DataError) as err:
        load(path)
    assert str(err.value).splitlines()[-1] == (
        f'{path}: holds one JSON object, read as one row; to give rows, write a list of objects ([{{"prompt": "...", '
        "...}, ...]) or one object per line"
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("d.jsonl", b""),
        ("d.jsonl", b"\n \n\n"),
        ("d.json", b"[]"),
        ("d.csv", b""),
        ("d.csv", b"prompt,completion\n"),
        ("d.parquet", b""),
    ],
)
def test_a_file_without_rows_says_so(tmp_path: Path, name: str, content: bytes) -> None:
    # These said "could not be read (StopIteration: )" or "Instruction "train" corresponds to no data!".
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"^{path}: no rows; point data.train at a source with records$"):
        load(path, "completion", columns={"prompt": "prompt"})


def test_a_parquet_file_without_rows_says_so(tmp_path: Path) -> None:
    path = write(PREFS, tmp_path / "d.parquet")
    Dataset.from_parquet(str(path)).select([]).to_parquet(str(path))
    with pytest.raises(DataError, match=rf"^{path}: no rows"):
        load(path)


def test_a_truncated_parquet_file(tmp_path: Path) -> None:
    path = write(PREFS * 20, tmp_path / "d.parquet")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=rf"^{path}: not a readable parquet file \(ArrowInvalid: .*write it again$"):
        load(path)


def test_a_directory_that_is_no_saved_dataset(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=rf"^{empty}: not a saved dataset \(the directory is empty, with no state"):
        load(empty)
    (tmp_path / "files").mkdir()
    write(PREFS, tmp_path / "files" / "a.jsonl")
    (tmp_path / "files" / "dataset_info.json").write_text("{}")
    with pytest.raises(
        DataError, match=r"files: not a saved dataset \(the directory holds a\.jsonl, dataset_info\.json, .*at one "
    ):
        load(tmp_path / "files")


def test_a_saved_dataset_with_a_missing_or_corrupt_file(tmp_path: Path) -> None:
    path = write(PREFS, tmp_path / "disk")
    (arrow,) = path.glob("*.arrow")
    arrow.write_bytes(arrow.read_bytes()[:50])
    with pytest.raises(DataError, match=rf"^{path}: a save_to_disk directory with missing or corrupt files \("):
        load(path)
    arrow.unlink()
    with pytest.raises(DataError, match=r"missing or corrupt files \(FileNotFoundError: .*save the dataset again$"):
        load(path)


def test_csv_cells_are_text_as_written_and_label_and_margin_are_parsed(tmp_path: Path) -> None:
    # pandas read a completion "42" as a number (an error here), and failed on a column that changed type
    # after its first 10,000-row chunk.
    path = tmp_path / "sft.csv"
    path.write_text("prompt,completion\n" + "2+2=,4\n" * 10_000 + "2+2=,four\n")
    assert load(path, "completion")["completion"][-2:] == ["4", "four"]
    kto = tmp_path / "kto.csv"
    kto.write_text("prompt,completion,label\nQ,a,true\nQ,b,False\n")
    assert load(kto, "unpaired")["label"] == [True, False]
    prefs = tmp_path / "prefs.csv"
    prefs.write_text("prompt,chosen,rejected,margin\nQ,a,b,1.5\nQ,a,b,2\n")
    assert load(prefs)["margin"] == [1.5, 2.0]


def test_a_bad_csv_margin_names_only_its_row(tmp_path: Path) -> None:
    # One bad cell made pandas read the whole column as text, and every row was reported.
    path = tmp_path / "prefs.csv"
    path.write_text("prompt,chosen,rejected,margin\nQ,a,b,1.5\nQ,a,b,lots\nQ,a,b,\n")
    with pytest.raises(DataError) as err:
        load(path)
    assert str(err.value) == (
        f"{path}: row 2: 'margin' must be a finite number (got 'lots'); fill it in or drop the margin column\n"
        f"{path}: row 3: 'margin' must be a finite number (got ''); fill it in or drop the margin column"
    )
    kto = tmp_path / "kto.csv"
    kto.write_text("prompt,completion,label\nQ,a,true\nQ,b,1\n")
    with pytest.raises(DataError, match=r"row 2: 'label' must be true or false \(got '1' of type str\); write true"):
        load(kto, "unpaired")


def test_null_values_and_infinite_margins(tmp_path: Path) -> None:
    path = write([{"prompt": "Q", "completion": None}], tmp_path / "sft.jsonl")
    with pytest.raises(DataError, match=r"row 1: missing 'completion' \(null or absent in this row\); fill it in or"):
        load(path, "completion")
    path = tmp_path / "prefs.jsonl"
    path.write_text('{"prompt": "Q", "chosen": " a", "rejected": " b", "margin": Infinity}\n')
    with pytest.raises(DataError, match=r"row 1: 'margin' must be a finite number \(got inf\)"):
        load(path)


def test_a_conversational_prompt_of_empty_messages(tmp_path: Path) -> None:
    rows = [{"prompt": [{"role": "user", "content": "hi"}]}, {"prompt": [{"role": "user", "content": " "}]}]
    with pytest.raises(DataError, match=r"row 2: 'prompt' has only empty messages; drop the row or fill it in$"):
        load(write(rows, tmp_path / "p.jsonl"), "prompt")


def test_rows_that_are_empty_objects_are_named(tmp_path: Path) -> None:
    # datasets read a file of only {} as no data at all: "Instruction "train" corresponds to no data!".
    path = tmp_path / "empty_rows.jsonl"
    path.write_text("{}\n{}\n")
    with pytest.raises(DataError, match=rf"^{path}: row 1: an empty JSON object; write the row's columns"):
        load(path, "completion")


def test_a_json_list_keeps_every_digit_of_its_numbers(tmp_path: Path) -> None:
    # datasets passed a .json list through pandas' ujson, which kept 10 significant digits.
    rows = [{**PREFS[0], "margin": -9.87654321e-05}, {**PREFS[1], "margin": 0.1234567890123456}]
    assert load(write(rows, tmp_path / "prefs.json"))["margin"] == [-9.87654321e-05, 0.1234567890123456]


@pytest.mark.parametrize("name", ["d.parquet", "disk"])
def test_bytes_corrupted_inside_a_string_are_reported(tmp_path: Path, name: str) -> None:
    # A flipped byte inside a stored string escaped as a raw UnicodeDecodeError when the row was read.
    rows = [{"prompt": "Q", "completion": " hello there"}] * 3
    path = tmp_path / name
    if name == "disk":
        Dataset.from_list(rows).save_to_disk(str(path))
        (target,) = path.glob("*.arrow")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path, compression="NONE", use_dictionary=False)
        target = path
    target.write_bytes(target.read_bytes().replace(b"hello", b"h\xffllo"))
    with pytest.raises(DataError, match=rf"^{path}: corrupt data \(ArrowInvalid: .*UTF8.*\); write the file or dir"):
        load(path, "completion")
