"""alignkit.executor: dependency order, parallelism, failures skipping downstream, threads, GPUs, submitit."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import alignkit.executor as executor_module
from alignkit.executor import Job, Outcome, run_jobs, submitit_parameters, usable_cores

# A child that records when it ran and what it saw, sleeps, then exits with a code.
RECORD = """
import json, os, sys, time
start = time.time()
time.sleep(float(sys.argv[2]))
seen = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")}
with open(sys.argv[1], "w") as f:
    json.dump({"start": start, "end": time.time(), "env": seen}, f)
print("last words of", sys.argv[1])
sys.exit(int(sys.argv[3]))
"""


def job(tmp: Path, name: str, *, needs: tuple[str, ...] = (), sleep: float = 0.0, code: int = 0, **kw) -> Job:
    record = tmp / "records" / f"{name}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    argv = (sys.executable, "-c", RECORD, str(record), str(sleep), str(code))
    return Job(name=name, argv=argv, log=tmp / "logs" / name / "run.log", needs=needs, **kw)


def record(tmp: Path, name: str) -> dict:
    return json.loads((tmp / "records" / f"{name}.json").read_text())


def test_needs_finish_before_a_job_starts(tmp_path: Path) -> None:
    """Diamond a -> (b, c) -> d on two workers: every job starts after each of its needs has ended."""
    jobs = [
        job(tmp_path, "d", needs=("b", "c")),
        job(tmp_path, "b", needs=("a",), sleep=0.2),
        job(tmp_path, "c", needs=("a",), sleep=0.1),
        job(tmp_path, "a", sleep=0.1),
    ]
    started: list[str] = []
    ended: list[Outcome] = []
    outcomes = run_jobs(jobs, workers=2, on_start=lambda j: started.append(j.name), on_end=ended.append)
    assert list(outcomes) == ["d", "b", "c", "a"]  # the given order
    assert {o.status for o in outcomes.values()} == {"finished"}
    assert started[0] == "a" and started[-1] == "d"
    assert sorted(o.job.name for o in ended) == ["a", "b", "c", "d"]
    for j in jobs:
        for need in j.needs:
            assert record(tmp_path, need)["end"] <= record(tmp_path, j.name)["start"]
        assert outcomes[j.name].log == j.log
        assert f"last words of {tmp_path / 'records' / j.name}.json" in j.log.read_text()  # parents made


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_bound_how_many_run_at_once(tmp_path: Path, workers: int) -> None:
    """Two independent 0.5 s jobs overlap in time on two workers and do not on one (loaded CPUs only delay)."""
    jobs = [job(tmp_path, "x", sleep=0.5), job(tmp_path, "y", sleep=0.5)]
    run_jobs(jobs, workers=workers)
    x, y = record(tmp_path, "x"), record(tmp_path, "y")
    overlap = x["start"] < y["end"] and y["start"] < x["end"]
    assert overlap == (workers == 2)


def test_a_failure_skips_only_what_is_downstream(tmp_path: Path) -> None:
    """bad fails; mid (needs bad) and leaf (needs mid) are skipped; the independent other and after still run."""
    jobs = [
        job(tmp_path, "bad", code=3),
        job(tmp_path, "mid", needs=("bad",)),
        job(tmp_path, "leaf", needs=("mid", "other")),
        job(tmp_path, "other"),
        job(tmp_path, "after", needs=("other",)),
    ]
    ended: list[str] = []
    outcomes = run_jobs(jobs, workers=2, on_end=lambda o: ended.append(o.job.name))
    assert {n: o.status for n, o in outcomes.items()} == {
        "bad": "failed",
        "mid": "skipped",
        "leaf": "skipped",
        "other": "finished",
        "after": "finished",
    }
    bad = outcomes["bad"]
    assert bad.returncode == 3
    assert bad.reason == f"exit code 3: last words of {tmp_path / 'records' / 'bad'}.json"
    assert outcomes["mid"].reason == "needs bad, which failed"
    assert outcomes["leaf"].reason == "needs mid, which was skipped (bad failed)"
    assert outcomes["mid"].returncode is None and outcomes["mid"].seconds == 0.0
    assert not (tmp_path / "records" / "mid.json").exists()
    assert sorted(ended) == sorted(outcomes)  # on_end once for each job, skipped ones included


def test_a_command_that_cannot_start_is_a_failure(tmp_path: Path) -> None:
    jobs = [Job("ghost", ("/no/such/program",), tmp_path / "ghost.log"), job(tmp_path, "next", needs=("ghost",))]
    outcomes = run_jobs(jobs)
    assert outcomes["ghost"].status == "failed" and outcomes["ghost"].returncode is None
    assert outcomes["ghost"].reason.startswith("could not start: FileNotFoundError")
    assert outcomes["next"].status == "skipped"


def test_threads_split_the_cores_unless_already_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers share the usable cores; a value in the job's env or in the caller's environment is kept."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    jobs = [job(tmp_path, "split"), job(tmp_path, "own", env={"OMP_NUM_THREADS": "7"})]
    run_jobs(jobs, workers=2)
    expected = str(max(1, usable_cores() // 2))
    assert record(tmp_path, "split")["env"]["OMP_NUM_THREADS"] == expected
    assert record(tmp_path, "own")["env"]["OMP_NUM_THREADS"] == "7"
    assert record(tmp_path, "split")["env"]["MKL_NUM_THREADS"] == "3"


def test_gpus_are_handed_out_from_the_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pool of 2: the two 1-GPU jobs get different GPUs; the 2-GPU job waits for both; a CPU job sees none."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "should-not-leak")
    jobs = [
        job(tmp_path, "one_a", sleep=0.3, gpus=1),
        job(tmp_path, "one_b", sleep=0.3, gpus=1),
        job(tmp_path, "two", gpus=2),
        job(tmp_path, "cpu"),
    ]
    run_jobs(jobs, workers=3, gpu_ids=["4", "7"])
    seen = {j.name: record(tmp_path, j.name)["env"]["CUDA_VISIBLE_DEVICES"] for j in jobs}
    assert {seen["one_a"], seen["one_b"]} == {"4", "7"}
    assert seen["two"] == "4,7" and seen["cpu"] == ""
    two_start = record(tmp_path, "two")["start"]
    assert two_start >= max(record(tmp_path, n)["end"] for n in ("one_a", "one_b"))
    assert record(tmp_path, "cpu")["start"] < two_start  # a waiting GPU job does not hold up CPU jobs


def test_cpu_only_runs_leave_cuda_visible_devices_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    run_jobs([job(tmp_path, "cpu")], gpu_ids=["2"])
    assert record(tmp_path, "cpu")["env"]["CUDA_VISIBLE_DEVICES"] == "2"


def test_interrupt_stops_running_children(tmp_path: Path) -> None:
    """An exception from a callback (here KeyboardInterrupt) takes down the children still running, then propagates."""
    pid_file = tmp_path / "sleeper.pid"
    sleeper = (
        sys.executable,
        "-c",
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)",
    )
    waiter = (sys.executable, "-c", f"import os, time\nwhile not os.path.exists({str(pid_file)!r}): time.sleep(0.02)")

    def interrupt(outcome: Outcome) -> None:
        raise KeyboardInterrupt

    jobs = [Job("sleeper", sleeper, tmp_path / "s.log"), Job("waiter", waiter, tmp_path / "w.log")]
    begin = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, workers=2, on_end=interrupt)
    assert time.monotonic() - begin < 30
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def _problem(tmp: Path, jobs: list[Job], **kw) -> str:
    with pytest.raises(ValueError) as caught:
        run_jobs(jobs, **kw)
    return str(caught.value)


def test_invalid_graphs_and_requests_are_refused_before_anything_runs(tmp_path: Path) -> None:
    a, b = job(tmp_path, "seed_0/sft"), job(tmp_path, "seed_0/dpo", needs=("seed_0/stf",))
    assert "needs 'seed_0/stf', which is not one of the jobs; did you mean 'seed_0/sft'?" in _problem(tmp_path, [a, b])
    assert "'seed_0/sft': the name appears 2 times" in _problem(tmp_path, [a, a])
    cycle = [job(tmp_path, "x", needs=("z",)), job(tmp_path, "y", needs=("x",)), job(tmp_path, "z", needs=("y",))]
    assert "the needs form a cycle: x -> z -> y -> x" in _problem(tmp_path, cycle)
    assert "cycle: self -> self" in _problem(tmp_path, [job(tmp_path, "self", needs=("self",))])
    assert "workers: must be at least 1 (got 0)" in _problem(tmp_path, [a], workers=0)
    greedy = job(tmp_path, "greedy", gpus=2)
    assert "asks for 2 GPU(s) but the local pool has 1" in _problem(tmp_path, [greedy], gpu_ids=["0"])
    wide = job(tmp_path, "wide", nodes=2)
    assert "run it with --executor slurm" in _problem(tmp_path, [wide])
    assert "executor: unknown 'ray'" in _problem(tmp_path, [a], executor="ray")
    assert "needs a folder" in _problem(tmp_path, [a], executor="submitit-local")
    assert "give a time limit" in _problem(tmp_path, [a], executor="slurm", folder=tmp_path)
    # every problem at once
    assert _problem(tmp_path, [a, a, b, wide], workers=0).count("\n  - ") == 4
    assert not list((tmp_path / "records").rglob("*.json"))


def test_slurm_parameters_chain_jobs_with_afterok() -> None:
    dpo = Job("seed_0/dpo", ("python",), Path("dpo.log"), needs=("sft", "rm"), gpus=4, nodes=2)
    extra = {"timeout_min": 600, "slurm_partition": "gpu", "slurm_additional_parameters": {"qos": "high"}}
    params = submitit_parameters(dpo, "slurm", after=["101", "102"], extra=extra)
    assert params == {
        "name": "seed_0/dpo",
        "timeout_min": 600,
        "slurm_partition": "gpu",
        "nodes": 2,
        "tasks_per_node": 4,  # one task per GPU, as Lightning's SLURM environment expects
        "gpus_per_node": 4,
        "slurm_additional_parameters": {"qos": "high", "dependency": "afterok:101:102", "kill_on_invalid_dep": "yes"},
    }
    assert extra["slurm_additional_parameters"] == {"qos": "high"}  # the caller's mapping is not modified
    cpu = submitit_parameters(Job("sft", ("python",), Path("sft.log")), "slurm")
    assert cpu == {"name": "sft", "nodes": 1, "tasks_per_node": 1}
    local = submitit_parameters(dpo, "local", extra={"timeout_min": 5, "slurm_partition": "gpu"})
    assert local["nodes"] == 1 and local["tasks_per_node"] == 1 and local["timeout_min"] == 5


class FakeSlurm:
    """Stands in for submitit on SLURM: records each submission and its dependencies; a job ends once its
    needs have ended (SLURM holds it until then); jobs named bad* exit 1."""

    poll_s = 0.0
    orders_by_itself = True

    def __init__(self, cluster: str, folder: Path, extra: dict) -> None:
        FakeSlurm.last = self
        self.submitted: list[tuple[str, list[str]]] = []
        self.ended: set[str] = set()
        self.cancelled: list[str] = []

    def start(self, job: Job, extra: dict, after: list) -> SimpleNamespace:
        self.submitted.append((job.name, [a.job_id for a in after]))
        return SimpleNamespace(job_id=str(100 + len(self.submitted)), name=job.name)

    def poll(self, handle: SimpleNamespace, job: Job) -> tuple[int, str] | None:
        if not set(job.needs) <= self.ended:
            return None
        self.ended.add(job.name)
        return (1, "exit code 1: boom") if job.name.startswith("bad") else (0, "")

    def cancel(self, handle: SimpleNamespace) -> None:
        self.cancelled.append(handle.name)

    def stop(self, handles: list) -> None:
        pass


def test_slurm_submits_everything_at_once_and_cancels_below_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All jobs go to SLURM in the first pass, each after the ids of its needs; a failure cancels its dependents."""
    monkeypatch.setattr(executor_module, "_SubmititBackend", FakeSlurm)
    jobs = [
        job(tmp_path, "dpo", needs=("bad_sft", "rm")),  # listed first, submitted once its needs have ids
        job(tmp_path, "bad_sft"),
        job(tmp_path, "rm", needs=("bad_sft",)),
        job(tmp_path, "other", gpus=8, nodes=4),  # no local pool on SLURM: any size goes
    ]
    outcomes = run_jobs(jobs, executor="slurm", folder=tmp_path, slurm={"timeout_min": 5})
    fake = FakeSlurm.last
    assert fake.submitted == [("bad_sft", []), ("rm", ["101"]), ("dpo", ["101", "102"]), ("other", [])]
    assert {n: o.status for n, o in outcomes.items()} == {
        "dpo": "skipped",
        "bad_sft": "failed",
        "rm": "skipped",
        "other": "finished",
    }
    assert sorted(fake.cancelled) == ["dpo", "rm"]
    assert outcomes["dpo"].reason == "needs bad_sft, which failed"


