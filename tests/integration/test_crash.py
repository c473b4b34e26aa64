"""Crashes lose nothing: runs killed with SIGKILL mid-step and mid-checkpoint-write resume to a straight run's weights.

For SFT, DPO, GRPO and PPO a run is started in a child process and killed with SIGKILL at a random moment
inside a random step; its resume (`checkpoint.resume: auto`, another child) is killed again while it writes
a checkpoint, part of the file written; a last resume finishes the run in this process. The final weights
must equal those of a straight run of the same config bit for bit: for the offline methods and for the
online ones, whose responses are sampled, because every rank's random state is in the checkpoint.

The moments are drawn from a seeded generator (printed on failure) so that a failure can be replayed.
Also here: a checkpoint that is truncated, corrupt or missing is skipped for the one before it, with a
warning, and the run still ends where a straight run does.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import REPO, tiny_config
from safetensors.torch import load_file

from alignkit.algorithms import ALGORITHMS
from alignkit.run import RunResult, run

# Each algorithm's run: 6 steps, a checkpoint every 2. GRPO also evaluates (sampled) every 2 steps, so the
# harness checks that evaluation does not shift the random stream training samples from.
SETUPS: dict[str, dict[str, Any]] = {
    "sft": {"trainer": {"micro_batch_size": 2}},  # accumulation 2: a kill can land between micro-batches
    "dpo": {"algorithm": {"precompute_ref_logps": True}},
    "grpo": {"algorithm": {"eval_greedy": False, "update_epochs": 2}, "trainer": {"eval_every_n_steps": 2}},
    "ppo": {"algorithm": {"adaptive_kl": {"target": 0.5, "horizon": 20}}},
}
STEPS, EVERY = 6, 2

# The child process: run a config, SIGKILLing itself as the plan says.
DRIVER = """
import json, os, signal, sys, threading, time
from pathlib import Path

import alignkit.checkpoints as checkpoints
from alignkit.algorithms import ALGORITHMS
from alignkit.config.load import load_config
from alignkit.run import run

