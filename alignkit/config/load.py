"""Load a YAML experiment: `base:` files, presets, `key=value` overrides and `${...}` interpolation, then validate."""

from __future__ import annotations

import codecs
import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ValidationError

from alignkit.config.errors import (
    ConfigError,
    Problem,
    child,
    key_problem,
    problems_from_validation,
    short,
    split_problems,
)
from alignkit.config.presets import PRESET_KINDS, list_presets, load_preset
from alignkit.registry import did_you_mean

try:  # the loader OmegaConf.load uses: `1e-5` is a float, a duplicate key is an error
    from omegaconf._yaml import get_yaml_loader  # omegaconf >= 2.4
except ImportError:  # pragma: no cover
    from omegaconf._utils import get_yaml_loader  # type: ignore[attr-defined,no-redef]

# How deep a config may nest. Real keys are a few levels down (stages.rm.reward.source.terms[0].source); far
# deeper nesting is a mistake or a hostile file, and would exhaust Python's recursion in omegaconf, pydantic or
# the walkers here.
MAX_DEPTH = 64
# How many values a file may hold once its YAML aliases are expanded: omegaconf's own default limit, so that a
# "billion laughs" file (aliases of aliases) is refused, in these words, before anything expands it.
MAX_VALUES = 10_000
# Integers a config may hold: int64, what torch, numpy and Lightning take (Python's own ints have no limit).
MAX_INT = 2**63 - 1
_INT = re.compile(r"[-+]?[0-9][0-9_]*")


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _mark(event: Any) -> str:
    """' (line 4, column 12)': where a YAML event starts."""
    mark = getattr(event, "start_mark", None)
    return f" ({_where(mark)})" if mark is not None else ""


def _too_deep(path: str, event: Any) -> Problem:
    return Problem(
        path,
        f"nested more than {MAX_DEPTH} levels deep{_mark(event)}, aliases expanded; a config's sections nest a "
        "few levels deep: check the brackets and indentation",
    )


def _too_big(path: str, given: str) -> Problem:
    return Problem(path, f"integer too large (got {given}); allowed: -{MAX_INT + 1} to {MAX_INT} (int64)")


@dataclass
class _Open:
    """A mapping or list being read from the YAML event stream."""

    path: str
    mapping: bool
    anchor: str | None
    level: int  # how deep it is: 1 for the file's top mapping
    deepest: int  # the deepest level inside it, aliases expanded
    values: int = 1  # values in it, itself included, aliases expanded
    index: int = 0  # a list's next index
    key: Any = None  # a mapping's key whose value comes next; None while a key is expected


