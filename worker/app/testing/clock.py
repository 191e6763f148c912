"""Controlled time and crash points for tests of the application layer."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from worker.app.crashpoints import CrashPoint, CrashPoints

__all__ = ["ManualClock", "RaisingCrashPoints", "SimulatedCrash"]


# --------------------------------------------------------------------------- clock
class ManualClock:
    """A clock that only moves when told. Starts at ``start`` (aware UTC)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        """Move forward ``seconds``; returns the new now."""
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now


# --------------------------------------------------------------------------- crash points
class SimulatedCrash(BaseException):
    """Raised at an armed crash point; a BaseException so no ``except Exception`` eats it."""


class RaisingCrashPoints(CrashPoints):
    """Crash points that raise :class:`SimulatedCrash` on the ``after``-th hit of ``point``."""

    def hit(self, point: CrashPoint) -> None:
        """Raise at the armed point when its turn has come."""
        if self._point is not point:
            return
        with self._lock:
            self._hits += 1
            if self._hits != self._after:
                return
        raise SimulatedCrash(point.value)


