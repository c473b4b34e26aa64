"""Fuzzed configs: every experiments/**/*.yaml, mutated at random, loads or fails with ConfigError, never a traceback.

Each example mutates one experiment or pipeline file (drop, rename or add keys at any depth; wrong types,
out-of-range, huge and non-finite numbers, unknown registered names, unicode and empty strings, lists where
mappings are and back) and hands the result to alignkit in one of four ways: as the file itself, as a child
file whose `base:` is the original, as `key=value` overrides of the original, or with a `base:` that is itself
wrong (a number, a directory, a binary file). Loading must succeed or raise ConfigError with a message per
problem, at a key unless the whole file is wrong; `alignkit validate` must exit 0 or 2 with no traceback.
Hypothesis runs derandomized, so every run tries the same cases.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignkit.cli import main
from alignkit.config.errors import ConfigError
from alignkit.config.load import load_config
from alignkit.pipeline import is_pipeline, load_pipeline

EXPERIMENTS = sorted((REPO / "experiments").glob("**/*.yaml"))
# Examples per file: a pipeline validates every stage (about 10x an experiment), so it gets fewer.
EXAMPLES = {"experiment": 45, "pipeline": 20}
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=EXAMPLES["experiment"],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Keys whose values name a registered component, a preset, a choice or another stage.
NAME_KEYS = frozenset(
    {"name", "kind", "preset", "generator", "architecture", "from_stage", "output", "loss_type", "normalize"}
    | {"strategy", "accelerator", "precision", "dtype", "baseline", "format", "env"}
)
HUGE = [10**400, 2**63, -(2**63) - 1, 2**64, 10**30, 1e308]
NON_FINITE = [math.inf, -math.inf, math.nan, 1e308 * 10]
# Other numbers stay within +-10**6: past that, sizes inside int64 (micro_batch_size: 2**40) hang validation in
# the schema's divisor searches (config/schema.py _batch_fix, models/spec.py _divisors), which are linear in the size.
numbers = st.integers(-(10**6), 10**6) | st.floats(-1e6, 1e6)
OUT_OF_RANGE = [0, -1, -(10**6), 0.5, -0.5, 1.5, 5e-324]
STRINGS = [
    "",
    " ",
    "x" * 10_000,
    "名前",
    "\u202eevil",
    "e\u0301",
    "🙂",
    "\x00",
    "${trainer.seed}",
    "${nope.key}",
    "${oc.env:ALIGNKIT_FUZZ_UNSET}",
    "${",
    "???",
    "../../etc/passwd",
]

WHOLE_FILE = re.compile(
    r"not valid YAML|not UTF-8 text|not text|the file must hold a mapping|config file not found|cannot read the file"
    r"|cannot look up|.* is a directory|nested more than|the file expands|override "
)

leaves = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    st.sampled_from(HUGE + NON_FINITE + OUT_OF_RANGE),
    st.text(max_size=12),
    st.sampled_from(STRINGS),
)
values = st.one_of(
    leaves,
    st.lists(leaves, max_size=3),
    st.dictionaries(st.text(max_size=6), leaves, max_size=3),
)
# New keys: misplaced real ones, near misses, nonsense; now and then one YAML reads as a number, bool or null.
keys = st.one_of(
    st.sampled_from(["name", "preset", "base", "stages", "defaults", "compare", "from_stage", "trainer", "seed"]),
    st.sampled_from(["lr", "max_steps", "prompts_per_step", "algorithm", "policy", "data", "args", "kind"]),
    st.sampled_from(["", " ", "x.y", "a=b", "maxsteps", "Trainer", "${x}", "名前"]),
    st.text(max_size=12),
    st.sampled_from([0, 1, None, True, 1.5]),
)


def locations(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every value in a parsed YAML document (mapping keys and list indices), the root first."""
    yield at
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from locations(value, (*at, key))


def holder(doc: Any, at: tuple[Any, ...]) -> Any:
    for key in at[:-1]:
        doc = doc[key]
    return doc


def renamed(value: Any) -> Any:
    """A near miss of a registered name, or nonsense."""
    text = str(value)
    return [text + "x", text[:-1], text.upper(), text[::-1], "", "no_such_" + text, "${x}"]


