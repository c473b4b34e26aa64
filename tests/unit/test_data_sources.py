"""Loading records from every supported source, column mapping, and row errors that name file and row."""

from __future__ import annotations

import json
from pathlib import Path

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
    rows = [*PREFS, {"prompt": "Q", "chosen": " c"}, *PREFS]
    path = write(rows, tmp_path / "prefs.jsonl")
    with pytest.raises(DataError) as err:
        load(path)
    assert str(err.value) == (
        f"{path}: row 4: missing 'rejected' (columns present: prompt, chosen); "
        "map a column with data.train.columns.rejected: <name>"
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
