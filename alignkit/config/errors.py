"""Config problems as `path.to.key: what is wrong (got X); allowed: ...; did you mean Y?`, all at once."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from alignkit.config.presets import PRESET_KINDS
from alignkit.registry import did_you_mean


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ValueError):
    """Every problem found in one config, each naming its YAML path; raised before any model loads."""

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{head}{count} in the config\n" + "\n".join(f"  - {p}" for p in problems))


def child(path: str, key: Any) -> str:
    """The path of `key` inside the mapping at `path`: 'trainer.seed'; an empty key shows as '' (the whole file is
    the empty path)."""
    key = "''" if key == "" else key
    return f"{path}.{key}" if path else str(key)


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        part = "''" if part == "" else part  # an empty key: "" alone is the whole file
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def short(value: Any, limit: int = 60) -> str:
    """A value as an error message shows it: its repr, cut to `limit` characters."""
    if isinstance(value, int) and value.bit_length() > 190:  # past 57 digits
        # repr of an int past 4300 digits raises ValueError (CVE-2020-10735); the digits say nothing anyway
        digits = len(str(value)) if value.bit_length() < 14_000 else "thousands of"
        return f"an integer of {digits} digits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def key_problem(path: str, key: Any) -> Problem:
    """A mapping key that is not a string: YAML reads unquoted `1:`, `true:`, `on:` or `null:` as values."""
    kinds = {bool: "a boolean", type(None): "null", int: "an integer", float: "a number"}
    what = f", {kinds[type(key)]}" if type(key) in kinds else ""
    text = "null" if key is None else str(key).lower() if isinstance(key, bool) else str(key)
    return Problem(
        child(path, text),
        f"keys must be strings (got {short(key)}{what}); quote it, e.g. '{text}': ... (unquoted, YAML reads "
        "yes, no, on, off, true, false, null, ~ and numbers as values)",
    )


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def discriminator(field: FieldInfo | None) -> str:
    """The key that picks a tagged union's member: `name` for the algorithm, `kind` for reward sources."""
    key = field.discriminator if field is not None else None
    return key if isinstance(key, str) else "name"


