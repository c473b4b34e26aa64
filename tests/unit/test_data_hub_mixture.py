"""Sources read through datasets.load_dataset (`hub:`), offline, and mixtures of sources by weight."""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
import yaml
from conftest import MINIMAL
from pydantic import ValidationError

from alignkit.config.errors import ConfigError
from alignkit.config.load import config_from_dict
from alignkit.data import DataError, DataSpec, SourceSpec, build_datasets, load_records, write_jsonl
from alignkit.data.mixture import mixture_counts, mixture_rows
from alignkit.models.tokenizer import byte_tokenizer

PAIRS = [{"question": f"Q{i}", "good": f" good {i}", "bad": f" bad {i}"} for i in range(4)]
AS_PREFERENCE = {"prompt": "question", "chosen": "good", "rejected": "bad"}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here may reach the network. datasets and huggingface_hub read the variables when imported, so
    their module constants are set too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def prompts(tmp_path: Path, name: str, n: int, **extra: object) -> Path:
    """n prompt rows whose `src` column says which file they came from."""
    return write_jsonl([{"prompt": f"{name}{i}", "src": name, **extra} for i in range(n)], tmp_path / f"{name}.jsonl")


def mixed(train: list[dict], seed: int = 0, **data: object) -> datasets.Dataset:
    spec = DataSpec(train=train, **data)
    return build_datasets(spec, "prompt", byte_tokenizer(), seed=seed)[0]


def config(data: dict) -> object:
    raw = copy.deepcopy(MINIMAL["sft"])
    raw["data"] = data
    return config_from_dict(raw)


def problems(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config(data)
    return str(info.value)


# hub sources through load_dataset's local builders


def test_json_builder_reads_a_split_and_maps_columns_like_a_path(tmp_path: Path) -> None:
    write_jsonl(PAIRS, tmp_path / "train.jsonl")
    write_jsonl(PAIRS[:2], tmp_path / "test.jsonl")
    files = {"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl")}
    source = SourceSpec(hub="json", data_files=files, split="test", columns=AS_PREFERENCE)
    got = load_records(source, "preference").to_list()
    assert got == load_records(SourceSpec(path=files["test"], columns=AS_PREFERENCE), "preference").to_list()
    assert got == [
        {"prompt": "Q0", "chosen": " good 0", "rejected": " bad 0"},
        {"prompt": "Q1", "chosen": " good 1", "rejected": " bad 1"},
    ]
    assert len(load_records(source.model_copy(update={"split": None, "limit": 3}), "preference")) == 3


def test_csv_builder_reads_cells_as_a_csv_path_does(tmp_path: Path) -> None:
    """Labels written true/false and a completion "42" stay what they are, as for `path: x.csv`."""
    path = tmp_path / "d.csv"
    path.write_text("q,a,ok\nQ1,42,true\nQ2, fine,FALSE\n")
    columns = {"prompt": "q", "completion": "a", "label": "ok"}
    got = load_records(SourceSpec(hub="csv", data_files=str(path), columns=columns), "unpaired").to_list()
    assert got == load_records(SourceSpec(path=str(path), columns=columns), "unpaired").to_list()
    assert got == [
        {"prompt": "Q1", "completion": "42", "label": True},
        {"prompt": "Q2", "completion": " fine", "label": False},
    ]


def test_a_local_directory_of_data_files_by_split(tmp_path: Path) -> None:
    write_jsonl(PAIRS, tmp_path / "set" / "train.jsonl")
    write_jsonl(PAIRS[3:], tmp_path / "set" / "test.jsonl")
    source = SourceSpec(hub=str(tmp_path / "set"), split="test", columns=AS_PREFERENCE)
    assert load_records(source, "preference")["prompt"] == ["Q3"]
    assert len(load_records(source.model_copy(update={"split": None}), "preference")) == 4


