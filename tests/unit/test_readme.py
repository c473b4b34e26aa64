"""The README's YAML snippets validate: each block marked `<!-- validated with BASE -->` replaces the top-level
sections it names in the experiment file BASE, and the result must pass `alignkit validate`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from alignkit.config.load import load_config

MARKED = re.compile(r"<!-- validated with (\S+) -->\s*```yaml\n(.*?)```", re.DOTALL)
SNIPPETS = MARKED.findall((REPO / "README.md").read_text())


def test_the_readme_marks_its_snippets() -> None:
    assert len(SNIPPETS) >= 6, "README.md lost its `<!-- validated with ... -->` snippets"


@pytest.mark.parametrize(("base", "text"), SNIPPETS, ids=[f"{i}-{b}" for i, (b, _) in enumerate(SNIPPETS)])
def test_a_readme_snippet_validates(base: str, text: str, tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / base).read_text())
    snippet = yaml.safe_load(text)
    assert isinstance(snippet, dict), "a snippet is a mapping of top-level sections"
    config.update(snippet)  # a section the snippet names is the snippet's, whole
    path = tmp_path / Path(base).name
    path.write_text(yaml.safe_dump(config))
    load_config(path)
