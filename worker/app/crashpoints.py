"""Named crash points for the reliability kill matrix (test-only).

Enabled only when the settings carry ``test_crash_point`` (environment variable
``SR_TEST_CRASH_POINT``, with ``SR_TEST_CRASH_AFTER`` = which hit to die on, default 1). At
the named point the process sends itself SIGKILL: no cleanup, no flush, no commit — exactly
what a machine failure looks like. In production the object is inert.
"""

from __future__ import annotations

import enum
import os
import signal
import threading


class CrashPoint(enum.StrEnum):
    """Where the worker can be made to die."""

    AFTER_PLAN_WRITE = "after_plan_write"
    AFTER_FACTS_WRITE = "after_facts_write"
    AFTER_LEDGER_READY = "after_ledger_ready"
    AFTER_PRODUCE_BEFORE_MARK = "after_produce_before_mark"
    BEFORE_OFFSET_COMMIT = "before_offset_commit"
    # The engine path (contract §8).
    AFTER_ENGINE_REQUESTED = "after_engine_requested"  # ENGINE_REQUESTED in the ledger, index not advanced
    AFTER_ENGINE_RESULT = "after_engine_result"  # ENGINE_RESULT in the ledger, nothing decided on it yet
    # Revocation (contract §11).
    AFTER_LEDGER_REVOKED = "after_ledger_revoked"  # REVOKED in the ledger, index not advanced


class CrashPoints:
    """Kills the process at the configured point on its ``after``-th hit."""

    def __init__(self, point: str | None = None, after: int = 1) -> None:
        self._point = CrashPoint(point) if point else None
        self._after = max(1, after)
        self._hits = 0
        self._lock = threading.Lock()

    @property
    def armed(self) -> bool:
        """True when a crash point is configured."""
        return self._point is not None

    def hit(self, point: CrashPoint) -> None:
        """Pass ``point``; SIGKILL ourselves if it is the armed one and its turn has come."""
        if self._point is not point:
            return
        with self._lock:
            self._hits += 1
            if self._hits < self._after:
                return
        os.kill(os.getpid(), signal.SIGKILL)


INERT = CrashPoints()
