"""One generic name -> object registry, with did-you-mean errors and one-line descriptions."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate registered name; the message says which names are valid."""

    def __str__(self) -> str:  # KeyError would repr() the message and show quotes
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, candidates: list[str] | tuple[str, ...]) -> str:
    """' did you mean 'x'?' for the closest candidate, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    """Binds names to objects (classes, functions, specs). YAML refers to components only by these names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, description: str | None = None) -> Callable[[T], T]:
        """Decorator: `@ALGORITHMS.register("dpo")`. The description defaults to the docstring's first line."""

        def wrap(obj: T) -> T:
            self.add(name, obj, description)
            return obj

        return wrap

    def add(self, name: str, obj: T, description: str | None = None) -> None:
        if name in self._items:
            raise RegistryError(f"{self.kind} '{name}' is registered twice; pick another name")
        if description is None:
            doc = (getattr(obj, "__doc__", None) or "").strip()
            description = doc.splitlines()[0] if doc else ""
        self._items[name] = obj
        self._descriptions[name] = description

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        return f"unknown {self.kind} '{name}'; allowed: {', '.join(self.names())}{did_you_mean(name, self.names())}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def describe(self) -> list[tuple[str, str]]:
        return [(n, self._descriptions[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
