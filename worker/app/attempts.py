"""Engine attempts (contract §8): requesting one, and recording what the engine reports.

Both run inside the run step, under the run's lease, and commit like every other decision:
ledger entries first (write-once), then the index row and the outbox rows in one
epoch-checked statement, then the produce. A request is

    WAITING ``ENGINE_RUNNING`` (unless the run already is) → ENGINE_REQUESTED → index row +
    status event + request rows → produce

and the request's bytes are rebuilt from the ENGINE_REQUESTED entry and the admitted intent
(:func:`worker.core.events.engine_request`), so a re-send — after a crash, by the outbox
flush, after ``sr index rebuild`` — is byte-identical. A result is recorded once per attempt
(ENGINE_RESULT) and the step then goes on as usual: a re-delivered result finds its entry
and simply runs the step again, which is idempotent. Which attempt to request and when is
decided in :mod:`worker.core.attempts`.
"""

from __future__ import annotations

from worker.app.context import RunContext
from worker.app.crashpoints import CrashPoint
from worker.app.outcomes import Action, Outcome
from worker.app.run_step import RunStep, StepState
from worker.core.engine import EngineResult, EngineStatus
from worker.core.events import engine_request
from worker.core.identity import attempt_id_for
from worker.core.index import NewPublication
from worker.core.ledger import LedgerKind, entry_hash
from worker.core.ledger_bodies import EngineRequestedBody, EngineResultBody, StatusBody
from worker.core.models import RunStatus, datetime_from_millis, millis
from worker.core.plan import Plan
from worker.core.statuses import FINAL_STATUSES
from worker.core.vocabulary import ENGINE_RUNNING
from worker.errors import EngineResultConflictError, UnknownAttemptError

__all__ = ["EngineAttempts"]