cfg, plan = load_config(sys.argv[1]), json.loads(sys.argv[2])


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if plan["kind"] == "step":  # a `fraction` of the way into the `call`-th training_step of this process
    module = ALGORITHMS.get(cfg.algorithm.name).load()
    original, durations = module.training_step, []

    def training_step(self, batch, index):
        call = len(durations) + 1
        if call == plan["call"]:  # the steps so far say how long one takes
            threading.Timer(plan["fraction"] * sorted(durations)[len(durations) // 2], die).start()
        elif call > plan["call"]:  # the step ended before the timer: wait for it, so the run never finishes
            threading.Event().wait()
        start = time.perf_counter()
        out = original(self, batch, index)
        durations.append(time.perf_counter() - start)
        return out

    module.training_step = training_step
else:  # part way through writing the `save`-th checkpoint file of this process
    write, saves = checkpoints.write_atomically, []

    def partial_write(path, data):
        saves.append(path.name)
        if len(saves) == plan["save"]:
            data = bytes(data)
            with open(path.with_name(f".{path.name}.tmp-{os.getpid()}"), "wb") as f:
                f.write(data[: int(len(data) * plan["fraction"])])
                f.flush()
                os.fsync(f.fileno())
            die()
        write(path, data)

    checkpoints.write_atomically = partial_write
run(cfg)
"""


def config(algorithm: str, root: Path, resume: str = "none") -> Any:
    setup = SETUPS[algorithm]
    return tiny_config(
        algorithm,
        root,
        eval_fraction=0.125 if algorithm == "grpo" else 0.0,
        **{k: v for k, v in setup.items() if k != "trainer"},
        trainer={"max_steps": STEPS, **setup.get("trainer", {})},
        checkpoint={"every_n_steps": EVERY, "resume": resume, "export_hf": True},
    )


def killed(cfg: Any, tmp: Path, plan: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Run `cfg` in a child process that kills itself as `plan` says; it must die by SIGKILL."""
    path = tmp / f"config-{plan['kind']}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, str(path), json.dumps(plan)], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == -signal.SIGKILL, f"plan {plan}: exit {out.returncode}\n{out.stderr[-3000:]}"
    return out


def weights(result: RunResult) -> dict[str, torch.Tensor]:
    return {
        f"{section}.{key}": value
        for section, path in result.exports.items()
        for key, value in load_file(path / "model.safetensors").items()
    }


def assert_same_weights(a: RunResult, b: RunResult) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    different = [key for key in wa if not torch.equal(wa[key], wb[key])]
    assert not different, f"{len(different)} tensors differ from the straight run's, e.g. {different[:3]}"


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(SETUPS))
def test_killed_twice_then_resumed_equals_a_straight_run(algorithm: str, tmp_path: Path) -> None:
    rng = random.Random(f"crash-{algorithm}")  # the moments below: a fixed draw per algorithm, replayable
    straight = run(config(algorithm, tmp_path / "straight"))
    calls_per_step = 2 if algorithm == "sft" else 1  # SFT accumulates two micro-batches per optimizer step
    step_kill = {
        "kind": "step",
        "call": rng.randint((EVERY + 1) * calls_per_step, (STEPS - 1) * calls_per_step),  # after a checkpoint
        "fraction": rng.uniform(0.05, 0.95),
    }
    # the resumed child writes a step checkpoint and last.ckpt every EVERY steps: die inside one of them
    save_kill = {"kind": "save", "save": rng.randint(1, 2), "fraction": rng.uniform(0.05, 0.95)}
    plans = f"{algorithm}: {step_kill} then {save_kill}"

    root = tmp_path / "crashed"
    killed(config(algorithm, root), tmp_path, step_kill)
    run_dir = root / "t" / "version_0"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running", plans  # killed: no chance to say
    killed(config(algorithm, root, resume="auto"), tmp_path, save_kill)
    assert list((run_dir / "checkpoints").glob(".*.tmp-*")), f"{plans}: the killed write left its temporary file"

    resumed = run(config(algorithm, root, resume="auto"))
    assert resumed.run_dir == run_dir, plans  # continued in place, no new version
    assert resumed.global_step == straight.global_step == STEPS
    assert not list((run_dir / "checkpoints").glob(".*.tmp*")), "temporary files are cleaned up on resume"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert_same_weights(straight, resumed)
    assert resumed.metrics["train/loss"] == straight.metrics["train/loss"], plans


# -- a damaged checkpoint is skipped for the previous one ------------------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_bytes(path: Path) -> None:
    """Damage tensor data in the middle of the archive, which torch.load alone would read without noticing."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


FAULTS = {"truncated": truncate, "corrupt": flip_bytes, "missing": Path.unlink}


@pytest.fixture(scope="module")
def sft_straight(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return run(config("sft", tmp_path_factory.mktemp("straight")))


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(
    fault: str,
    tmp_path: Path,
    sft_straight: RunResult,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run crashes after step 5 (checkpoints at steps 2 and 4, last.ckpt = step 4); last.ckpt is then
    damaged: the resume takes step000004.ckpt, says so, and ends with the straight run's weights."""
    module = ALGORITHMS.get("sft").load()
    original = module.training_step

    def crash_after_step_5(self: Any, batch: dict, index: int) -> Any:
        if self.global_step == 5:
            raise RuntimeError("simulated crash")
        return original(self, batch, index)

    monkeypatch.setattr(module, "training_step", crash_after_step_5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config("sft", tmp_path))
    monkeypatch.setattr(module, "training_step", original)
    checkpoints = tmp_path / "t" / "version_0" / "checkpoints"
    assert {p.name for p in checkpoints.glob("*.ckpt")} >= {"last.ckpt", "step000002.ckpt", "step000004.ckpt"}
    FAULTS[fault](checkpoints / "last.ckpt")

    with caplog.at_level(logging.WARNING, logger="alignkit"):
        resumed = run(config("sft", tmp_path, resume="auto"))
    if fault != "missing":
        said = f"last.ckpt is {'corrupt' if fault == 'corrupt' else 'truncated'}"
        assert any(said in record.getMessage() for record in caplog.records), caplog.text
    assert json.loads((resumed.run_dir / "run.json").read_text())["resumed_from"].endswith("step000004.ckpt")
    assert resumed.global_step == STEPS
    assert_same_weights(sft_straight, resumed)
