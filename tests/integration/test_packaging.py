"""The wheel carries the presets: an installed alignkit resolves registry/ names without the repo."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_ships_presets_and_resolves_them(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(tmp_path.glob("alignkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    repo_presets = sorted(p.relative_to(REPO / "registry").as_posix() for p in (REPO / "registry").rglob("*.yaml"))
    assert repo_presets, "registry/ holds no presets"
    for preset in repo_presets:
        assert f"alignkit/_presets/{preset}" in names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # run from an empty folder with only the unpacked wheel on the path: no repo checkout to fall back on
    probe = (
        "import alignkit.config.presets as l, pathlib; "
        "print(l.preset_root()); print(sorted(l.list_presets('models'))); "
        "print(l.load_preset('hardware', 'cpu'))"
    )
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {probe}"],
        capture_output=True,
        text=True,
        cwd=empty,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    root, models, cpu = out.stdout.splitlines()
    assert root == str(site / "alignkit" / "_presets")
    assert "tiny-llama" in models
    assert "'strategy': 'single'" in cpu
