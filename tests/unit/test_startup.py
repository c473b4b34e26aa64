"""`alignkit validate | show | list | --help` start fast: the paths that only read configs import no torch.

Importing torch, Lightning and transformers takes seconds on a small machine (Lightning alone about 8 s on
2 cores), so the config layer (schemas, presets, registries, every check that needs only the config) must
not import them; `run` and `compare` import them when they start work. The time itself is printed by
benchmarks/cli_startup.py (timed tests are noisy on shared machines); this guards the cause.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

# Libraries that cost a second or more to import, or pull in those that do.
HEAVY = (
    "torch",
    "lightning",
    "lightning_fabric",
    "pytorch_lightning",
    "torchmetrics",
    "transformers",
    "tokenizers",
    "safetensors",
    "datasets",
    "pyarrow",
    "pandas",
    "matplotlib",
    "numpy",
    "sympy",
)

# Every config-only command, on a single experiment and on a pipeline, through the real entry point.
SCRIPT = """
import contextlib, io, json, sys
from alignkit.cli import main
commands = json.loads(sys.argv[1])
codes = []
for argv in commands:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            codes.append(main(argv))
        except SystemExit as e:  # --help
            codes.append(e.code)
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
print(json.dumps({"codes": codes, "heavy": heavy}))
"""

COMMANDS = [
    ["--help"],
    ["validate", "--help"],
    ["validate", "experiments/dpo_tiny.yaml"],
    ["validate", "experiments/ppo_tiny.yaml", "trainer.max_steps=2"],
    ["validate", "experiments/bandit_linear.yaml"],
    ["validate", "experiments/compare_sentiment.yaml"],
    ["show", "experiments/grpo_tiny.yaml"],
    ["show", "experiments/compare_sentiment.yaml"],
    ["list"],
    ["list", "algorithms", "-v"],
    ["validate", "experiments/dpo_tiny.yaml", "algorithm.beta=-1"],  # an invalid config: the error path too
]


def test_config_only_commands_import_no_heavy_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(COMMANDS), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0] * (len(COMMANDS) - 1) + [2]
    assert result["heavy"] == [], f"the config-only commands imported {result['heavy']}"


def test_the_config_layer_imports_no_heavy_library() -> None:
    """Schemas, presets, registries and the pipeline loader, imported together as a script would."""
    modules = [
        "alignkit.algorithms",
        "alignkit.config.load",
        "alignkit.config.schema",
        "alignkit.pipeline",
        "alignkit.rundir",
        "alignkit.data",
        "alignkit.models",
        "alignkit.rewards",
        "alignkit.ops.variants",
        "alignkit.bandits.spec",
    ]
    code = (
        f"import importlib, json, sys; [importlib.import_module(m) for m in {modules!r}]; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
