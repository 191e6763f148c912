"""SR workers under test: in-process on a thread, or ``sr run`` subprocesses with their JSON logs.

:class:`WorkerProc` is the one subprocess wrapper of the tests and the benchmarks: the process
is started by :meth:`WorkerProc.start` and always stopped by its PID (SIGCONT, SIGTERM, SIGKILL
after a grace). Log helpers read the worker's JSON lines: rebalances, ``worker started``,
the counters of ``worker stopped``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Protocol, Self

from tests.harness.paths import REPO
from tests.harness.sr_env import SREnv
from worker.app.ports import Record
from worker.runtime.worker import Worker

__all__ = [
    "WorkerEnvironment",
    "WorkerProc",
    "WorkerThread",
    "assigned_partitions",
    "log_lines",
    "sr_binary",
    "start_worker_process",
    "stop_all",
    "stop_process",
    "stopped_stats",
    "wait_group_split",
]


class WorkerEnvironment(Protocol):
    """Anything that gives the full environment of an ``sr run`` subprocess."""

    def env(self) -> dict[str, str]:
        """The environment (``SR_*`` settings included)."""
        ...


# ----------------------------------------------------------------------------- in-process
class ServiceThread:
    """A long-running in-process service (a worker, the reference engine) on a daemon thread:
    :meth:`start` waits until it is ready, :meth:`stop` asks it to stop and joins."""

    def __init__(self, name: str, *, run: Callable[[], object], stop: Callable[[], None],
                 ready: threading.Event) -> None:
        self._run_service, self._stop_service, self._ready = run, stop, ready
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self._run_service()
        except BaseException as exc:  # surfaced by start() / stop()
            self.error = exc

    def start(self, timeout: float = 60.0) -> Self:
        """Start the thread and wait until the service is ready.

        Raises:
            RuntimeError: it failed or did not get ready within ``timeout`` seconds.
        """
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.error is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.thread.name} did not start: {self.error!r}")
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the service and join its thread.

        Raises:
            RuntimeError: the thread did not stop, or the service had failed.
        """
        self._stop_service()
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError(f"{self.thread.name} did not stop")
        if self.error is not None:
            raise RuntimeError(f"{self.thread.name} failed: {self.error!r}") from self.error


class WorkerThread(ServiceThread):
    """An in-process worker on a thread (stopped and joined by :meth:`stop`)."""

    def __init__(self, env: SREnv, **overrides: Any) -> None:
        settings = env.settings.model_copy(update=overrides) if overrides else env.settings
        self.outcomes: list[tuple[Record, Any]] = []
        self.worker = Worker(settings, env.policy, on_outcome=lambda r, o: self.outcomes.append((r, o)))
        super().__init__("sr-test-worker", run=self.worker.run, stop=self.worker.stop, ready=self.worker.ready)


# ----------------------------------------------------------------------------- subprocesses
def sr_binary() -> str:
    """The ``sr`` console script of the interpreter's venv.

    Raises:
        RuntimeError: it is not installed (``make`` installs the package into ``.venv``).
    """
    cand = Path(sys.executable).parent / "sr"
    if not cand.exists():
        raise RuntimeError(f"{cand} not found: install the package into the venv (any make target does)")
    return str(cand)


