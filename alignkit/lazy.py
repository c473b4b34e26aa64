"""Packages whose heavy parts import on first use, so that config-only code (`alignkit validate`) stays fast."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_attributes(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package`: name -> the submodule it lives in, imported on first use.

    `from alignkit.models import build_causal_lm` then imports alignkit.models.build (torch, transformers)
    only when it runs, while `from alignkit.models import ModelSpec` stays cheap.
    """

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    return __getattr__