def _scan(text: str, loader: Any, at: str = "", level: int = 0) -> list[Problem]:
    """What would break the loaders, read from the YAML event stream (which has no recursion to overflow):
    nesting deeper than MAX_DEPTH, aliases that expand past MAX_VALUES values, integers too long to read.

    `at` and `level` place the text inside a config (an override's value). Syntax errors are left to yaml.load.
    """
    parser = loader(text)
    stack: list[_Open] = []
    anchored: dict[str, tuple[int, int]] = {}  # anchor -> (values, levels) of its finished value
    total = 0
    found: list[Problem] = []
    try:
        while parser.check_event():
            event = parser.get_event()
            top = stack[-1] if stack else None
            if top is None:
                path = at
            elif not top.mapping:
                path = f"{top.path}[{top.index}]"
            elif top.key is None:
                path = top.path  # a key: reported at the mapping that holds it
            else:
                path = child(top.path, top.key)
            if isinstance(event, yaml.CollectionStartEvent):
                total += 1
                depth = level + len(stack) + 1
                if depth > MAX_DEPTH:
                    return [_too_deep(path, event)]
                stack.append(_Open(path, isinstance(event, yaml.MappingStartEvent), event.anchor, depth, depth))
                continue
            if isinstance(event, yaml.CollectionEndEvent):
                node = stack.pop()
                top = stack[-1] if stack else None
                values, reach, key = node.values, node.deepest, "?"
                if node.anchor:
                    anchored[node.anchor] = (node.values, node.deepest - node.level + 1)
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor not in anchored:
                    return [
                        Problem(
                            path,
                            f"the alias *{event.anchor} is inside its own anchor &{event.anchor}{_mark(event)}, "
                            "which makes an endless value; write the value out instead",
                        )
                    ]
                values, levels = anchored[event.anchor]
                reach, key = level + len(stack) + levels, "?"
                total += values
            elif isinstance(event, yaml.ScalarEvent):
                values, reach, key = 1, level + len(stack), event.value
                total += 1
                if event.anchor:
                    anchored[event.anchor] = (1, 0)
                # plain (unquoted): the C parser says "", the Python one None
                if not event.style and len(event.value) > 4000 and _INT.fullmatch(event.value):
                    found.append(_too_big(path, f"an integer of {len(event.value.strip('+-_'))} digits"))
            else:
                continue
            if total > MAX_VALUES:
                return [
                    Problem(
                        path,
                        f"the file expands to more than {MAX_VALUES} values{_mark(event)}: an alias (*name) repeats "
                        "its anchor's whole value, so aliases of aliases multiply; write repeated values out, or "
                        "use fewer aliases",
                    )
                ]
            if reach > MAX_DEPTH:
                return [_too_deep(path, event)]
            if top is not None:
                top.values += values
                top.deepest = max(top.deepest, reach)
                if not top.mapping:
                    top.index += 1
                else:
                    top.key = key if top.key is None else None
    except yaml.YAMLError:
        pass  # yaml.load says what is wrong, and where
    finally:
        parser.dispose()
    return found


def _yaml_error(exc: yaml.YAMLError) -> str:
    """' at line 5, column 1: found duplicate key trainer (while constructing a mapping at line 1, column 1)'."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem is None:
        return f": {' '.join(str(exc).split())}"
    text = f" at {_where(exc.problem_mark)}: {exc.problem}" if exc.problem_mark else f": {exc.problem}"
    if exc.context:
        text += f" ({exc.context} at {_where(exc.context_mark)})" if exc.context_mark else f" ({exc.context})"
    return text


def _key_problems(node: Any, path: str = "") -> list[Problem]:
    """Every mapping key that is not a string, and every string that is not Unicode text, at its path."""
    found: list[Problem] = []
    if isinstance(node, dict):
        for key, value in node.items():
            at = child(path, key)
            if not isinstance(key, str):
                found.append(key_problem(path, key))
            elif not key.isascii() and (bad := _surrogate(key)):
                found.append(Problem(at, f"the key {bad}"))
            found += _key_problems(value, at)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _key_problems(value, f"{path}[{i}]")
    elif isinstance(node, str) and not node.isascii() and (bad := _surrogate(node)):
        found.append(Problem(path, f"the value {bad}"))
    return found


def _surrogate(text: str) -> str:
    """'holds ...' when `text` has a lone surrogate, which no file or path can hold: a command-line byte that
    is not UTF-8, or half of a UTF-16 pair."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds {text[exc.start]!r} at character {exc.start + 1}, which is not a character: use UTF-8 text"
    return ""


def _decode(data: bytes) -> str:
    """UTF-8 text, or UTF-16/32 with its byte-order mark (both YAML encodings)."""
    for bom, codec in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError:
                break  # reported as not UTF-8 below
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise ConfigError(
            [
                Problem(
                    "",
                    f"not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}, column {column} (is it a binary "
                    "file?); save the config as UTF-8",
                )
            ]
        ) from None


def _parse(text: str, at: str = "", level: int = 0) -> Any:
    """Parsed YAML text, or ConfigError saying what cannot be read and where."""
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ConfigError([Problem(at, f"not text: a NUL character at line {line} (is it a binary file?)")])
    loader = get_yaml_loader()
    problems = _scan(text, loader, at, level)
    if problems:
        raise ConfigError(problems)
    try:
        data = yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(at, f"not valid YAML{_yaml_error(exc)}")]) from None
    except (ValueError, RecursionError) as exc:  # a value the loader cannot build that _scan did not foresee
        raise ConfigError([Problem(at, f"cannot be read as YAML: {_first_line(exc)}")]) from None
    problems = _key_problems(data, at)
    if problems:
        raise ConfigError(problems)
    return data


