"""Runs a graph of command-line jobs in parallel: a local pool of processes and GPUs, or SLURM through submitit.

`run_jobs` takes jobs (a command, a log file, the jobs it needs) and returns one `Outcome` per job. A job
starts once its needs have finished; a failed job skips everything downstream of it while independent jobs
keep running; a failure is reported in the outcomes, never raised.

Executors:
- "local": at most `workers` child processes at once, started in the given order as their needs finish.
  Each child gets OMP_NUM_THREADS/MKL_NUM_THREADS = usable cores // min(workers, jobs) unless the caller's
  or the job's environment sets them, so that the children share the cores instead of fighting for them.
  When any job asks for GPUs, GPUs are handed out from a pool (CUDA_VISIBLE_DEVICES if set, else
  `nvidia-smi -L`): a GPU job gets its own indices in CUDA_VISIBLE_DEVICES and waits until enough are free
  (later GPU jobs wait behind it; CPU jobs do not); a CPU job then gets CUDA_VISIBLE_DEVICES="" so that it
  cannot land on a GPU another job holds. When no job asks for GPUs, CUDA_VISIBLE_DEVICES is left alone.
- "slurm": every job is submitted at once through submitit; SLURM holds each one until its needs have
  succeeded (`afterok`) and cancels it if one fails (`kill_on_invalid_dep`). Needs the `slurm` extra.
- "submitit-local": submitit's local executor, with the local pool's ordering, threads and GPUs (it has no
  dependencies of its own). It exercises the submit/collect code of the slurm path on any machine.

Every executor writes the child's stdout and stderr to `job.log` (for submitit the task itself redirects, so
the log lives where the caller put it, on a file system the nodes share, and grows while the job runs; on
SLURM, task k > 0 of a multi-task job writes `<stem>.task<k><suffix>` beside it). submitit's own files (its
tracebacks, scheduler kills) are listed in `Outcome.scheduler_logs`.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ExecutorName = Literal["local", "slurm", "submitit-local"]
EXECUTORS: tuple[str, ...] = ("local", "slurm", "submitit-local")

# submitit-local kills a job after `timeout_min` (2 minutes unless given); a local run has no time limit.
LOCAL_TIMEOUT_MIN = 60 * 24 * 365
# After Ctrl-C, children get SIGTERM and this long to exit before SIGKILL.
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class Job:
    """One command to run, with the jobs it needs and the devices it uses."""

    name: str  # unique within one run_jobs call, e.g. "seed_0/dpo"
    argv: tuple[str, ...]  # the command, e.g. (sys.executable, "-m", "alignkit", "run", "stage.yaml")
    log: Path  # the child's stdout+stderr (parent folders created)
    needs: tuple[str, ...] = ()  # jobs that must finish successfully first
    gpus: int = 0  # GPUs per node (0: a CPU job)
    nodes: int = 1  # >1 only on SLURM
    # Extra environment for the child; CUDA_VISIBLE_DEVICES here is overridden when the local pool hands out GPUs.
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    """How one job ended; `reason` says why it failed or was skipped ("" when it finished)."""

    job: Job
    status: Literal["finished", "failed", "skipped"]
    returncode: int | None  # None: never ran, could not start, or ended outside the command (scheduler)
    seconds: float  # from start (local) or submission (submitit) to the end; 0 when skipped
    reason: str
    log: Path  # the job's log
    scheduler_logs: tuple[Path, ...] = ()  # submitit's stdout and stderr files for the job (task 0)


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES if set, else one index per `nvidia-smi -L` line."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(line for line in out.stdout.splitlines() if line.startswith("GPU "))]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which cgroups and taskset narrow), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def submitit_parameters(
    job: Job, cluster: Literal["slurm", "local"], after: Sequence[str] = (), extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """submitit AutoExecutor parameters for one job: the caller's `extra`, then the job's own shape.

    On SLURM a job runs one task per GPU (what Lightning's SLURM environment expects) on each of its nodes,
    after the SLURM jobs `after` have succeeded; SLURM cancels it if one of them fails. The local executor
    runs one task; the local pool has already set its CUDA_VISIBLE_DEVICES.
    """
    params: dict[str, Any] = {"name": job.name, **(extra or {})}
    if cluster == "local":
        params.setdefault("timeout_min", LOCAL_TIMEOUT_MIN)
        params.update(nodes=1, tasks_per_node=1)
        return params
    params.update(nodes=job.nodes, tasks_per_node=max(1, job.gpus))
    if job.gpus:
        params["gpus_per_node"] = job.gpus
    if after:
        additional = dict(params.get("slurm_additional_parameters") or {})
        additional.update(dependency="afterok:" + ":".join(after), kill_on_invalid_dep="yes")
        params["slurm_additional_parameters"] = additional
    return params


def run_jobs(
    jobs: Sequence[Job],
    *,
    workers: int = 1,
    executor: ExecutorName = "local",
    folder: Path | None = None,
    slurm: Mapping[str, Any] | None = None,
    on_start: Callable[[Job], None] = lambda job: None,
    on_end: Callable[[Outcome], None] = lambda outcome: None,
    gpu_ids: Sequence[str] | None = None,
) -> dict[str, Outcome]:
    """Runs `jobs` respecting their needs and returns {name: Outcome} in the given order.

    workers: jobs at the same time (local and submitit-local; SLURM runs what it schedules).
    folder: submitit's folder for its pickles and logs (one subfolder per job); required for submitit.
    slurm: extra submitit AutoExecutor parameters (timeout_min, mem_gb, cpus_per_task, slurm_partition,
        slurm_account, ...); on SLURM `timeout_min` or `slurm_time` is required (submitit's default is 5 min).
    on_start: called as each job starts (local) or is submitted (submitit).
    on_end: called as each job finishes, fails or is skipped.
    gpu_ids: the local pool's GPUs; None: `visible_gpus()`, asked only when some job needs GPUs.

    Raises ValueError for an invalid graph or request, before anything runs; KeyboardInterrupt (or an
    exception from a callback) stops the running children and cancels submitted jobs, then propagates.
    """
    jobs = list(jobs)
    manage_gpus = executor != "slurm" and any(job.gpus > 0 for job in jobs)
    pool_ids = list(gpu_ids if gpu_ids is not None else visible_gpus() if manage_gpus else [])
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    source = (
        "gpu_ids" if gpu_ids is not None else "nvidia-smi -L" if listed is None else f"CUDA_VISIBLE_DEVICES={listed!r}"
    )
    problems = _problems(
        jobs, workers=workers, executor=executor, folder=folder, slurm=slurm, pool_ids=pool_ids, pool_source=source
    )
    if problems:
        raise ValueError("cannot run these jobs:\n" + "\n".join(f"  - {p}" for p in problems))
    if executor == "local":
        backend: _LocalBackend | _SubmititBackend = _LocalBackend()
    else:
        assert folder is not None
        backend = _SubmititBackend("slurm" if executor == "slurm" else "local", folder, slurm or {})
    pool = None
    if executor != "slurm":
        threads = max(1, usable_cores() // max(1, min(workers, len(jobs))))
        pool = _DevicePool(pool_ids if manage_gpus else None, threads)
    capacity = len(jobs) if executor == "slurm" else workers
    return _Run(jobs, backend, pool, capacity, on_start, on_end).run()


def _problems(
    jobs: list[Job],
    *,
    workers: int,
    executor: str,
    folder: Path | None,
    slurm: Mapping[str, Any] | None,
    pool_ids: list[str],
    pool_source: str,
) -> list[str]:
    problems: list[str] = []
    if executor not in EXECUTORS:
        return [f"executor: unknown {executor!r}; allowed: {', '.join(EXECUTORS)}"]
    if workers < 1:
        problems.append(f"workers: must be at least 1 (got {workers})")
    if executor != "local" and folder is None:
        problems.append(f"folder: executor {executor!r} needs a folder for submitit's pickles and logs")
    if executor == "slurm" and not ({"timeout_min", "slurm_time"} & set(slurm or {})):
        problems.append(
            "slurm: give a time limit (timeout_min=... or slurm_time=...);"
            " submitit's default kills a job after 5 minutes"
        )
    names = [job.name for job in jobs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"job {name!r}: the name appears {names.count(name)} times; names must be unique")
    for job in jobs:
        if not job.argv:
            problems.append(f"job {job.name!r}: argv is empty")
        for need in job.needs:
            if need not in names:
                close = difflib.get_close_matches(need, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(f"job {job.name!r}: needs {need!r}, which is not one of the jobs{hint}")
        if job.gpus < 0 or job.nodes < 1:
            problems.append(
                f"job {job.name!r}: gpus must be >= 0 and nodes >= 1 (got gpus={job.gpus}, nodes={job.nodes})"
            )
        if executor != "slurm" and job.nodes > 1:
            problems.append(
                f"job {job.name!r}: asks for {job.nodes} nodes; the {executor} pool runs on one machine"
                " (run it with --executor slurm)"
            )
        if executor != "slurm" and job.gpus > len(pool_ids):
            problems.append(
                f"job {job.name!r}: asks for {job.gpus} GPU(s) but the {executor} pool has {len(pool_ids)}"
                f" (from {pool_source}); lower its devices or run it with --executor slurm"
            )
    cycle = _find_cycle(jobs)
    if cycle:
        problems.append("the needs form a cycle: " + " -> ".join(cycle))
    return problems


def _find_cycle(jobs: list[Job]) -> list[str]:
    needs = {job.name: [n for n in job.needs if any(j.name == n for j in jobs)] for job in jobs}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> list[str]:
        state[name] = 1
        for need in needs[name]:
            if state.get(need) == 1:  # on the current path: the path from there back to it is the cycle
                return [*path[path.index(need) :], need]
            if need not in state and (cycle := visit(need, [*path, need])):
                return cycle
        state[name] = 2
        return []

    for name in needs:
        if name not in state and (cycle := visit(name, [name])):
            return cycle
    return []


class _DevicePool:
    """Threads per child and, when GPUs are handed out, which GPUs each running job holds."""

    def __init__(self, gpu_ids: list[str] | None, threads: int) -> None:
        self.order = list(gpu_ids or [])
        self.free = list(self.order) if gpu_ids is not None else None
        self.held: dict[str, list[str]] = {}
        self.threads = threads

    def acquire(self, job: Job) -> dict[str, str] | None:
        """The child's extra environment, or None while not enough GPUs are free."""
        env = {
            var: str(self.threads)
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
            if var not in os.environ and var not in job.env
        }
        if self.free is None:
            return env
        if job.gpus > len(self.free):
            return None
        self.held[job.name], self.free = self.free[: job.gpus], self.free[job.gpus :]
        return env | {"CUDA_VISIBLE_DEVICES": ",".join(self.held[job.name])}

    def release(self, job: Job) -> None:
        if self.free is not None:
            returned = set(self.free) | set(self.held.pop(job.name, []))
            self.free = [gpu for gpu in self.order if gpu in returned]


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (progress bars' carriage returns count as line ends)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def _exit_reason(returncode: int, log: Path) -> str:
    last = _last_line(log)
    return f"exit code {returncode}: {last}" if last else f"exit code {returncode} (nothing in {log})"


class _Run:
    """The scheduling loop shared by every executor: start what is ready, poll what runs, skip downstream."""

    def __init__(
        self,
        jobs: list[Job],
        backend: _LocalBackend | _SubmititBackend,
        pool: _DevicePool | None,
        capacity: int,
        on_start: Callable[[Job], None],
        on_end: Callable[[Outcome], None],
    ) -> None:
        self.jobs, self.backend, self.pool, self.capacity = jobs, backend, pool, capacity
        self.on_start, self.on_end = on_start, on_end
        self.pending = list(jobs)
        self.running: dict[str, tuple[Job, Any, float]] = {}  # name -> (job, handle, start time)
        self.outcomes: dict[str, Outcome] = {}
        self.dependents = {job.name: [j for j in jobs if job.name in j.needs] for job in jobs}

    def run(self) -> dict[str, Outcome]:
        try:
            while len(self.outcomes) < len(self.jobs):
                self._start_ready()
                if not self.running and self.pending:
                    raise RuntimeError(f"no job can start: {[j.name for j in self.pending]} (a scheduler bug)")
                time.sleep(self.backend.poll_s)
                for name, (job, handle, started) in list(self.running.items()):
                    if name in self.running and (ended := self.backend.poll(handle, job)) is not None:
                        del self.running[name]
                        self._end(job, started, *ended)
        except BaseException:
            self.backend.stop([handle for _, handle, _ in self.running.values()])
            raise
        return {job.name: self.outcomes[job.name] for job in self.jobs}

    def _ready(self, job: Job) -> bool:
        # SLURM holds a job until its needs succeed, so it may be submitted once they are submitted.
        if self.backend.orders_by_itself:
            return all(need in self.running or need in self.outcomes for need in job.needs)
        return all(need in self.outcomes for need in job.needs)

    def _start_ready(self) -> None:
        """Starts jobs while one is ready, always the first ready one in the given order."""
        while len(self.running) < self.capacity and (ready := self._next_ready()) is not None:
            job, extra = ready
            self.pending.remove(job)
            started = time.monotonic()
            self.on_start(job)
            after = [self.running[need][1] for need in job.needs if need in self.running]
            try:
                handle = self.backend.start(job, extra, after)
            except Exception as error:  # a command that does not exist, a submission that sbatch refuses
                self._end(job, started, None, f"could not start: {type(error).__name__}: {error}")
                continue
            self.running[job.name] = (job, handle, started)

    def _next_ready(self) -> tuple[Job, dict[str, str]] | None:
        """The first pending job whose needs allow it to start and whose GPUs are free, with its extra env."""
        gpu_waiting = False  # a GPU job that waits keeps its place: later GPU jobs may not take GPUs first
        for job in self.pending:
            if not self._ready(job) or (job.gpus and gpu_waiting):
                continue
            if self.pool is None:
                return job, {}
            extra = self.pool.acquire(job)
            if extra is not None:
                return job, extra
            gpu_waiting = True
        return None

    def _end(self, job: Job, started: float, returncode: int | None, reason: str, logs: tuple[Path, ...] = ()) -> None:
        if self.pool is not None:
            self.pool.release(job)
        status: Literal["finished", "failed"] = "finished" if returncode == 0 else "failed"
        seconds = time.monotonic() - started
        self.outcomes[job.name] = Outcome(job, status, returncode, seconds, reason, job.log, logs)
        self.on_end(self.outcomes[job.name])
        if status == "failed":
            self._skip_downstream(job.name, f"needs {job.name}, which failed", job.name)

    def _skip_downstream(self, name: str, reason: str, root: str) -> None:
        for dependent in self.dependents[name]:
            if dependent.name in self.outcomes:
                continue
            if dependent.name in self.running:  # submitted to SLURM, held there by its dependency
                self.backend.cancel(self.running.pop(dependent.name)[1])
            else:
                self.pending.remove(dependent)
            self.outcomes[dependent.name] = Outcome(dependent, "skipped", None, 0.0, reason, dependent.log)
            self.on_end(self.outcomes[dependent.name])
            self._skip_downstream(dependent.name, f"needs {dependent.name}, which was skipped ({root} failed)", root)


class _LocalBackend:
    """Child processes, each in its own session so that stopping it reaches its own children too."""

    poll_s = 0.05
    orders_by_itself = False

    def start(self, job: Job, extra: Mapping[str, str], after: Sequence[Any]) -> subprocess.Popen[bytes]:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        with job.log.open("wb") as out:
            return subprocess.Popen(
                job.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_child_env({**job.env, **extra}),
                start_new_session=True,
            )

    def poll(self, proc: subprocess.Popen[bytes], job: Job) -> tuple[int, str] | None:
        returncode = proc.poll()
        if returncode is None:
            return None
        return returncode, "" if returncode == 0 else _exit_reason(returncode, job.log)

    def cancel(self, proc: subprocess.Popen[bytes]) -> None:
        self.stop([proc])

    def stop(self, procs: Sequence[subprocess.Popen[bytes]]) -> None:
        _signal_groups(procs, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        _signal_groups(procs, signal.SIGKILL)
        for proc in procs:
            proc.wait()


def _signal_groups(procs: Sequence[subprocess.Popen[bytes]], sig: signal.Signals) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError as error:
        raise ImportError(
            "the slurm and submitit-local executors need submitit: pip install 'alignkit[slurm]'"
        ) from error
    return submitit


# The message _run_logged raises, found again in the traceback text submitit hands back.
_CHILD_FAILED = re.compile(r"ChildProcessFailed: (exit code (-?\d+).*)$", re.MULTILINE)
_EXCEPTION_LINE = re.compile(r"^\w[\w.]*(?:Error|Exception|Interrupt|Exit)\b.*$", re.MULTILINE)


class ChildProcessFailed(RuntimeError):
    """A job's command exited non-zero inside a submitit task (raised there so that SLURM marks the job failed)."""


def _run_logged(argv: list[str], log: Path, env: Mapping[str, str]) -> None:
    """What a submitit task runs: the command, its output to the job's log, a non-zero exit raised.

    submitit's CommandFunction is not used: it keeps the whole output in memory and returns it as the
    job's pickled result, and its `env` replaces the node's environment (SLURM_*, the GPUs SLURM gave).
    """
    submitit = _import_submitit()
    rank = submitit.JobEnvironment().global_rank
    path = log if rank == 0 else log.with_name(f"{log.stem}.task{rank}{log.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        path.open("wb") as out,
        subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_child_env(env)
        ) as proc,
    ):
        try:
            returncode = proc.wait()
        except BaseException:  # cancelled (SIGINT from submitit-local) or interrupted: take the command down too
            proc.terminate()
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if returncode != 0:
        where = "" if rank == 0 else f" (task {rank}, log {path})"
        raise ChildProcessFailed(_exit_reason(returncode, path) + where)


class _SubmititBackend:
    """submitit jobs: SLURM (submitted at once, ordered by SLURM) or its local executor (ordered by _Run)."""

    def __init__(self, cluster: Literal["slurm", "local"], folder: Path, extra: Mapping[str, Any]) -> None:
        self.submitit = _import_submitit()
        self.cluster, self.folder, self.extra = cluster, Path(folder), dict(extra)
        self.orders_by_itself = cluster == "slurm"
        self.poll_s = 1.0 if cluster == "slurm" else 0.1
        # Unknown or mistyped parameters are reported now, not once per job as it is submitted.
        probe = self.submitit.AutoExecutor(folder=self.folder, cluster=cluster)
        try:
            probe.update_parameters(**self.extra)
        except (NameError, AssertionError, ValueError, TypeError) as error:
            raise ValueError(f"slurm: submitit refuses these parameters: {error}") from error

    def start(self, job: Job, extra: Mapping[str, str], after: Sequence[Any]) -> Any:
        executor = self.submitit.AutoExecutor(folder=self.folder / job.name, cluster=self.cluster)
        params = submitit_parameters(job, self.cluster, [str(a.job_id) for a in after], self.extra)
        executor.update_parameters(**params)
        return executor.submit(_run_logged, list(job.argv), job.log, {**job.env, **extra})

    def poll(self, handle: Any, job: Job) -> tuple[int | None, str, tuple[Path, ...]] | None:
        if not handle.done():
            return None
        logs = (handle.paths.stdout, handle.paths.stderr)
        try:
            handle.results()
        except Exception as error:  # FailedJobError (the task raised) or UncompletedJobError (killed)
            text = str(error)
            if match := _CHILD_FAILED.search(text):
                return int(match.group(2)), match.group(1), logs
            lines = _EXCEPTION_LINE.findall(text)
            detail = lines[-1][:300] if lines else f"state {handle.state}"
            return None, f"submitit job {handle.job_id} failed: {detail}; see {handle.paths.stderr}", logs
        return 0, "", logs

    def cancel(self, handle: Any) -> None:
        handle.cancel(check=False)

    def stop(self, handles: Sequence[Any]) -> None:
        for handle in handles:
            self.cancel(handle)
        if self.cluster == "local":  # its controllers stop their tasks within a second or two
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline and not all(handle.done() for handle in handles):
                time.sleep(0.1)