class EngineAttempts:
    """Requests engine attempts and records their results, inside the run step."""

    def __init__(self, ctx: RunContext, step: RunStep) -> None:
        self._ctx = ctx
        self._step = step

    def install(self) -> None:
        """Plug the engine path into the run step."""
        self._step.request_attempt = self.request
        self._step.record_result = self.record_result

    # ------------------------------------------------------------------ requests
    def request(self, step: StepState, plan: Plan, p_hash: str, attempt_no: int) -> Outcome:
        """Request attempt ``attempt_no``: ledger, index + outbox, produce.

        Raises:
            LedgerRaceError / StaleEpochError / LeaseLostError: as every commit.
            RetryableError: a server is unavailable (what is durable is finished by a re-drive).
        """
        ctx, lease, intent = self._ctx, step.lease, step.intent
        now_ms = millis(ctx.clock())
        run_deadline_ms = None if intent.deadline is None else millis(intent.deadline)
        state = step.state
        entries = step.entries
        wanted: list[NewPublication] = []
        if state is None or (state.status, state.last_reason_code) != (RunStatus.WAITING, ENGINE_RUNNING):
            # The status entry comes first: a ledger whose first entries were engine entries
            # would establish no status if the step died between them.
            running = StatusBody(plan_hash=p_hash, reason_code=ENGINE_RUNNING,
                                 detail=f"engine attempt {attempt_no} requested")
            status_entry = self._step.ledger.append(lease, step.keys, entries, LedgerKind.WAITING, running,
                                                    intent=intent)
            entries = (*entries, status_entry)
            wanted.append(self._step.publications.status_of(status_entry, intent))
        attempt_id = attempt_id_for(lease.run_id, attempt_no)
        body = EngineRequestedBody(attempt_id=attempt_id, attempt_no=attempt_no,
                                   attempt_deadline=ctx.engine.deadline_ms(now_ms, run_deadline_ms),
                                   plan_hash=p_hash, policy_rev=plan.policy_rev)
        # On a lost seq race the entry written before (by a crashed step) is adopted, and the
        # request is built from it: same requested_at, same deadline, same bytes.
        entry = self._step.ledger.append(lease, step.keys, entries, LedgerKind.ENGINE_REQUESTED, body, intent=intent)
        ctx.crash.hit(CrashPoint.AFTER_ENGINE_REQUESTED)
        request = engine_request(entry, intent)
        wanted.append(self._step.publications.engine_request(request))
        deadline_ms = millis(request.attempt_deadline)
        until = deadline_ms if run_deadline_ms is None else min(deadline_ms, run_deadline_ms)
        stored = lease.advance(
            RunStatus.WAITING,
            reason_code=ENGINE_RUNNING,
            plan_hash=p_hash,
            ledger_seq=entry.seq,
            ledger_head_hash=entry_hash(entry),
            next_check_at=datetime_from_millis(until),
            publications=wanted,
        )
        if len(wanted) > 1:
            ctx.observer.run_transition(RunStatus.WAITING.value)
        ctx.observer.engine_attempt("started")
        self._step.publications.publish_unpublished(stored, order=wanted)
        step.log.info("engine attempt requested", extra={
            "attempt_no": attempt_no, "attempt_id": attempt_id,
            "attempt_deadline": request.attempt_deadline.isoformat()})
        return Outcome(Action.ENGINE_REQUESTED, lease.run_id, attempt_id)

    # ------------------------------------------------------------------ results
    def record_result(self, result: EngineResult, step: StepState) -> Outcome | None:
        """Record ``result`` once; None means the run step goes on and decides on it.

        A result for an attempt that is not the latest (superseded by a retry) or for a run
        that already ended is recorded and changes nothing. A re-delivered result (same status)
        records nothing new and lets the step run again, which finishes whatever a crash left
        undone after the result was recorded.

        Raises:
            UnknownAttemptError: the run's ledger never requested this attempt.
            EngineResultConflictError: a different result is already recorded for it.
        """
        state = step.state
        attempt = None if state is None else next(
            (a for a in state.attempts if a.attempt_id == result.attempt_id), None)
        if state is None or attempt is None:
            raise UnknownAttemptError(f"run {step.run_id} never requested engine attempt {result.attempt_id}")
        if attempt.status is not None:
            if attempt.status is not result.status:
                raise EngineResultConflictError(
                    f"engine attempt {attempt.attempt_no} ({attempt.attempt_id}) of run {step.run_id} already "
                    f"reported {attempt.status.value}; a later {result.status.value} is not taken")
        else:
            body = EngineResultBody(attempt_id=result.attempt_id, status=result.status, detail=result.detail)
            entry = self._step.ledger.append(step.lease, step.keys, step.entries, LedgerKind.ENGINE_RESULT, body)
            step.lease.touch_head(entry.seq, entry_hash(entry))
            step.entries = (*step.entries, entry)
            self._ctx.crash.hit(CrashPoint.AFTER_ENGINE_RESULT)
            self._ctx.observer.engine_attempt(
                "succeeded" if result.status is EngineStatus.SUCCEEDED else "failed",
                seconds=(entry.at_ms - attempt.requested_at_ms) / 1000)
            step.log.info("engine result recorded", extra={
                "attempt_no": attempt.attempt_no, "attempt_id": attempt.attempt_id,
                "engine_status": result.status.value, "reported_by": result.reported_by})
        if attempt.attempt_no != len(state.attempts) or attempt.attempt_no <= state.attempts_before_retry:
            # Superseded by a later attempt, or made before a RETRY reopened the run.
            step.log.info("engine result for a superseded attempt: recorded, ignored",
                          extra={"attempt_no": attempt.attempt_no, "latest_attempt_no": len(state.attempts)})
            return Outcome(Action.UNCHANGED, step.run_id, f"STALE_ATTEMPT:{attempt.attempt_no}")
        if state.status in FINAL_STATUSES:
            return Outcome(Action.UNCHANGED, step.run_id, f"run is {state.status.value}")
        return None