def _merged(below: Any, above: Any) -> Any:
    """`above` over `below`: mappings merge key by key; anything else in `above` replaces what is below, even a
    value of another kind (a list or a scalar over a mapping: the schema then says whether it may be one)."""
    if isinstance(below, dict) and isinstance(above, dict):
        out = dict(below)
        for key, value in above.items():
            out[key] = _merged(below[key], value) if key in below else value
        return out
    return below if above == "???" else above  # omegaconf's "not set yet" keeps the value below


def _missing(file: Path) -> str:
    """Why `file` cannot be read as a config ('' when it is a file)."""
    try:
        if file.is_file():
            return ""
        return f"{file} is a directory, not a YAML file" if file.is_dir() else f"config file not found: {file}"
    except (OSError, ValueError) as exc:  # a name too long for the OS, say
        return f"cannot look up {short(str(file))}: {getattr(exc, 'strerror', None) or exc}"


def _read(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One YAML file merged over its `base:` file(s), which are read relative to it."""
    source = str(path)
    if not chain and (why := _missing(path)):
        raise ConfigError([Problem("", why)])
    try:
        data = _parse(_decode(path.read_bytes()))
    except OSError as exc:
        problem = Problem("", f"cannot read the file: {exc.strerror or exc}; check that it is readable (chmod +r)")
        raise ConfigError([problem], source) from None
    except ConfigError as err:
        raise ConfigError(err.problems, source) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        example = "e.g. `algorithm: {name: sft}`"
        raise ConfigError(
            [Problem("", f"the file must hold a mapping of sections (got {short(data)}); {example}")], source
        )
    bases = data.pop("base", None)
    if bases is None:
        return data
    problems: list[Problem] = []
    files: list[Path] = []
    named = [(f"base[{i}]", b) for i, b in enumerate(bases)] if isinstance(bases, list) else [("base", bases)]
    for where, name in named:
        try:
            file = (path.parent / name).resolve() if isinstance(name, str) and name and "\x00" not in name else None
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
            problems.append(Problem(where, f"cannot look up {short(name)}: {exc}"))
            continue
        if file is None:
            problems.append(
                Problem(
                    where,
                    f"should be a YAML file name, relative to this file (got {short(name)}); e.g. "
                    "`base: ../shared/common.yaml`, or a list of names merged in order",
                )
            )
        elif file in (*chain, path):
            problems.append(Problem(where, f"circular base files: {' -> '.join(str(p) for p in (*chain, path, file))}"))
        elif why := _missing(file):
            problems.append(Problem(where, f"{why} (named as base: in {path})"))
        else:
            files.append(file)
    if problems:
        raise ConfigError(problems, source)
    merged: dict[str, Any] = {}
    for file in files:
        merged = _merged(merged, _read(file, (*chain, path)))
    return _merged(merged, data)


def _expand_presets(node: Any, path: str, problems: list[Problem]) -> Any:
    """Replace `{preset: NAME, ...}` by the preset's keys with the user's keys on top, at any depth."""
    if isinstance(node, list):
        return [_expand_presets(v, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    key = path.rsplit(".", 1)[-1]
    # `preset: null` (as a saved config.yaml writes it) means none
    if key in PRESET_KINDS and "preset" in node and (name := node.pop("preset")) is not None:
        kind = PRESET_KINDS[key]
        try:
            if not isinstance(name, str) or not re.fullmatch(r"[\w.+-]{1,200}", name) or name.startswith("."):
                # a preset is a name, not a path: never a file outside registry/
                names = list(list_presets(kind))
                raise KeyError(f"should be a preset name (got {short(name)}); allowed: {', '.join(names)}")
            base = load_preset(kind, name)
            node = _merged(base, node)
            if kind == "models":
                node["preset"] = name  # ModelSpec keeps the name, so the resolved config says what ran
        except KeyError as exc:
            problems.append(Problem(f"{path}.preset", str(exc.args[0])))
    return {k: _expand_presets(v, child(path, k), problems) for k, v in node.items()}


def load_dict(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved plain dict of a config file with its bases, overrides and presets; not yet validated."""
    raw = read_raw(path, overrides)
    raw.setdefault("name", Path(path).stem)
    return prepare(raw, source=str(Path(path).resolve()))


def read_raw(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A config file merged over its `base:` files, with `key=value` overrides: presets and `${...}` untouched."""
    try:
        path = Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise ConfigError([Problem("", f"cannot look up {path}: {exc}")]) from None
    raw = _read(path)
    problems: list[Problem] = []
    set_by: dict[str, str] = {}  # key -> the override that set it, for a later override that clashes
    for text in overrides:
        raw = _override(raw, text, set_by, problems)
    if problems:
        raise ConfigError(problems, source=str(path))
    return raw


def _override(raw: dict[str, Any], text: str, set_by: dict[str, str], problems: list[Problem]) -> dict[str, Any]:
    """`raw` with one `key=value` override merged in (the value read as YAML), or `raw` and a problem."""
    if bad := _surrogate(text):
        problems.append(Problem("", f"override {text!r} {bad}"))
        return raw
    key, eq, value = text.partition("=")
    parts = key.split(".")
    if not eq or not all(parts):
        problems.append(Problem("", f"override '{text}' is not key=value, e.g. trainer.max_steps=10"))
        return raw
    if len(parts) > MAX_DEPTH:
        problems.append(Problem("", f"override '{text[:80]}...': its key is more than {MAX_DEPTH} levels deep"))
        return raw
    try:
        parsed = _parse(value, key, len(parts))  # the file, then a mapping per part above
    except ConfigError as err:
        shown = text if len(text) <= 80 else text[:77] + "..."
        problems += [Problem(p.path, f"override '{shown}': {p.message}") for p in err.problems]
        return raw
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        node = node.get(part)
        if node is None:
            break  # absent or null: the override creates it
        if not isinstance(node, dict):
            at, rest = ".".join(parts[: i + 1]), parts[i + 1 :]
            earlier = f", set by override '{set_by[at]}'" if at in set_by else ""
            example = "{" + ": {".join(rest) + f": {value}" + "}" * len(rest)
            problems.append(
                Problem(
                    at,
                    f"override '{text}' sets a key inside a value that is not a mapping (got {short(node)}{earlier}); "
                    f"set the whole value instead, e.g. {at}={example}",
                )
            )
            return raw
    for part in reversed(parts):
        parsed = {part: parsed}
    set_by[key] = text
    return _merged(raw, parsed)


def prepare(raw: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """Presets expanded, then `${...}` resolved: the plain dict that validate_dict checks."""
    try:
        problems = _key_problems(raw)  # a YAML file's are checked as it is read; these are a Python dict's
        if problems:
            raise ConfigError(problems, source=source)
        expanded = _expand_presets(copy.deepcopy(raw), "", problems)
        # resolved after the presets are in, so that `${policy.hidden_size}` may name a key a preset sets
        data = _resolve(expanded, problems)
    except RecursionError:  # a Python dict nested (or referring to itself) past what a YAML file may
        raise ConfigError([_too_deep("", None)], source=source) from None
    if problems:
        raise ConfigError(problems, source=source)
    return data


def _paths(node: Any, path: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    return [p for k, v in node.items() for p in (f"{path}{k}", *_paths(v, f"{path}{k}."))]


def _interpolation_problem(where: str, raw: Any, exc: Exception, keys: list[str]) -> Problem:
    reason = str(exc).splitlines()[0].removeprefix("KeyError raised while resolving interpolation: ").strip('"')
    msg = f"cannot resolve {raw!r}: {reason}"
    env = re.search(r"Environment variable '(.+?)' not found", reason)
    key = re.search(r"Interpolation key '(.+?)' not found", reason)
    if env:
        msg += f"; set {env[1]}, or give a default: ${{oc.env:{env[1]},VALUE}}"
    elif key:
        msg += did_you_mean(key[1], keys) or "; an interpolation names a key of this config, e.g. ${trainer.seed}"
    return Problem(where, msg)


def _parse_interpolations(node: Any, path: str, problems: list[Problem]) -> Any:
    """`node` with each string whose `${...}` does not parse set to None, and a problem at its path."""
    if isinstance(node, dict):
        return {k: _parse_interpolations(v, child(path, k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_parse_interpolations(v, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        try:
            OmegaConf.create({"value": node})
        except OmegaConfBaseException as exc:
            problems.append(
                Problem(
                    path,
                    f"invalid interpolation (got {short(node)}): {_first_line(exc)}; write ${{key.path}} or "
                    "${oc.env:NAME,default}, and \\${...} for a literal ${",
                )
            )
            return None
    return node


def _resolve(raw: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """`${...}` interpolations resolved; each one that fails is a problem at its own key."""
    raw = _parse_interpolations(raw, "", problems)
    try:
        cfg = OmegaConf.create(raw)
    except OmegaConfBaseException as exc:  # a value omegaconf cannot hold (only from a Python dict)
        problems.append(Problem(str(getattr(exc, "full_key", "") or ""), _first_line(exc)))
        return {}
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(data, dict)
        return data
    except OmegaConfBaseException:
        pass  # find every key that fails, not just the first
    keys = _paths(raw)

    def walk(node: DictConfig | ListConfig, plain: Any, path: str) -> None:
        for k in range(len(node)) if isinstance(node, ListConfig) else list(node.keys()):
            where = f"{path}[{k}]" if isinstance(k, int) else child(path, k)
            try:
                value = node[k]
            except OmegaConfBaseException as exc:
                problems.append(_interpolation_problem(where, plain[k], exc, keys))
                continue
            if isinstance(value, DictConfig | ListConfig) and isinstance(plain[k], dict | list):
                walk(value, plain[k], where)

    before = len(problems)
    walk(cfg, raw, "")
    if len(problems) == before:
        problems.append(Problem("", "the config's ${...} interpolations do not resolve"))
    return {}


def validate_dict(data: dict[str, Any], source: str | None = None) -> Any:
    """A validated, frozen ExperimentConfig, or ConfigError listing every problem."""
    from alignkit.config.schema import experiment_schema, raw_cross_section_problems

    schema = experiment_schema()
    problems: list[Problem] = []
    try:
        # integers past int64 are reported here and left out (as null) of what pydantic and the cross-section
        # checks see, so that arithmetic on them cannot overflow and every other problem is still reported
        data, problems = check_numbers(data)
        config = schema.model_validate(data)
    except ValidationError as err:
        seen = {p.path for p in problems}
        problems += [p for p in problems_from_validation(err, schema) if p.path not in seen]
        # pydantic skips the cross-section checks when a field fails; run them here so that every
        # problem is reported at once
        for problem in split_problems("\n".join(raw_cross_section_problems(data)), schema, ""):
            if problem not in problems and problem.path not in seen:
                problems.append(problem)
    except RecursionError:  # a Python dict nested past what a YAML file may
        problems = [_too_deep("", None)]
    if problems:
        raise ConfigError(problems, source=source) from None
    return config


def check_numbers(node: Any, path: str = "") -> tuple[Any, list[Problem]]:
    """`node` with every integer past int64 replaced by None, and a problem at each one's path."""
    problems: list[Problem] = []

    def walk(value: Any, at: str) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and not -MAX_INT - 1 <= value <= MAX_INT:
            problems.append(_too_big(at, short(value)))
            return None
        if isinstance(value, dict):
            return {k: walk(v, child(at, k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v, f"{at}[{i}]") for i, v in enumerate(value)]
        return value

    return walk(node, path), problems


def config_from_dict(raw: dict[str, Any], source: str | None = None) -> Any:
    """A config written as a Python dict (presets, interpolation and validation as for a YAML file)."""
    return validate_dict(prepare(raw, source), source=source)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """YAML + overrides -> ExperimentConfig; the one way the CLI and run.py read a config."""
    return validate_dict(load_dict(path, overrides), source=str(path))
