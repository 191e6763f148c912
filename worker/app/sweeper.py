"""Periodic work of a worker: re-check due runs, and publish what a crash left in the outbox.

Both are safe with many workers: the sweep drives each run under its lease (a busy run is
skipped — its holder is working on it), and outbox rows are re-sent byte-identically (the
first recorded broker position wins). The runtime runs them on a side thread, never on the
poll loop.
"""

from __future__ import annotations

from datetime import timedelta

from worker.app.context import RunContext
from worker.app.outcomes import Outcome
from worker.app.run_step import RunStep
from worker.logs import run_logger

__all__ = ["Sweeper"]


class Sweeper:
    """Deadline / re-check sweep and outbox flush."""

    def __init__(self, ctx: RunContext, step: RunStep) -> None:
        self._ctx = ctx
        self._step = step

    def sweep(self, *, limit: int = 100, stale_admitted_after: float = 120.0) -> list[Outcome]:
        """Re-check up to ``limit`` due WAITING runs (deadlines included) and ADMITTED runs
        untouched for ``stale_admitted_after`` seconds (abandoned mid-step).

        Raises:
            RetryableError / LeaseLostError / StaleEpochError: a server fault mid-sweep (the
                runs not reached are due again at the next sweep).
        """
        now = self._ctx.clock()
        due = self._ctx.index.due_for_check(now, limit, stale_before=now - timedelta(seconds=stale_admitted_after))
        outcomes: list[Outcome] = []
        for row in due:
            log = run_logger("sr.run", run_id=row.run_id, tenant_id=row.tenant_id, cause="sweep")
            outcomes.append(self._step.drive(row.run_id, fresh=False, wait=0.0, log=log))
        return outcomes

    def flush_outbox(self, limit: int = 1000) -> int:
        """Publish up to ``limit`` publications a crash left unpublished; returns how many.

        Raises:
            KafkaUnavailableError: a delivery was not acknowledged (the rest wait for the next flush).
        """
        pending = self._ctx.index.unpublished(limit)
        if pending:
            self._ctx.publisher.publish(pending)
        return len(pending)