def test_a_save_to_disk_directory_is_read_with_path(tmp_path: Path) -> None:
    datasets.Dataset.from_list(PAIRS).save_to_disk(str(tmp_path / "saved"))
    source = SourceSpec(hub=str(tmp_path / "saved"), columns=AS_PREFERENCE)
    with pytest.raises(DataError, match=rf"written by save_to_disk, .*; set data.train.path: {tmp_path}/saved in"):
        load_records(source, "preference")
    assert len(load_records(SourceSpec(path=str(tmp_path / "saved"), columns=AS_PREFERENCE), "preference")) == 4


def test_bad_rows_of_a_hub_source_name_the_source_and_row(tmp_path: Path) -> None:
    path = write_jsonl([*PAIRS[:2], {"question": "Q", "good": 7, "bad": " x"}], tmp_path / "d.jsonl")
    source = SourceSpec(hub="json", data_files=str(path), columns=AS_PREFERENCE)
    with pytest.raises(DataError, match=rf"^hub:json\({path}\)\[train\]: row 3: 'chosen' must be a string"):
        load_records(source, "preference")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "Q", "good": " a", "bad": " b"}\n{"question": \n')
    with pytest.raises(DataError, match=rf"^{broken}: row 2: not valid JSON"):
        load_records(source.model_copy(update={"data_files": str(broken)}), "preference")


def test_hub_source_errors_name_the_yaml_path_and_the_fix(tmp_path: Path) -> None:
    write_jsonl(PAIRS, tmp_path / "d.jsonl")
    cases = [
        ({"data_files": str(tmp_path / "none.jsonl")}, r"data_files '.*none.jsonl' not found .*check the path"),
        (
            {"data_files": str(tmp_path / "none" / "*.jsonl")},
            r"data_files '.*' match no file, or only empty ones; check the pattern",
        ),
        ({"data_files": str(tmp_path / "d.jsonl"), "split": "dev"}, r"Unknown split \"dev\".*check data.eval.split"),
    ]
    for fields, message in cases:
        with pytest.raises(DataError, match=rf"^data.eval \(hub:json.*\): {message}"):
            load_records(SourceSpec(hub="json", **fields), "preference", key="data.eval")


@pytest.mark.parametrize(
    ("train", "key"),
    [
        ({"hub": "no-such-org/no-such-set", "config": "en"}, "data.train"),
        ([{"generator": "reverse_words"}, {"hub": "no-such-org/no-such-set", "config": "en"}], "data.train[1]"),
    ],
)
def test_an_unreachable_hub_name_says_which_source_and_what_to_do(train: object, key: str) -> None:
    """Offline, a made-up name and a real one that is not cached fail alike: the message covers both."""
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        build_datasets(DataSpec(train=train), "completion", byte_tokenizer(), seed=0)
    message = str(info.value)
    assert message.startswith(f"{key} (hub:no-such-org/no-such-set:en[train]): ")
    assert "could not reach the Hugging Face hub to load 'no-such-org/no-such-set' (offline: HF_HUB_OFFLINE" in message
    assert "check the name" in message
    assert (
        "datasets.load_dataset('no-such-org/no-such-set', name='en', split='train').save_to_disk('DIR'), and set "
        f"{key}.path: DIR in place of hub:" in message
    )
    assert time.perf_counter() - start < 10  # offline: no retries against the network


def test_hub_source_validation() -> None:
    assert SourceSpec(hub="org/set").name == "hub:org/set[train]"
    assert SourceSpec(hub="json", data_files="a.jsonl", split="test").name == "hub:json(a.jsonl)[test]"
    assert "data.train: set exactly one of path, generator or hub (got path and hub)" in problems(
        {"train": {"path": "a.jsonl", "hub": "org/set"}}
    )
    assert "data.train.config: applies only to a hub source (got config with path); remove it" in problems(
        {"train": {"path": "a.jsonl", "config": "en"}}
    )
    assert "data.train.data_files: required with the local builder hub: json (got none)" in problems(
        {"train": {"hub": "json"}}
    )
    with pytest.raises(ValidationError, match=r"split applies only to a path or hub"):
        SourceSpec(generator="reverse_words", split="train")


# mixtures


def test_mixture_counts_by_hand() -> None:
    """Shares are weight / sum of weights; the default size is min(rows / share) over the sources, floored.

    3:1 over 300 and 100 rows: shares 3/4 and 1/4, size min(300 / (3/4), 100 / (1/4)) = 400 -> 300 + 100.
    3:1 over 100 and 100 rows: size min(133.3, 400) = 133; 133 * 3/4 = 99.75 and 133 * 1/4 = 33.25 floor to
    99 + 33 = 132, and the larger remainder (.75) takes the last row -> 100 + 33 (75.2% / 24.8%).
    1:1:1 at size 10: 3.33 each -> 3 + 3 + 3, the tie for the last row goes to the first source -> 4, 3, 3.
    2:1 over 5 and 100 rows at size 30: 20 + 10, the first source repeating its 5 rows 4 times each.
    """
    assert mixture_counts([300, 100], [3, 1]) == [300, 100]
    assert mixture_counts([100, 100], [3, 1]) == [100, 33]
    assert mixture_counts([10, 10, 10], [1, 1, 1], 10) == [4, 3, 3]
    assert mixture_counts([5, 100], [2, 1], 30) == [20, 10]
    assert mixture_counts([100, 100], [0.3, 0.1]) == [100, 33]  # only the ratio counts


def test_mixture_rows_depend_only_on_the_seed_and_the_place_in_the_list() -> None:
    rows = mixture_rows([10, 5], [4, 5], seed=0)
    assert sorted(rows) == sorted(mixture_rows([10, 5], [4, 5], seed=0))
    assert rows == mixture_rows([10, 5], [4, 5], seed=0)
    first = sorted(r for s, r in rows if s == 0)
    assert len(first) == len(set(first)) == 4
    # another second source leaves the rows the first one gives unchanged
    assert sorted(r for s, r in mixture_rows([10, 50], [4, 20], seed=0) if s == 0) == first
    assert sorted(r for s, r in rows if s == 1) == [0, 1, 2, 3, 4]
    repeated = Counter(r for s, r in mixture_rows([3], [8], seed=0))
    assert sorted(repeated.values()) == [2, 3, 3]  # 8 rows of 3: each twice, two of them a third time


def test_weights_three_to_one_give_75_and_25_percent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, b = prompts(tmp_path, "a", 300), prompts(tmp_path, "b", 100)
    with caplog.at_level(logging.INFO, logger="alignkit.data.mixture"):
        rows = mixed([{"path": str(a), "weight": 3}, {"path": str(b)}])
    assert Counter(rows["src"]) == {"a": 300, "b": 100}
    assert f"data.train[0] ({a}): 300 rows (75.0% of 400), all of its 300 rows, none repeated" in caplog.text
    assert f"data.train[1] ({b}): 100 rows (25.0% of 400), all of its 100 rows, none repeated" in caplog.text
    # equal sizes: the default size is the most at which the 3-weighted source repeats nothing (see above)
    c = prompts(tmp_path, "c", 100)
    assert Counter(mixed([{"path": str(c), "weight": 3}, {"path": str(b)}])["src"]) == {"c": 100, "b": 33}


def test_train_size_repeats_a_small_source_evenly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, b = prompts(tmp_path, "a", 100), prompts(tmp_path, "b", 10)
    with caplog.at_level(logging.INFO, logger="alignkit.data.mixture"):
        rows = mixed([{"path": str(a)}, {"path": str(b)}], train_size=50)
    assert Counter(rows["src"]) == {"a": 25, "b": 25}
    assert sorted(Counter(p for p in rows["prompt"] if p.startswith("b")).values()) == [2] * 5 + [3] * 5
    assert len({p for p in rows["prompt"] if p.startswith("a")}) == 25
    assert f"data.train[1] ({b}): 25 rows (50.0% of 50), each of its 10 rows 2 or 3 times" in caplog.text
    with pytest.raises(DataError, match=r"data.train_size 50 repeats rows of data.train\[1\] .*give data.eval"):
        build_datasets(
            DataSpec(train=[{"path": str(a)}, {"path": str(b)}], train_size=50, eval_fraction=0.1),
            "prompt",
            byte_tokenizer(),
            seed=0,
        )


def test_same_seed_same_mixture_other_seed_other_order(tmp_path: Path) -> None:
    train = [{"path": str(prompts(tmp_path, "a", 50))}, {"path": str(prompts(tmp_path, "b", 30)), "weight": 2}]
    first, again, other = mixed(train, seed=0), mixed(train, seed=0), mixed(train, seed=1)
    assert first["prompt"] == again["prompt"]
    assert first["prompt_input_ids"] == again["prompt_input_ids"]
    assert other["prompt"] != first["prompt"]
    assert Counter(first["src"]) == Counter(other["src"]) == {"a": 15, "b": 30}
    # a single source is not mixed: its rows keep the file's order, whatever the seed
    single = build_datasets(DataSpec(train=train[0]), "prompt", byte_tokenizer(), seed=1)[0]
    assert single["prompt"] == [f"a{i}" for i in range(50)]


def test_a_mixture_of_hub_generator_and_file_sources_for_eval_too(tmp_path: Path) -> None:
    """Preference sources with and without a margin mix: a missing margin is 0, what no margin means."""
    path = write_jsonl(PAIRS, tmp_path / "pairs.jsonl")
    hub = {"hub": "json", "data_files": str(path), "columns": AS_PREFERENCE}
    spec = DataSpec(
        train=[{"generator": "sentiment_pairs", "args": {"n": 8}}, hub],
        eval=[hub, {"path": str(path), "columns": AS_PREFERENCE}],
    )
    train, eval_ = build_datasets(spec, "preference", byte_tokenizer(), seed=0)
    assert len(train) == 8  # min(8 / (1/2), 4 / (1/2)) = 8: 4 of each
    assert sorted(train["margin"])[:4] == [0.0] * 4
    assert len(eval_) == 8 and set(eval_.column_names) == set(train.column_names) - {"margin"}


def test_every_source_of_a_mixture_must_give_the_kind_trained_on(tmp_path: Path) -> None:
    # generators with no kind in common: the schema says so before anything loads
    text = problems({"train": [{"generator": "chat_sft"}, {"generator": "sentiment_unpaired"}]})
    assert "data.train[1]: generator 'sentiment_unpaired' makes unpaired or prompt records, and " in text
    assert "data.train[0] ('chat_sft') makes completion records; every source of a mixture must" in text
    # else while loading, naming the entry of the list
    spec = DataSpec(train=[{"generator": "reverse_words"}, {"generator": "sentiment_pairs"}])
    with pytest.raises(DataError, match=r"^data.train\[1\]: generator:sentiment_pairs: makes preference or prompt"):
        build_datasets(spec, "completion", byte_tokenizer(), seed=0)
    pairs = write_jsonl(PAIRS, tmp_path / "pairs.jsonl")
    spec = DataSpec(train=[{"generator": "reverse_words"}, {"path": str(pairs), "columns": {"prompt": "question"}}])
    with pytest.raises(DataError, match=rf"^data.train\[1\]: {pairs}: row 1: missing 'completion' .*"):
        build_datasets(spec, "completion", byte_tokenizer(), seed=0)
    # prompt rows keep their other columns, which must have one type across the sources
    spec = DataSpec(
        train=[{"path": str(prompts(tmp_path, "a", 4, k=1))}, {"path": str(prompts(tmp_path, "b", 4, k="x"))}]
    )
    with pytest.raises(
        DataError, match=r"data.train\[1\] .*: column 'k' holds Value\('string'\), but in data.train\[0\]"
    ):
        build_datasets(spec, "prompt", byte_tokenizer(), seed=0)
    # a column that one source lacks, or holds only nulls in, is null in that source's rows
    train = [
        {"path": str(prompts(tmp_path, "c", 4, k=None))},
        {"path": str(prompts(tmp_path, "d", 4, k="x", answer="y"))},
        {"path": str(prompts(tmp_path, "e", 4))},
    ]
    rows = mixed(train).to_list()
    assert sorted((r["src"], r["k"], r["answer"]) for r in rows)[::4] == [
        ("c", None, None),
        ("d", "x", "y"),
        ("e", None, None),
    ]


def test_mixture_validation() -> None:
    weightless = problems({"train": [{"generator": "reverse_words"}, {"generator": "reverse_words", "weight": 0}]})
    assert "data.train[1].weight: should be greater than 0 (got 0)" in weightless
    assert "data.eval[0].weight: should be greater than 0 (got -1.0)" in problems(
        {"train": {"generator": "reverse_words"}, "eval": [{"generator": "reverse_words", "weight": -1.0}]}
    )
    both = problems({"train": [{"generator": "reverse_words"}, {"generator": "reverse_words", "path": "a.jsonl"}]})
    assert "data.train[1]: set exactly one of path, generator or hub (got path and generator)" in both
    assert "data.train[1].wieght: unknown key 'wieght'; allowed: " in problems(
        {"train": [{"generator": "reverse_words"}, {"generator": "reverse_words", "wieght": 2}]}
    )
    assert "data.train[0].generator: unknown dataset 'revers_words'" in problems(
        {"train": [{"generator": "revers_words"}]}
    )
    assert "data.train: an empty list of sources; give one source, or a list of sources to mix" in problems(
        {"train": []}
    )
    single = problems({"train": {"generator": "reverse_words", "weight": 2}, "train_size": 10})
    assert "data.train.weight: applies only to a source in a mixture" in single
    assert "data.train_size: applies only to a mixture (data.train as a list of sources; got 10" in single
    # a resolved config writes every default out, weight 1.0 of a single source too, and must load again
    assert isinstance(config({"train": {"generator": "reverse_words", "weight": 1.0}}).data.train, SourceSpec)


README_SNIPPETS = {
    "hub": """
data:
  train:
    hub: openai/gsm8k            # a dataset on the Hugging Face hub, read by datasets.load_dataset
    config: main                 # its configuration (load_dataset's name)
    split: train                 # 'train' when not given; slices such as train[:10%] work too
    revision: main               # a branch, tag or commit
    columns: {prompt: question, completion: answer}
  max_length: 512
""",
    "local builder": """
data:
  train:
    hub: json                    # one of load_dataset's builders: json, csv, parquet, text, ...
    data_files: {train: data/train.jsonl, test: data/test.jsonl}
    split: train
    columns: {prompt: question, completion: answer}
  eval: {hub: json, data_files: {train: data/train.jsonl, test: data/test.jsonl}, split: test,
         columns: {prompt: question, completion: answer}}
""",
    "mixture": """
data:
  train:                         # a list of sources is a mixture, shuffled with trainer.seed
    - {hub: openai/gsm8k, config: main, columns: {prompt: question, completion: answer}, weight: 3}
    - {path: data/extra.jsonl, weight: 1}
    - {generator: reverse_words, args: {n: 500}, weight: 1}
  train_size: 10000              # default: the most rows at which no source repeats one
  eval_fraction: 0.05
""",
}


@pytest.mark.parametrize("name", README_SNIPPETS)
def test_readme_snippets_validate(name: str) -> None:
    data = config(yaml.safe_load(README_SNIPPETS[name])["data"]).data
    assert data.train is not None


def test_local_builder_snippet_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rows = [{"question": f"Q{i}", "answer": f" A{i}"} for i in range(5)]
    write_jsonl(rows, tmp_path / "data" / "train.jsonl")
    write_jsonl(rows[:2], tmp_path / "data" / "test.jsonl")
    spec = config(yaml.safe_load(README_SNIPPETS["local builder"])["data"]).data
    train, eval_ = build_datasets(spec, "completion", byte_tokenizer(), seed=0)
    assert (len(train), len(eval_)) == (5, 2)