def model_in(annotation: Any, tag: Any = None, key: str = "name") -> type[BaseModel] | None:
    """The pydantic model an annotation holds (through Optional, Annotated and unions tagged by `key`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return model_in(typing.get_args(annotation)[0], tag, key)
    if _is_union(annotation):
        models = [m for a in typing.get_args(annotation) if (m := model_in(a, tag, key))]
        if tag is not None:
            for m in models:
                field = m.model_fields.get(key)
                if field is not None and typing.get_args(field.annotation) == (tag,):
                    return m
        return models[0] if len(models) == 1 else None
    return None


@dataclass
class _Where:
    """Where a pydantic error location lands in the schema."""

    shown: tuple[Any, ...]  # the YAML path, without tagged-union tags and union-branch labels
    holder: type[BaseModel] | None  # the model whose key the path ends in (or that lacks an unknown key)
    field: FieldInfo | None  # that key's field, when the path ends exactly at a known field
    last: FieldInfo | None  # the last known field on the path (`betas` for `betas[1]`)
    branch: bool  # a union-branch label was dropped (one error per branch of e.g. `int | Literal['auto']`)
    inner: type[BaseModel] | None  # the model the path ends inside (a tagged union's member, by its tag)
    # a plain union with sections among its members (bandit budgets: 'released' or {name: adam, ...}):
    # (len(shown) at the union's value, the union) and the member this error is about, by pydantic's label
    union: tuple[int, Any] | None = None
    member: str | None = None


def _walk(root: type[BaseModel], loc: tuple[Any, ...]) -> _Where:
    """Follow a pydantic error location through the schema.

    pydantic adds elements that are no YAML keys: the tag of a tagged union (the algorithm's `name`, a
    reward source's `kind`) and a label per branch of a plain union ('int', "literal['auto']"); both are
    dropped from the shown path.
    """
    model: type[BaseModel] | None = root
    holder: type[BaseModel] | None = None
    field: FieldInfo | None = None
    last: FieldInfo | None = None
    shown: list[Any] = []
    branch = False
    union: tuple[int, Any] | None = None
    member: str | None = None
    i = 0
    while i < len(loc):
        key = loc[i]
        i += 1
        if model is not None and isinstance(key, str) and key in model.model_fields:
            holder, field = model, model.model_fields[key]
            last = field
            shown.append(key)
            nxt = loc[i] if i < len(loc) else None
            sub = model_in(field.annotation, tag=nxt, key=discriminator(field))
            annotation = field.annotation
            if nxt is not None and sub is not None and model_in(field.annotation) is None:
                i += 1  # the union tag element
            elif (
                isinstance(nxt, int)
                and typing.get_origin(annotation) is list
                and _is_union(item_type := typing.get_args(annotation)[0])
                and model_in(item_type) is None
            ):  # an item of a list whose items are a plain union: the item, then the branch label
                shown.append(nxt)
                i += 1
                nxt, annotation, field = loc[i] if i < len(loc) else None, item_type, None
            if nxt is not None and sub is None and isinstance(nxt, str) and _is_union(annotation):
                i += 1  # the branch label
                sub = next((m for a in typing.get_args(annotation) if (m := model_in(a)) and m.__name__ == nxt), None)
                branch = sub is None  # a section member's errors are about its own keys
                if any(model_in(a) for a in typing.get_args(annotation)):
                    union, member = (len(shown), annotation), nxt
            model = sub
            item = _list_item(field.annotation) if field is not None else None
            if isinstance(nxt, int) and item is not None:  # an item of a list of sections (weighted_sum terms)
                shown.append(nxt)
                i += 1
                model, field = item, None
            continue
        if model is not None:
            holder = model  # an unknown key of this model
        shown.append(key)
        field, model = None, None
    return _Where(tuple(shown), holder, field, last, branch, model, union, member)


def _tags(annotation: Any, key: str) -> list[str]:
    """The tags of a union of sections tagged by `key` (each member's one `Literal` value), sorted."""
    models = [m for a in typing.get_args(annotation) if (m := model_in(a)) and key in m.model_fields]
    return sorted(str(t) for m in models for t in _literals(m.model_fields[key].annotation))


def _list_item(annotation: Any) -> type[BaseModel] | None:
    """X of a `list[X]` annotation whose items are sections, else None."""
    if typing.get_origin(annotation) is list and len(args := typing.get_args(annotation)) == 1:
        return model_in(args[0])
    return None


def _literals(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for a in typing.get_args(annotation) for v in _literals(a)]


def bounds(field: FieldInfo) -> str:
    """A field's numeric limits in words: '> 0', '>= 0 and < 1'."""
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " and ".join(
        f"{sign} {getattr(m, attr)}" for m in field.metadata for attr, sign in signs.items() if hasattr(m, attr)
    )


def describe(annotation: Any, limits: str = "") -> str:
    """What a YAML value for this annotation looks like, in words: 'an integer > 0, or null'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return describe(args[0], limits)
    if origin is typing.Literal:
        return ", ".join(str(v) for v in args)
    if _is_union(annotation):
        for key in ("name", "kind"):
            if len(tags := _tags(annotation, key)) == len(args) > 1:  # tagged: the algorithm, a reward source
                return f"a mapping with `{key}` (one of {', '.join(tags)}) and its options"
        sections = [a for a in args if model_in(a) is not None]
        if len(sections) > 1 and len(tags := _tags(annotation, "name")) == len(sections):  # bandit budgets
            values = [describe(a, limits) for a in args if a is not type(None) and model_in(a) is None]
            parts = [*values, f"a mapping with `name` (one of {', '.join(tags)}) and its options"]
        else:
            parts = [describe(a, limits) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text}, or null" if type(None) in args else text
    if annotation is bool:
        return "true or false"
    if annotation in (int, float):
        kind = "an integer" if annotation is int else "a number"
        return f"{kind} {limits}" if limits else kind
    if annotation is str:
        return "a string"
    if origin is tuple:
        return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
    if origin in (list, typing.Sequence):
        return "a list"
    if origin is dict:
        return "a mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"a mapping with keys {', '.join(annotation.model_fields)}"
    return str(annotation).replace("typing.", "")


def _item(where: _Where) -> Any:
    """The annotation of a list item the path ends at (`methods[1]` of `methods: list[Literal[...]]`), or None."""
    if where.field is None and where.last is not None and where.shown and isinstance(where.shown[-1], int):
        args = typing.get_args(where.last.annotation)
        if typing.get_origin(where.last.annotation) in (list, typing.Sequence) and len(args) == 1:
            return args[0]
    return None


def _allowed(where: _Where) -> str:
    if where.field is not None:
        return describe(where.field.annotation, bounds(where.field))
    return describe(item) if (item := _item(where)) is not None else ""


def _example(where: _Where) -> str:
    """'; e.g. `micro_batch_size: 8` (the default)' for a field with a plain default."""
    if where.field is None or not where.shown:
        return ""
    default = where.field.default
    if default is PydanticUndefined or default is None or not isinstance(default, int | float | str | bool):
        return ""
    text = str(default).lower() if isinstance(default, bool) else default
    return f"; e.g. `{where.shown[-1]}: {text}` (the default)"


def split_problems(message: str, model: type[BaseModel] | None, path: str) -> list[Problem]:
    """A validator's message, one problem per line; a line `key: text` naming a key of `model` goes there.

    Cross-field validators start each line with the key to change (`num_heads: must divide hidden_size`),
    so the problem is reported at `policy.num_heads` rather than at `policy`.
    """
    problems: list[Problem] = []
    for line in message.splitlines():
        where, sep, what = line.partition(": ")
        first = where.split(".")[0].split("[")[0]
        if sep and model is not None and first in model.model_fields and " " not in where:
            problems.append(Problem(f"{path}.{where}" if path else where, what))
        else:
            problems.append(Problem(path, line))
    return problems


def _meant(errors: list[tuple[dict[str, Any], _Where]]) -> str | None:
    """Which section member of a plain union the value was meant for: the one whose `name` it matches."""
    at = errors[0][1].union[0]  # type: ignore[index]
    sections = {w.member for _, w in errors if w.inner is not None or len(w.shown) > at}
    wrong = {w.member for _, w in errors if len(w.shown) == at or w.shown[at] == "name"}
    meant = sections - wrong
    return meant.pop() if len(meant) == 1 else None


def _unions(walked: list[tuple[dict[str, Any], _Where]]) -> dict[int, Problem | None]:
    """pydantic tries a value on every member of a plain union that has sections among its members, and
    reports every member's errors under its label. Keep the errors of the member whose `name` the value gives,
    or else say once at the value what the union allows: {index of an error: the problem that replaces it, or
    None to drop it}; errors not in it are reported as they are."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for n, (_, where) in enumerate(walked):
        if where.union is not None:
            groups.setdefault(where.shown[: where.union[0]], []).append(n)
    out: dict[int, Problem | None] = {}
    for at, indices in groups.items():
        group = [walked[n] for n in indices]
        meant = _meant(group)
        if meant is not None:
            out.update({n: None for n in indices if walked[n][1].member != meant})
            continue
        given = next((e.get("input") for e, w in group if len(w.shown) == len(at)), None)
        annotation = group[0][1].union[1]  # type: ignore[index]
        name = given.get("name") if isinstance(given, dict) else given  # a section's `name`, or the value
        names = [str(v) for v in _literals(annotation)] + _tags(annotation, "name")
        msg = f"invalid value (got {short(given)}); allowed: {describe(annotation)}{did_you_mean(str(name), names)}"
        out.update({n: None for n in indices})
        out[indices[0]] = Problem(dotted(at), msg)
    return out


def problems_from_validation(err: ValidationError, root: type[BaseModel]) -> list[Problem]:
    walked = [(e, _walk(root, tuple(e["loc"]))) for e in err.errors(include_url=False)]
    replaced = _unions(walked)
    problems: list[Problem] = []
    for n, (e, where) in enumerate(walked):
        if n in replaced:
            if (problem := replaced[n]) is not None and problem not in problems:
                problems.append(problem)
            continue
        kind = e["type"]
        path = dotted(where.shown)
        key = where.shown[-1] if where.shown else ""
        given = e.get("input")
        if kind == "invalid_key":
            problem = key_problem(dotted(where.shown[:-1]), given)
            if problem not in problems:
                problems.append(problem)
            continue
        if kind == "extra_forbidden":
            allowed = sorted(where.holder.model_fields) if where.holder else []
            msg = f"unknown key '{key}'"
            if allowed:
                msg += f"; allowed: {', '.join(allowed)}{did_you_mean(str(key), allowed)}"
        elif kind == "union_tag_invalid":
            ctx = e.get("ctx", {})
            tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
            tag = str(ctx.get("tag", ""))
            path = dotted((*where.shown, str(ctx.get("discriminator", "name")).strip("'")))
            msg = f"unknown {key} '{tag}'; allowed: {', '.join(tags)}{did_you_mean(tag, tags)}"
        elif kind == "union_tag_not_found":
            key_name = str(e.get("ctx", {}).get("discriminator", "name")).strip("'")
            path = dotted((*where.shown, key_name))
            if key_name == "name":
                msg = "missing 'name' (which registered component to use); see `alignkit list`"
            else:
                tags = _tags(where.field.annotation, key_name) if where.field is not None else []
                msg = f"missing '{key_name}'; allowed: {', '.join(tags)}"
        elif kind == "missing" and where.field is None and where.last is not None:
            msg = f"too few items (no item {where.shown[-1]!r}); allowed: {describe(where.last.annotation)}"
            path = dotted(where.shown[:-1])
        elif kind == "missing":
            msg = "required, but not set"
            if where.field is not None:
                msg += f"; allowed: {_allowed(where)}"
                if where.field.description:
                    msg += f" ({where.field.description.rstrip('.')})"
        elif kind == "literal_error" or where.branch:
            # a union (`int | Literal['auto']`) fails once per branch: one problem says what all allow
            annotation = where.field.annotation if where.field else _item(where)
            literals = [str(v) for v in _literals(annotation)] if annotation is not None else []
            allowed = _allowed(where)
            msg = f"invalid value (got {short(given)}); allowed: {allowed}"
            msg += did_you_mean(str(given), literals)
        elif kind == "value_error":
            text = e["msg"].removeprefix("Value error, ")
            target = where.inner
            for p in split_problems(text, target, path):
                if p not in problems:
                    problems.append(p)
            continue
        else:
            # types and bounds: pydantic's own words, the value, what the key takes and an example
            text = e["msg"].removeprefix("Value error, ")
            if text.startswith("Input should be "):
                msg = f"should be {text.removeprefix('Input should be ')} (got {short(given)})"
            else:  # "Unable to parse input string as an integer, exceeded maximum size"
                msg = f"{text[:1].lower()}{text[1:]} (got {short(given)})"
            if where.field is not None:
                msg += f"; allowed: {_allowed(where)}{_example(where)}"
            if kind == "model_type" and isinstance(given, str) and key in PRESET_KINDS:
                msg += f"; to use a preset, write `{key}: {{preset: {given}}}`"
        problem = Problem(path, msg)
        if problem not in problems:
            problems.append(problem)
    return problems
