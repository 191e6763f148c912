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

from worker.app.context import RunContext
from worker.app.crashpoints import CrashPoint
from worker.app.ledger_writer import LedgerWriter
from worker.app.outcomes import Action, Outcome
from worker.app.ports import Lease
from worker.app.publications import Publications
from worker.core.canonical import sha256_hex
from worker.core.events import control_fact
from worker.core.evidence import Classification, ClassificationResult, GateResult, classify
from worker.core.facts import build_facts_view, facts_view_bytes
from worker.core.index import RunRow
from worker.core.keys import RunKeys
from worker.core.ledger import LedgerEntry, LedgerKind, derive_state, entry_hash
from worker.core.ledger_bodies import ReadyBody, StatusBody
from worker.core.models import RunIntent, RunStatus, RunStatusEvent, RunTrigger, datetime_from_millis
from worker.core.plan import Plan, build_plan, plan_bytes
from worker.core.statuses import FINAL_STATUSES, event_status, ledger_kind, run_status
from worker.errors import ConfigError, EvidenceError, LeaseBusyError, RunNotFoundError
from worker.logs import RunLogger, run_logger

__all__ = ["RunStep", "StepState", "TriggerHandler"]


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

    @property
    def run_id(self) -> str:
        """The run."""
        return self.row.run_id


#: Handles one trigger kind inside the run step, under the lease (see :mod:`worker.app.triggers`).
TriggerHandler = Callable[[RunTrigger, StepState], Outcome]


class RunStep:
    """Advances one run per call, under its lease."""

    def __init__(self, ctx: RunContext, *, ledger: LedgerWriter, publications: Publications) -> None:
        self._ctx = ctx
        self.ledger = ledger
        self.publications = publications
        #: Trigger kind → handler; filled by the processor from :mod:`worker.app.triggers`.
        #: Kinds without a handler (EVIDENCE_ARRIVED, REEVALUATE) run the normal step.
        self.control: dict[str, TriggerHandler] = {}

    # ------------------------------------------------------------------ entry
    def drive(self, run_id: str, *, fresh: bool, wait: float | None = None, trigger: RunTrigger | None = None,
              log: RunLogger | None = None, intent: RunIntent | None = None) -> Outcome:
        """Take the lease and advance the run one step.

        ``fresh`` means this process just inserted the index row, so no S3 state can exist
        yet and the ledger need not be listed. ``intent`` is the decoded intent when the
        caller has it (admission), so the row's copy need not be parsed again.

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
            return self._step(lease, row, fresh=fresh, trigger=trigger, log=log, intent=intent)

    def _step(self, lease: Lease, row: RunRow, *, fresh: bool, trigger: RunTrigger | None,
              log: RunLogger, intent: RunIntent | None) -> Outcome:
        if intent is None:
            intent = RunIntent.from_avro(row.intent)
        keys = self._ctx.truth.keys_for(intent.tenant_id, intent.namespace, row.run_id)
        if row.status in FINAL_STATUSES and trigger is None:
            # Nothing to decide again; finish any publication a crash left behind. The index
            # row was written after the ledger entry, so no S3 read is needed to know this.
            self.publications.republish_pending(row.run_id, log)
            return Outcome(Action.UNCHANGED, row.run_id, row.status.value)
        entries: tuple[LedgerEntry, ...] = () if fresh or row.ledger_seq < 0 else self._ctx.truth.read_ledger(keys)
        status = derive_state(entries).status if entries else RunStatus.ADMITTED
        step = StepState(lease, row, intent, keys, entries=entries, log=log)
        if trigger is not None:
            step.entries = self.ledger.record_trigger(lease, keys, entries, trigger, intent)
            handler = self.control.get(trigger.kind.value)
            if handler is not None:
                return handler(trigger, step)
        if status in FINAL_STATUSES:
            self.publications.republish_pending(row.run_id, log)
            return Outcome(Action.UNCHANGED, row.run_id, status.value)
        try:
            plan, p_hash = self._plan_for(step)
        except EvidenceError as exc:
            # E.g. an output the policy does not know: the run cannot ever be planned.
            failed = ClassificationResult(classification=Classification.FAILED, reason_code=exc.code,
                                          detail=str(exc))
            return self.commit_status(step, p_hash=None, verdict=failed, current=status)
        results = self.verify(plan)
        verdict = classify(results, deadline=intent.deadline, now=self._ctx.clock())
        if verdict.classification is Classification.COMPLETE:
            return self.commit_ready(step, plan=plan, p_hash=p_hash, results=results)
        return self.commit_status(step, p_hash=p_hash, verdict=verdict, current=status)

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
        """Facts view → READY entry → index row + publication → produce."""
        ctx = self._ctx
        view_bytes = facts_view_bytes(build_facts_view(plan, p_hash, results))
        fv_hash = sha256_hex(view_bytes)
        ctx.truth.write_facts_view(step.keys, view_bytes)
        ctx.crash.hit(CrashPoint.AFTER_FACTS_WRITE)
        body = ReadyBody(plan_hash=p_hash, facts_view_hash=fv_hash, facts_view_uri=self.facts_uri(step.keys, fv_hash),
                         policy_rev=plan.policy_rev)
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
                      current: RunStatus) -> Outcome:
        """A WAITING / FAILED / QUARANTINED verdict: a ledger entry and event on a transition,
        otherwise only the next re-check is scheduled."""
        ctx, lease = self._ctx, step.lease
        status = run_status(verdict.classification)
        next_check = ctx.clock() + ctx.recheck_interval if status is RunStatus.WAITING else None
        if status is current and step.entries:
            # No transition: no ledger entry, no event; only schedule the next re-check.
            head = step.entries[-1]
            lease.advance(status, ledger_seq=head.seq, ledger_head_hash=entry_hash(head),
                          plan_hash=p_hash, reason_code=verdict.reason_code, next_check_at=next_check)
            return Outcome(Action.UNCHANGED, lease.run_id, verdict.reason_code)
        body = StatusBody(plan_hash=p_hash, reason_code=verdict.reason_code, detail=verdict.detail)
        entry = self.ledger.append(lease, step.keys, step.entries, ledger_kind(status), body, intent=step.intent)
        intent = step.intent
        event = RunStatusEvent(
            run_id=lease.run_id,
            status=event_status(status),
            reason_code=verdict.reason_code,
            detail=verdict.detail,
            tenant_id=intent.tenant_id,
            namespace=intent.namespace,
            scenario_id=intent.scenario_id,
            emitted_at=datetime_from_millis(entry.at_ms),
        )
        stored = lease.advance(
            status,
            reason_code=verdict.reason_code,
            plan_hash=p_hash,
            ledger_seq=entry.seq,
            ledger_head_hash=entry_hash(entry),
            next_check_at=next_check,
            publications=[self.publications.status(event, ledger_seq=entry.seq)],
        )
        ctx.observer.run_transition(status.value)
        self.publications.publish_unpublished(stored)
        step.log.info("run %s", status.value, extra={"reason_code": verdict.reason_code})
        return Outcome(Action(status.value), lease.run_id, verdict.reason_code)
