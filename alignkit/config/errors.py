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


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
            if nxt is not None and sub is not None and model_in(field.annotation) is None:
                i += 1  # the union tag element
            elif nxt is not None and sub is None and isinstance(nxt, str) and _is_union(field.annotation):
                i += 1  # the branch label
                branch = True
            model = sub
            item = _list_item(field.annotation)
            if isinstance(nxt, int) and item is not None:  # an item of a list of sections (weighted_sum terms)
                shown.append(nxt)
                i += 1
                model, field = item, None
            continue
        if model is not None:
            holder = model  # an unknown key of this model
        shown.append(key)
        field, model = None, None
    return _Where(tuple(shown), holder, field, last, branch, model)


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


def _allowed(where: _Where) -> str:
    return describe(where.field.annotation, bounds(where.field)) if where.field else ""


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


def problems_from_validation(err: ValidationError, root: type[BaseModel]) -> list[Problem]:
    problems: list[Problem] = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        kind = e["type"]
        where = _walk(root, loc)
        path = dotted(where.shown)
        key = where.shown[-1] if where.shown else ""
        given = e.get("input")
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
            literals = [str(v) for v in _literals(where.field.annotation)] if where.field else []
            allowed = _allowed(where)
            msg = f"invalid value (got {_short(given)}); allowed: {allowed}"
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
            text = e["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
            msg = f"should be {text} (got {_short(given)})"
            if where.field is not None:
                msg += f"; allowed: {_allowed(where)}{_example(where)}"
            if kind == "model_type" and isinstance(given, str) and key in PRESET_KINDS:
                msg += f"; to use a preset, write `{key}: {{preset: {given}}}`"
        problem = Problem(path, msg)
        if problem not in problems:
            problems.append(problem)
    return problems