@st.composite
def mutated(draw: st.DrawFn, original: Any) -> tuple[Any, list[tuple[tuple[Any, ...], Any]]]:
    """A mutated deep copy of `original`, and the (path, new value) edits that made it (None: dropped)."""
    doc = copy.deepcopy(original)  # anchors stay shared, so a mutation through an alias shows everywhere
    edits: list[tuple[tuple[Any, ...], Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        spots = list(locations(doc))
        at = draw(st.sampled_from(spots))
        node = holder(doc, at) if at else None
        value = node[at[-1]] if at else doc
        op = draw(st.sampled_from(["drop", "rename", "add", "replace", "name", "number", "wrap"]))
        if op == "add" or not at:
            if isinstance(value, dict):
                key = draw(keys)
                value[key] = draw(values)
                edits.append(((*at, key), value[key]))
            continue
        if op == "drop" and isinstance(node, dict):
            del node[at[-1]]
            edits.append((at, None))
        elif op == "rename" and isinstance(node, dict):
            key = draw(keys)
            node[key] = node.pop(at[-1])
            edits += [(at, None), ((*at[:-1], key), node[key])]
        elif op == "name" and isinstance(value, str):
            node[at[-1]] = draw(st.sampled_from(renamed(value)) | st.text(max_size=8))
            edits.append((at, node[at[-1]]))
        elif op == "name" and at[-1] in NAME_KEYS:
            node[at[-1]] = draw(values)
            edits.append((at, node[at[-1]]))
        elif op == "number" and isinstance(value, int | float) and not isinstance(value, bool):
            node[at[-1]] = draw(st.sampled_from(HUGE + NON_FINITE + OUT_OF_RANGE) | numbers)
            edits.append((at, node[at[-1]]))
        elif op == "wrap":  # a list where a mapping (or anything) is, a mapping where a list is
            node[at[-1]] = dict(enumerate(value)) if isinstance(value, list) else [value]
            edits.append((at, node[at[-1]]))
        else:
            node[at[-1]] = draw(values)
            edits.append((at, node[at[-1]]))
    return doc, edits


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def flow(value: Any) -> str:
    """A value as one `key=value` override writes it: YAML flow style on one line."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**9)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def as_overrides(original: Any, edits: list[tuple[tuple[Any, ...], Any]]) -> list[str]:
    """The edits as CLI overrides: a list item's edit sets the whole list (overrides name keys, not indices)."""
    out = []
    for at, _ in edits:
        keys_only = at[: next((i for i, k in enumerate(at) if isinstance(k, int) and not isinstance(k, bool)), None)]
        if not keys_only:
            continue
        try:
            value = holder(original, keys_only)[keys_only[-1]]
        except (KeyError, IndexError, TypeError):
            value = None  # dropped, or under a dropped key
        out.append(f"{'.'.join(str(k) for k in keys_only)}={flow(value)}")
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of experiments/ (base: names are relative) with a pipeline's runs root inside it."""
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(REPO / "experiments", root / "experiments")
    (root / "experiments" / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    return root / "experiments"


def original_of(path: Path, workdir: Path) -> Any:
    doc = yaml.safe_load(path.read_text())
    if is_pipeline(path):  # validate looks for finished runs: never in this checkout's runs/
        doc.setdefault("defaults", {}).setdefault("logging", {})["root"] = str(workdir.parent / "runs")
    return doc


def check(path: Path, overrides: list[str]) -> None:
    """Loading succeeds or raises ConfigError; `alignkit validate` exits 0 or 2 without a traceback."""
    try:
        if is_pipeline(path):
            load_pipeline(path, overrides)
        else:
            load_config(path, overrides)
    except ConfigError as err:
        assert err.problems and all(p.message.strip() for p in err.problems), str(err)
        # a problem names its key; only what is wrong with the whole file (or an override) has none
        assert all(p.path or WHOLE_FILE.match(p.message) for p in err.problems), str(err)
    out, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(errors):
        try:
            code = main(["validate", str(path), *overrides])
        except SystemExit as exc:  # argparse: an override that looks like an option, or has no `=`
            code = exc.code
    assert code in (0, 2), errors.getvalue()
    assert "Traceback" not in errors.getvalue()
    assert code == 0 or errors.getvalue().startswith(("error: ", "usage: ")), errors.getvalue()


def fuzz(path: Path, workdir: Path, data: st.DataObject) -> None:
    original = original_of(path, workdir)
    doc, edits = data.draw(mutated(original), label="mutated")
    how = data.draw(st.sampled_from(["file", "file", "base", "overrides", "overrides", "base value"]), label="how")
    file = path.with_name(f"fuzzed_{path.name}")
    overrides: list[str] = []
    if how == "file":
        file.write_text(dump(doc))
    elif how == "base":  # the changed sections over the original as the base file
        file.write_text(dump({"base": path.name, **{k: v for k, v in doc.items() if original.get(k) != v}}))
    elif how == "overrides":
        file.write_text(dump(original))
        overrides = as_overrides(doc, edits)
    else:
        base = data.draw(values | st.sampled_from([".", "binary.yaml", "missing.yaml", [path.name, None]]))
        file.write_text(dump({**doc, "base": base}))
    check(file, overrides)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_unmutated_files_round_trip_and_validate(path: Path, workdir: Path) -> None:
    """The fuzz starts from valid configs: a file dumped back from its parsed YAML still validates."""
    file = workdir / path.relative_to(REPO / "experiments")
    copy_ = file.with_name(f"roundtrip_{file.name}")
    copy_.write_text(dump(original_of(file, workdir)))
    if is_pipeline(copy_):
        load_pipeline(copy_)
    else:
        load_config(copy_)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_mutated_files_load_or_raise_config_error(path: Path, workdir: Path) -> None:
    file = workdir / path.relative_to(REPO / "experiments")
    kind = "pipeline" if is_pipeline(file) else "experiment"

    @settings(FUZZ, max_examples=EXAMPLES[kind])
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        fuzz(file, workdir, data)

    run()


@FUZZ
@given(overrides=st.lists(st.text(max_size=30) | st.builds("{}={}".format, keys, st.text(max_size=20)), max_size=4))
def test_random_overrides_load_or_raise_config_error(overrides: list[str]) -> None:
    check(REPO / "experiments" / "dpo_tiny.yaml", overrides)
