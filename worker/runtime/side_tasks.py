"""Periodic work off the poll thread: each side task on its own daemon thread.

The worker's poll thread only polls, hands records to the run pool, reaps, stores offsets
and commits. Work that can take long — the sweep drives up to 100 due runs, each with full
verification — or that waits on Postgres/Kafka for reasons unrelated to the records in
flight (the outbox flush) runs here, so offsets and commits never wait behind it.

Each task runs ``interval`` seconds after the previous run *finished* (fixed delay: a slow
run is never overlapped by the next, runs never pile up), first ``interval`` seconds after
:meth:`SideTasks.start`. A run that raises is logged and the task carries on: a transient
fault (:class:`~worker.errors.RetryableError`) is simply retried at the next interval.
:meth:`SideTasks.stop` sets the tasks' own stop event (a run in progress finishes first);
:meth:`SideTasks.join` waits for the threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from worker.errors import RetryableError

__all__ = ["SideTask", "SideTasks"]

log = logging.getLogger("sr.worker")


@dataclass(frozen=True)
class SideTask:
    """One periodic job.

    Attributes:
        name: short identifier (thread name ``sr-side-<name>``, log field ``task``).
        interval: seconds between the end of one run and the start of the next (> 0).
        action: the job; its return value is ignored, any exception is logged.
    """

    name: str
    interval: float
    action: Callable[[], object]


class SideTasks:
    """Runs :class:`SideTask` s on their own threads until :meth:`stop`.

    Not restartable: one ``start`` / ``stop`` / ``join`` cycle per instance.

    Raises:
        ValueError: a task has a non-positive interval (at construction).
    """

    def __init__(self, tasks: Iterable[SideTask]) -> None:
        self._tasks = tuple(tasks)
        for task in self._tasks:
            if task.interval <= 0:
                raise ValueError(f"side task {task.name!r}: interval must be > 0 seconds")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start one daemon thread per task (idempotent)."""
        if self._threads:
            return
        self._threads = [threading.Thread(target=self._loop, args=(task,), name=f"sr-side-{task.name}", daemon=True)
                         for task in self._tasks]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Ask every task to stop after its current run. Only sets the tasks' stop event."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the threads to end (call :meth:`stop` first).

        Args:
            timeout: seconds to wait in total; ``None`` waits as long as a run takes.

        Returns:
            True if every thread ended.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("side tasks still running at shutdown", extra={"threads": alive})
        return not alive

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def _loop(self, task: SideTask) -> None:
        while not self._stop.wait(task.interval):
            try:
                task.action()
            except RetryableError as exc:
                log.warning("side task hit a transient fault; retrying at the next interval",
                            extra={"task": task.name, "error": str(exc)})
            except Exception:
                # A bug in periodic work must not take the worker down with it (nor stop the
                # task for good): the next interval tries again, the traceback is kept.
                log.exception("side task failed", extra={"task": task.name})