def test_slurm_parameters_make_the_sbatch_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit accepts the parameters and writes the dependency into the sbatch script (a fake srun on PATH)."""
    submitit = pytest.importorskip("submitit")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    dpo = Job("seed_0/dpo", ("python",), Path("dpo.log"), needs=("sft",), gpus=2)
    executor.update_parameters(**submitit_parameters(dpo, "slurm", after=["41"], extra={"timeout_min": 60}))
    script = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ["--dependency=afterok:41", "--kill-on-invalid-dep=yes", "--gpus-per-node=2", "--ntasks-per-node=2"]:
        assert f"#SBATCH {line}\n" in script
    assert "#SBATCH --time=60\n" in script


def test_submitit_local_runs_the_graph(tmp_path: Path) -> None:
    """The submitit path end to end on its local executor: order, a failure, its skipped dependent, the logs."""
    pytest.importorskip("submitit")
    jobs = [
        job(tmp_path, "a"),
        job(tmp_path, "bad", needs=("a",), code=2),
        job(tmp_path, "skipped", needs=("bad",)),
        job(tmp_path, "b", needs=("a",), env={"OMP_NUM_THREADS": "5"}),
    ]
    started: list[str] = []
    outcomes = run_jobs(
        jobs,
        workers=2,
        executor="submitit-local",
        folder=tmp_path / "submitit",
        on_start=lambda j: started.append(j.name),
    )
    assert {n: o.status for n, o in outcomes.items()} == {
        "a": "finished",
        "bad": "failed",
        "skipped": "skipped",
        "b": "finished",
    }
    assert started[0] == "a" and "skipped" not in started
    assert record(tmp_path, "a")["end"] <= min(record(tmp_path, n)["start"] for n in ("bad", "b"))
    assert outcomes["bad"].returncode == 2
    assert outcomes["bad"].reason == f"exit code 2: last words of {tmp_path / 'records' / 'bad'}.json"
    assert outcomes["skipped"].reason == "needs bad, which failed"
    assert "last words of" in jobs[0].log.read_text()  # the command's output is in job.log here too
    assert all(p.exists() for p in outcomes["bad"].scheduler_logs)
    assert record(tmp_path, "b")["env"]["OMP_NUM_THREADS"] == "5"
