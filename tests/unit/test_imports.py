"""Every module under alignkit/ imports on its own: no import-order dependence, no circular imports."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from conftest import REPO

# __main__ runs the CLI when imported; test_cli runs it as `python -m alignkit`
MODULES = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for p in (REPO / "alignkit").rglob("*.py")
    if p.name != "__main__.py"
)

# One interpreter for all modules (a fresh one each would cost seconds apiece): before each import every
# alignkit module is dropped from sys.modules, so each one is imported first, as a user script would.
# Third-party packages stay loaded; they do not depend on alignkit's import order.
SCRIPT = """
import importlib, json, sys, traceback
results = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "alignkit" or m.startswith("alignkit.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
        results[name] = None
    except BaseException:
        results[name] = traceback.format_exc()
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def import_results() -> dict[str, str | None]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, *MODULES], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_modules_found() -> None:
    assert {"alignkit", "alignkit.cli", "alignkit.run", "alignkit.config.schema", "alignkit.algorithms.sft"} <= set(
        MODULES
    )


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_module_imports_on_its_own(module: str, import_results: dict[str, str | None]) -> None:
    assert import_results[module] is None, f"importing {module} first fails:\n{import_results[module]}"


def test_every_module_has_a_docstring() -> None:
    """A file's first docstring line says what lives there (STYLE.md); an empty __init__.py may stay empty."""
    files = [f for f in sorted((REPO / "alignkit").rglob("*.py")) if f.read_text().strip()]
    missing = [str(f.relative_to(REPO)) for f in files if not ast.get_docstring(ast.parse(f.read_text()))]
    assert missing == []
