"""The run step: lease, plan, verify, classify, commit (contract §4–§6).

Every step happens under the run's lease (advisory lock + fencing epoch) and commits in
this order:

    facts view (write-once) → ledger entry (write-once, hash-chained) → index row +
    publication rows (one epoch-checked statement) → produce → mark published

and only after that does the worker store the message's offset. A crash anywhere re-drives
from what is durable: write-once PUTs of deterministic bytes are idempotent, a lost race on
a ledger seq is re-read and adopted (:mod:`worker.app.ledger_writer`), and publication rows
keep the exact bytes to re-send (:mod:`worker.app.publications`). Triggers that act on the
committed facts rather than on the evidence (REEMIT, SUPERSEDE) are in
:mod:`worker.app.triggers`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from worker.app.context import RunContext
from worker.app.crashpoints import CrashPoint
from worker.app.ledger_writer import LedgerWriter
from worker.app.outcomes import Action, Outcome
from worker.app.ports import Lease
from worker.app.publications import Publications
from worker.core.attempts import EngineMove, Move, after_missing, before_verify
from worker.core.canonical import sha256_hex
from worker.core.engine import EngineResult
from worker.core.events import control_fact
from worker.core.evidence import Classification, ClassificationResult, GateResult, classify
from worker.core.facts import build_facts_view, facts_view_bytes
from worker.core.index import RunRow
from worker.core.keys import RunKeys
from worker.core.ledger import LedgerEntry, LedgerKind, RunState, derive_state, entry_hash
from worker.core.ledger_bodies import ReadyBody, StatusBody, recorded_plan_hash
from worker.core.models import RunIntent, RunStatus, RunTrigger, datetime_from_millis, millis
from worker.core.plan import Plan, build_plan, plan_bytes
from worker.core.statuses import FINAL_STATUSES, ledger_kind, run_status
from worker.core.vocabulary import ENGINE_RUNNING
from worker.errors import ConfigError, EvidenceError, LeaseBusyError, LeaseLostError, RunNotFoundError, StaleEpochError
from worker.logs import RunLogger, run_logger

__all__ = ["EngineRequester", "EngineResultHandler", "RunStep", "StepState", "TriggerHandler"]


class StepState:
    """What one step knows about its run: the lease, the row, the intent, keys and ledger."""

    def __init__(self, lease: Lease, row: RunRow, intent: RunIntent, keys: RunKeys, *,
                 entries: tuple[LedgerEntry, ...], log: RunLogger) -> None:
        self.lease = lease
        self.row = row
        self.intent = intent
        self.keys = keys
        self.entries = entries
        self.log = log
        self._folded: tuple[tuple[LedgerEntry, ...], RunState | None] | None = None

    @property
    def run_id(self) -> str:
        """The run."""
        return self.row.run_id

    @property
    def state(self) -> RunState | None:
        """The run's state derived from :attr:`entries` (None before its first entry); folded
        once per ledger the step holds, however often a step asks."""
        if self._folded is None or self._folded[0] is not self.entries:
            self._folded = (self.entries, derive_state(self.entries) if self.entries else None)
        return self._folded[1]


#: Handles one trigger kind inside the run step, under the lease (see :mod:`worker.app.triggers`).
TriggerHandler = Callable[[RunTrigger, StepState], Outcome]
#: Records an engine result under the lease; an Outcome ends the step, None goes on with it
#: (see :class:`worker.app.attempts.EngineAttempts`).
EngineResultHandler = Callable[[EngineResult, StepState], "Outcome | None"]
#: Requests engine attempt ``attempt_no`` for the step's run (plan, plan hash, attempt_no).
EngineRequester = Callable[[StepState, Plan, str, int], Outcome]


class RunStep:
    """Advances one run per call, under its lease."""

    def __init__(self, ctx: RunContext, *, ledger: LedgerWriter, publications: Publications) -> None:
        self._ctx = ctx
        self.ledger = ledger
        self.publications = publications
        #: Trigger kind → handler; filled by the processor from :mod:`worker.app.triggers`.
        #: Kinds without a handler (EVIDENCE_ARRIVED, REEVALUATE) run the normal step.
        self.control: dict[str, TriggerHandler] = {}
        #: The engine path (contract §8); set by the processor from :mod:`worker.app.attempts`.
        self.record_result: EngineResultHandler | None = None
        self.request_attempt: EngineRequester | None = None

    # ------------------------------------------------------------------ entry
    def drive(self, run_id: str, *, fresh: bool, wait: float | None = None, trigger: RunTrigger | None = None,
              log: RunLogger | None = None, intent: RunIntent | None = None,
              result: EngineResult | None = None, signed_by: str | None = None) -> Outcome:
        """Take the lease and advance the run one step.

        ``fresh`` means this process just inserted the index row, so no S3 state can exist
        yet and the ledger need not be listed. ``intent`` is the decoded intent when the
        caller has it (admission), so the row's copy need not be parsed again. ``result`` is
        an engine result to record first (contract §8). ``signed_by`` is the id of the key
        that signed ``trigger`` (recorded with it, contract §10).

        Raises:
            RunNotFoundError: ``run_id`` is not in the index.
            RetryableError: a server is unavailable.
        """
        ctx = self._ctx
        log = log or run_logger("sr.run", run_id=run_id)
        try:
            lease = ctx.leases.acquire(run_id, wait=ctx.lease_wait if wait is None else wait)
        except LeaseBusyError:
            log.info("run is leased by another worker; leaving it to the holder")
            return Outcome(Action.BUSY, run_id)
        with lease:
            row = lease.row or ctx.index.get(run_id)
            if row is None:
                raise RunNotFoundError(f"run {run_id} is not in the index")
            # Every line about this step carries the run, its tenant and the fencing epoch.
            log = run_logger("sr.run", **{**(log.extra or {}), "tenant_id": row.tenant_id, "epoch": lease.epoch})
            try:
                return self._step(lease, row, fresh=fresh, trigger=trigger, result=result, log=log, intent=intent,
                                  signed_by=signed_by)
            except (LeaseLostError, StaleEpochError) as exc:
                # Counted once here, where every step runs; the caller's handling is unchanged.
                ctx.observer.lease_lost("fenced" if isinstance(exc, StaleEpochError) else "lost")
                raise

    def _step(self, lease: Lease, row: RunRow, *, fresh: bool, trigger: RunTrigger | None,
              result: EngineResult | None, log: RunLogger, intent: RunIntent | None,
              signed_by: str | None = None) -> Outcome:
        if intent is None:
            intent = RunIntent.from_avro(row.intent)
        keys = self._ctx.truth.keys_for(intent.tenant_id, intent.namespace, row.run_id)
        if row.status in FINAL_STATUSES and trigger is None and result is None:
            # Nothing to decide again; finish any publication a crash left behind. The index
            # row was written after the ledger entry, so no S3 read is needed to know this.
            self.publications.republish_pending(row.run_id, log)
            return Outcome(Action.UNCHANGED, row.run_id, row.status.value)
        entries: tuple[LedgerEntry, ...] = () if fresh else self._ctx.truth.read_ledger(keys)
        step = StepState(lease, row, intent, keys, entries=entries, log=log)
        if entries and entries[-1].seq > row.ledger_seq:
            self._catch_up(step)
        if trigger is not None:
            step.entries = self.ledger.record_trigger(lease, keys, step.entries, trigger, intent, key_id=signed_by)
            handler = self.control.get(trigger.kind.value)
            if handler is not None:
                return handler(trigger, step)
        if result is not None and self.record_result is not None:
            ended = self.record_result(result, step)
            if ended is not None:
                return ended
        return self.decide(step, asked=trigger is not None)

    def decide(self, step: StepState, *, asked: bool = False) -> Outcome:
        """Plan, then verify (or not: the engine path may wait or request first), then commit.

        ``asked``: a trigger (EVIDENCE_ARRIVED, REEVALUATE) asked for this step, so the
        evidence is verified even while an attempt is open (complete, hash-verified evidence
        is READY whoever wrote it; the attempt's result is then recorded and ignored).
        """
        state, intent = step.state, step.intent
        status = state.status if state is not None else RunStatus.ADMITTED
        if status in FINAL_STATUSES:
            self.publications.republish_pending(step.run_id, step.log)
            return Outcome(Action.UNCHANGED, step.run_id, status.value)
        try:
            plan, p_hash = self._plan_for(step)
        except EvidenceError as exc:
            # E.g. an output the policy does not know: the run cannot ever be planned.
            failed = ClassificationResult(classification=Classification.FAILED, reason_code=exc.code,
                                          detail=str(exc))
            return self.commit_status(step, p_hash=None, verdict=failed)
        now = self._ctx.clock()
        attempts = state.attempts if state is not None else ()
        counted_from = state.attempts_before_retry if state is not None else 0
        run_deadline_ms = None if intent.deadline is None else millis(intent.deadline)
        first = before_verify(plan.strategy, attempts, now_ms=millis(now), run_deadline_ms=run_deadline_ms,
                              counted_from=counted_from)
        if first.move is Move.REQUEST or (first.move is Move.WAIT and not asked):
            return self._engine_move(step, plan, p_hash, first)
        results = self.verify(plan)
        verdict = classify(results, deadline=intent.deadline, now=now)
        if verdict.classification is Classification.COMPLETE:
            return self.commit_ready(step, plan=plan, p_hash=p_hash, results=results)
        if verdict.classification is Classification.WAITING:
            # Evidence missing before the deadline: on the engine path that means an attempt
            # to request, a backoff to wait out, or a spent budget (REUSE: None, just wait).
            then = after_missing(plan.strategy, attempts, now_ms=millis(now), budget=self._ctx.engine,
                                 counted_from=counted_from)
            if then is not None:
                return self._engine_move(step, plan, p_hash, then)
        return self.commit_status(step, p_hash=p_hash, verdict=verdict)

    def _engine_move(self, step: StepState, plan: Plan, p_hash: str, move: EngineMove) -> Outcome:
        """Carry out an engine-path decision: request an attempt, or commit WAITING / FAILED."""
        state = step.state
        last = state.attempts[-1] if state is not None and state.attempts else None
        if (last is not None and last.status is None and state is not None
                and state.last_reason_code == ENGINE_RUNNING and move.reason_code != ENGINE_RUNNING):
            # The open attempt is overdue and this step is the first to act on it.
            self._ctx.observer.engine_attempt("timed_out")
        if move.move is Move.REQUEST:
            if self.request_attempt is None or move.attempt_no is None:
                raise ConfigError("this processor cannot request engine attempts")
            return self.request_attempt(step, plan, p_hash, move.attempt_no)
        classification = Classification.FAILED if move.move is Move.FAIL else Classification.WAITING
        verdict = ClassificationResult(classification=classification, reason_code=move.reason_code,
                                       detail=move.detail)
        until = None if move.until_ms is None else datetime_from_millis(move.until_ms)
        return self.commit_status(step, p_hash=p_hash, verdict=verdict, next_check=until)

    def _catch_up(self, step: StepState) -> None:
        """The ledger is ahead of the index: a step crashed between its ledger entries and its
        index write. The ledger is the truth, so the index row is moved to its head and the
        messages the newer entries imply are stored and sent (rebuilt from the entries, so
        byte-identical to what the crashed step would have sent)."""
        entries, row, state = step.entries, step.row, step.state
        if state is None:  # no entries: nothing can be ahead of the index
            return
        newer = [e for e in entries if e.seq > row.ledger_seq]
        owed = self.publications.implied(newer, step.intent, fenced=frozenset(state.fenced_seqs))
        head = entries[-1]
        step.log.warning("ledger is ahead of the index (a step was interrupted); catching up",
                         extra={"index_seq": row.ledger_seq, "ledger_seq": head.seq, "owed": len(owed)})
        # A run that never was READY has its plan hash only in its status / request bodies.
        plan_hash = state.plan_hash or recorded_plan_hash(entries)
        stored = step.lease.advance(
            state.status, reason_code=state.last_reason_code, plan_hash=plan_hash,
            facts_view_hash=state.facts_view_hash, ledger_seq=head.seq, ledger_head_hash=entry_hash(head),
            # Due at once: the step that follows decides the real next check.
            next_check_at=self._ctx.clock() if state.status is RunStatus.WAITING else None,
            publications=owed,
        )
        self.publications.publish_unpublished(stored, order=owed)

    # ------------------------------------------------------------------ plan + verify
    def verify(self, plan: Plan) -> list[GateResult]:
        """Verify every gate of ``plan`` (metrics see the bytes hashed)."""
        results = self._ctx.verifier.verify_plan(plan)
        self._ctx.observer.evidence_bytes(sum(r.byte_count for r in results))
        return results

    def _plan_for(self, step: StepState) -> tuple[Plan, str]:
        """The run's plan and its hash: built once, written once; later steps use the stored one.

        Raises:
            EvidenceError: the intent cannot be planned under the policy (and no plan is stored).
            ConfigError: this process has no policy.
        """
        ctx, row = self._ctx, step.row
        if ctx.policy is None:
            raise ConfigError("this process has no gate policy; it cannot plan runs")
        try:
            plan = build_plan(step.intent, ctx.policy, run_id=row.run_id)
        except EvidenceError:
            if row.plan_hash is None:
                raise
            return ctx.truth.read_plan(step.keys, row.plan_hash), row.plan_hash
        data = plan_bytes(plan)  # serialised once: its hash is the plan's address
        p_hash = sha256_hex(data)
        if row.plan_hash is None:
            ctx.truth.write_plan(step.keys, data)
            ctx.crash.hit(CrashPoint.AFTER_PLAN_WRITE)
        elif row.plan_hash != p_hash:
            # The policy changed since admission: the run keeps the plan it was admitted with.
            return ctx.truth.read_plan(step.keys, row.plan_hash), row.plan_hash
        return plan, p_hash

    # ------------------------------------------------------------------ commits
    def facts_uri(self, keys: RunKeys, fv_hash: str) -> str:
        """The ``s3://`` URI of a facts view of this run."""
        return f"s3://{self._ctx.s3_bucket}/{keys.facts(fv_hash)}"

    def commit_ready(self, step: StepState, *, plan: Plan, p_hash: str, results: Sequence[GateResult]) -> Outcome:
        """Facts view → READY entry → index row + publication → produce.

        A run whose last READY was revoked (and then retried) gets a facts view that names the
        revoked one in ``supersedes``: its hash differs from the revoked fact's even for the
        same evidence, so the new READY is a new fact (contract §6, §11).
        """
        ctx, state = self._ctx, step.state
        revoked = state.revoked[-1] if state is not None and state.revoked else None
        view_bytes = facts_view_bytes(build_facts_view(plan, p_hash, results, supersedes=revoked))
        fv_hash = sha256_hex(view_bytes)
        ctx.truth.write_facts_view(step.keys, view_bytes)
        ctx.crash.hit(CrashPoint.AFTER_FACTS_WRITE)
        body = ReadyBody(plan_hash=p_hash, facts_view_hash=fv_hash, facts_view_uri=self.facts_uri(step.keys, fv_hash),
                         policy_rev=plan.policy_rev, supersedes_facts_view_hash=revoked)
        entry = self.ledger.append(step.lease, step.keys, step.entries, LedgerKind.READY, body, intent=step.intent)
        ctx.crash.hit(CrashPoint.AFTER_LEDGER_READY)
        event = control_fact(entry, step.intent)
        stored = step.lease.advance(
            RunStatus.READY,
            plan_hash=p_hash,
            facts_view_hash=fv_hash,
            ledger_seq=entry.seq,
            ledger_head_hash=entry_hash(entry),
            publications=[self.publications.fact(event)],
        )
        ctx.observer.run_transition(RunStatus.READY.value)
        self.publications.publish_unpublished(stored)
        step.log.info("run READY", extra={"facts_view_hash": fv_hash})
        return Outcome(Action.READY, event.run_id, fv_hash)

    def commit_status(self, step: StepState, *, p_hash: str | None, verdict: ClassificationResult,
                      next_check: datetime | None = None) -> Outcome:
        """A WAITING / FAILED / QUARANTINED verdict: a ledger entry and event on a transition
        (a new status, or a new reason within WAITING), otherwise only the next re-check is
        scheduled. ``next_check`` overrides the re-check time of a WAITING run (the engine path
        knows when an attempt is due); the run's own deadline is never overshot."""
        ctx, lease = self._ctx, step.lease
        status = run_status(verdict.classification)
        next_check_at = self._next_check(step, status, next_check)
        state = step.state
        if state is not None and (state.status, state.last_reason_code) == (status, verdict.reason_code):
            # No transition: no ledger entry, no event; only schedule the next re-check.
            head = step.entries[-1]
            lease.advance(status, ledger_seq=head.seq, ledger_head_hash=entry_hash(head),
                          plan_hash=p_hash, reason_code=verdict.reason_code, next_check_at=next_check_at)
            return Outcome(Action.UNCHANGED, lease.run_id, verdict.reason_code)
        body = StatusBody(plan_hash=p_hash, reason_code=verdict.reason_code, detail=verdict.detail)
        entry = self.ledger.append(lease, step.keys, step.entries, ledger_kind(status), body, intent=step.intent)
        stored = lease.advance(
            status,
            reason_code=verdict.reason_code,
            plan_hash=p_hash,
            ledger_seq=entry.seq,
            ledger_head_hash=entry_hash(entry),
            next_check_at=next_check_at,
            publications=[self.publications.status_of(entry, step.intent)],
        )
        ctx.observer.run_transition(status.value)
        self.publications.publish_unpublished(stored)
        step.log.info("run %s", status.value, extra={"reason_code": verdict.reason_code})
        return Outcome(Action(status.value), lease.run_id, verdict.reason_code)

    def _next_check(self, step: StepState, status: RunStatus, wanted: datetime | None) -> datetime | None:
        """When the sweeper looks at a WAITING run again: ``wanted`` (or the re-check interval
        from now), never after the run's deadline."""
        if status is not RunStatus.WAITING:
            return None
        when = wanted if wanted is not None else self._ctx.clock() + self._ctx.recheck_interval
        deadline = step.intent.deadline
        return min(when, deadline) if deadline is not None else when
