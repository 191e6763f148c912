"""The poll loop's heartbeat: what ``/healthz`` (liveness) answers from.

A worker whose process is up but whose poll loop is wedged (a deadlock, a call that never
returns) consumes nothing and would never be restarted if liveness only meant "the HTTP
thread answers". The loop calls :meth:`Heartbeat.beat` on every turn; ``/healthz`` answers
503 once the last beat is older than ``timeout`` seconds, so the orchestrator restarts it.

The heartbeat is *armed* only while the loop runs: before (start-up, migrations, the outbox
flush that precedes consuming) and after (a stop draining in-flight records) liveness holds,
since those phases have their own bounds. Units: seconds (monotonic clock).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Heartbeat"]


class Heartbeat:
    """Last-beat time of a loop, and whether it is overdue.

    Args:
        timeout: seconds without a beat after which the loop counts as stuck (> 0).
        clock: monotonic seconds (tests pass a fake).

    Raises:
        ValueError: ``timeout`` is not positive.
    """

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        if timeout <= 0:
            raise ValueError("heartbeat timeout must be > 0 seconds")
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._armed = False
        self._last = clock()

    def arm(self) -> None:
        """The loop starts: from now on a missing beat counts."""
        with self._lock:
            self._armed = True
            self._last = self._clock()

    def disarm(self) -> None:
        """The loop ends (a stop): liveness no longer depends on beats."""
        with self._lock:
            self._armed = False

    def beat(self) -> None:
        """One turn of the loop (cheap: a clock read and an assignment)."""
        self._last = self._clock()

    def age(self) -> float:
        """Seconds since the last beat (0 while disarmed)."""
        with self._lock:
            return max(0.0, self._clock() - self._last) if self._armed else 0.0

    def alive(self) -> bool:
        """False only while armed and the last beat is older than ``timeout``."""
        return self.age() <= self.timeout
