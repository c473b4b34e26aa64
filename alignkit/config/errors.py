"""Config problems as `path.to.key: what is wrong (got X); allowed: ...; did you mean Y?` lines, all at once."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

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


def _model_in(annotation: Any, tag: Any = None) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (through Optional, Annotated and tagged unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_in(typing.get_args(annotation)[0], tag)
    if origin in (typing.Union, types.UnionType):
        models = [m for a in typing.get_args(annotation) if (m := _model_in(a, tag))]
        if tag is not None:
            for m in models:
                name = m.model_fields.get("name")
                if name is not None and typing.get_args(name.annotation) == (tag,):
                    return m
        return models[0] if len(models) == 1 else None
    return None


def _walk(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, tuple[Any, ...]]:
    """Follow a pydantic error location through the schema; returns the model holding the last key.

    Tagged-union steps (the algorithm's `name`) appear in pydantic's locations as an extra element; they
    are dropped from the returned display location.
    """
    model: type[BaseModel] | None = root
    shown: list[Any] = []
    i = 0
    while i < len(loc) - 1 and model is not None:
        key = loc[i]
        shown.append(key)
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            return None, tuple(shown) + tuple(loc[i + 1 :])
        nxt = loc[i + 1]
        sub = _model_in(field.annotation, tag=nxt)
        if sub is not None and "name" in sub.model_fields and _model_in(field.annotation) is None:
            i += 1  # skip the union tag element
        model = sub
        i += 1
    return model, tuple(shown) + tuple(loc[i:])


def _allowed_literals(model: type[BaseModel] | None, key: Any) -> list[str]:
    if model is None or not isinstance(key, str) or key not in model.model_fields:
        return []
    values: list[str] = []

    def collect(a: Any) -> None:
        if typing.get_origin(a) is typing.Literal:
            values.extend(str(v) for v in typing.get_args(a))
        for sub in typing.get_args(a):
            collect(sub)

    collect(model.model_fields[key].annotation)
    return values


def problems_from_validation(err: ValidationError, root: type[BaseModel]) -> list[Problem]:
    problems: list[Problem] = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        kind = e["type"]
        holder, shown_loc = _walk(root, loc)
        path = dotted(shown_loc)
        key = loc[-1] if loc else ""
        if kind == "extra_forbidden":
            allowed = sorted(holder.model_fields) if holder else []
            msg = f"unknown key '{key}'"
            if allowed:
                msg += f"; allowed: {', '.join(allowed)}{did_you_mean(str(key), allowed)}"
        elif kind == "union_tag_invalid":
            ctx = e.get("ctx", {})
            tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
            tag = str(ctx.get("tag", ""))
            path = dotted(loc + ("name",))
            msg = f"unknown {loc[-1]} '{tag}'; allowed: {', '.join(tags)}{did_you_mean(tag, tags)}"
        elif kind == "union_tag_not_found":
            path = dotted(loc + ("name",))
            msg = "missing 'name' (which registered component to use); see `alignkit list`"
        elif kind == "missing":
            msg = "required, but not set"
        elif kind == "literal_error":
            allowed = _allowed_literals(holder, key)
            given = str(e.get("input"))
            msg = f"invalid value (got {_short(e.get('input'))}); allowed: {', '.join(allowed)}"
            msg += did_you_mean(given, allowed)
        elif kind == "value_error" and not path:
            # cross-section checks report "path: message" lines (see ExperimentBase)
            for line in e["msg"].removeprefix("Value error, ").splitlines():
                where, _, what = line.partition(": ")
                problems.append(Problem(where, what) if what else Problem("", line))
            continue
        else:
            text = e["msg"].removeprefix("Value error, ")
            msg = f"{text} (got {_short(e.get('input'))})" if kind not in ("value_error",) else text
        problems.append(Problem(path, msg))
    return problems