def _parent_death_signal() -> Callable[[], None] | None:
    """``preexec_fn`` that asks Linux to SIGKILL the child when the launching thread dies."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)

    def _preexec() -> None:
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG

    return _preexec


def _launch(environ: Mapping[str, str], log_path: Path | None, *, kill_with_parent: bool) -> subprocess.Popen[bytes]:
    out: IO[bytes] | int = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # noqa: SIM115 - the child holds its own copy; ours is closed below
    try:
        return subprocess.Popen([sr_binary(), "run"], env=dict(environ), stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO,
                                preexec_fn=_parent_death_signal() if kill_with_parent else None)  # noqa: PLW1509
    finally:
        if not isinstance(out, int):
            out.close()


def start_worker_process(env: WorkerEnvironment, *, extra_env: Mapping[str, str] | None = None,
                         log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """``sr run`` as a subprocess on ``env`` (its output appended to ``log_path``, if given)."""
    environ = env.env()
    environ.update(extra_env or {})
    return _launch(environ, log_path, kill_with_parent=False)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class WorkerProc:
    """An ``sr run`` subprocess with its JSON log in a file, owned by one test or benchmark.

    Nothing runs until :meth:`start`. ``kill_with_parent`` (Linux) has the kernel SIGKILL the
    worker when the thread that started it dies, so even a ``kill -9`` of the benchmark cannot
    leave a worker behind; it uses a ``preexec_fn``, so start such workers from the main thread.
    """

    def __init__(self, env: WorkerEnvironment, log: Path, extra_env: Mapping[str, str] | None = None, *,
                 kill_with_parent: bool = False) -> None:
        self.env = env
        self.log = log
        self.extra_env = dict(extra_env or {})
        self.kill_with_parent = kill_with_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self.exit_code: int | None = None
        self._terminated = False

    def start(self) -> WorkerProc:
        """Start ``sr run``; returns ``self``."""
        environ = self.env.env()
        environ.update(self.extra_env)
        self.proc = _launch(environ, self.log, kill_with_parent=self.kill_with_parent)
        self.started_at = time.monotonic()
        self.exit_code, self._terminated = None, False
        return self

    def _started(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError(f"worker {self.log.name} was never started")
        return self.proc

    @property
    def pid(self) -> int:
        """The worker's PID.

        Raises:
            RuntimeError: not started.
        """
        return self._started().pid

    def alive(self) -> bool:
        """True while the process runs (False before :meth:`start`)."""
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code once the process exits on its own; None after ``timeout`` seconds."""
        try:
            return self._started().wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log objects written so far."""
        return log_lines(self.log)

    def has_logged(self, msg: str) -> bool:
        """True once a log line with this ``msg`` was written."""
        return any(line.get("message") == msg for line in self.lines())

    def assigned(self, topic: str) -> set[int]:
        """Partitions of ``topic`` the worker owns now, according to its rebalance log lines."""
        return assigned_partitions(self.log, topic)

    def wait_started(self, timeout: float = 90.0) -> None:
        """Wait until the worker logged ``worker started``.

        Raises:
            RuntimeError: it exited, or did not start within ``timeout`` seconds.
        """
        proc = self._started()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}: {self.tail()}")
            if self.has_logged("worker started"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker did not start within {timeout}s: {self.tail()}")

    def tail(self, n: int = 2000) -> str:
        """The last ``n`` characters of the log."""
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def terminate(self) -> None:
        """SIGCONT (a stopped process cannot act on SIGTERM), then SIGTERM once, without waiting."""
        proc = self.proc
        if proc is not None and self.exit_code is None and not self._terminated and proc.poll() is None:
            self._terminated = True
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGCONT + SIGTERM (finish in-flight work, commit, log counters), SIGKILL after ``timeout``.

        Returns:
            The exit code (the same on every call), or None if the worker was never started.
        """
        proc = self.proc
        if proc is None:
            return None
        if self.exit_code is None:
            self.terminate()
            # One SIGTERM only: a repeated one is a different test (a supervisor that insists).
            try:
                self.exit_code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                self.exit_code = proc.wait()
        return self.exit_code

    def stop_stats(self) -> dict[str, Any] | None:
        """The last ``worker stopped`` counters (``s3_requests`` by verb, ``pg_round_trips``), if logged."""
        stopped = stopped_stats(self.log)
        if not stopped:
            return None
        last = stopped[-1]
        return {"s3_requests": last.get("s3_requests") or {}, "pg_round_trips": last.get("pg_round_trips")}


def stop_all(workers: Iterable[WorkerProc], timeout: float = 60.0) -> list[int | None]:
    """SIGTERM every worker first, then wait for each (they drain in parallel); their exit codes.

    Never raises before every worker was asked to stop.
    """
    workers = list(workers)
    for w in workers:
        w.terminate()
    return [w.stop(timeout) for w in workers]


def unclean_exits(workers: Iterable[WorkerProc], codes: Iterable[int | None], *, chars: int = 3000) -> str:
    """For an assertion message: the log tail of every worker whose exit code was not 0."""
    return "\n".join(f"--- {w.log.name} exited {code}:\n{w.tail(chars)}"
                     for w, code in zip(workers, codes, strict=True) if code not in (0, None))


# ----------------------------------------------------------------------------- worker logs
def log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log objects a worker wrote (non-JSON lines, e.g. librdkafka's, are skipped)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    found: list[dict[str, Any]] = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def assigned_partitions(path: Path, topic: str) -> set[int]:
    """Partitions of ``topic`` a worker owns now, replayed from its assign/revoke/lost log lines."""
    owned: set[int] = set()
    for line in log_lines(path):
        msg = line.get("message")
        if msg not in ("partitions assigned", "partitions revoked", "partitions lost"):
            continue
        parts = {int(p[len(topic) + 1:-1]) for p in line.get("partitions") or [] if p.startswith(f"{topic}[")}
        if msg == "partitions assigned":
            owned |= parts
        else:
            owned -= parts
    return owned


def wait_group_split(logs: list[Path], topic: str, partitions: int, timeout: float = 90.0) -> None:
    """Wait until every worker owns some partitions of ``topic`` and together they own all of them.

    Raises:
        AssertionError: the group did not split that way within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owned = [assigned_partitions(p, topic) for p in logs]
        union: set[int] = set().union(*owned)
        if all(owned) and union == set(range(partitions)) and sum(map(len, owned)) == partitions:
            return
        time.sleep(0.2)
    raise AssertionError(f"consumer group never split {topic} over {len(logs)} workers: "
                         f"{[sorted(assigned_partitions(p, topic)) for p in logs]}")


def stopped_stats(path: Path) -> list[dict[str, Any]]:
    """The counters of every clean ``worker stopped`` line in a log (one per clean exit)."""
    return [line for line in log_lines(path) if line.get("message") == "worker stopped"]
