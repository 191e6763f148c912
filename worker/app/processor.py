"""The run step: admission, lease, plan, verification, ledger, index, publication.

This is contract §3–§6 in code. One :class:`RunProcessor` is shared by the worker's
threads; every run step happens under the run's lease (advisory lock + fencing epoch), and
the commit order is:

    facts view (write-once) → ledger entry (write-once, hash-chained) → index row +
    publication rows (one epoch-checked statement) → produce → mark published

and only after that does the worker store the message's offset. A crash anywhere re-drives
from what is durable: write-once PUTs of deterministic bytes are idempotent, a lost race on
a ledger seq is re-read and adopted, and publication rows keep the exact bytes to re-send.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.adapters.avro import AvroCodec
from worker.adapters.postgres import RunIndex
from worker.adapters.postgres.leases import Lease, LeaseManager
from worker.app.crashpoints import INERT, CrashPoint, CrashPoints
from worker.app.ports import Record
from worker.app.publisher import IDEMPOTENCY_HEADER, Publisher
from worker.app.truth import AppendStatus, TruthStore
from worker.app.verifier import EvidenceVerifier
from worker.core.events import control_fact, current_ready
from worker.core.evidence import Classification, ClassificationResult, GateResult, classify
from worker.core.facts import build_facts_view, facts_view_bytes, facts_view_hash
from worker.core.identity import intent_fingerprint, run_equivalence_key, run_id_for
from worker.core.index import Admission, AdmissionOutcome, NewPublication, NewRun, RunRow
from worker.core.keys import RunKeys, run_keys
from worker.core.ledger import LedgerEntry, LedgerKind, derive_state, entry_hash, next_entry
from worker.core.models import (
    ReadyEvent,
    RunIntent,
    RunStatus,
    RunStatusEvent,
    RunTrigger,
    StatusEventStatus,
    TriggerKind,
    datetime_from_millis,
    millis,
)
from worker.core.plan import Plan, build_plan, plan_bytes, plan_hash
from worker.core.policy import Policy
from worker.errors import (
    EvidenceError,
    EvidenceRootForbiddenError,
    IntegrityError,
    LeaseBusyError,
    LedgerRaceError,
    PermanentError,
    RunNotFoundError,
    SRError,
)
from worker.logs import RunLogger, run_logger
from worker.runtime.observability import Metrics


class Action(enum.StrEnum):
    """What handling one message did (for logs, metrics and tests)."""

    READY = "READY"
    WAITING = "WAITING"
    FAILED = "FAILED"
    QUARANTINED = "QUARANTINED"
    REJECTED = "REJECTED"
    DUPLICATE = "DUPLICATE"
    BUSY = "BUSY"
    UNCHANGED = "UNCHANGED"
    REEMITTED = "REEMITTED"
    SUPERSEDED = "SUPERSEDED"


@dataclass(frozen=True)
class Outcome:
    """Result of handling one message."""

    action: Action
    run_id: str | None
    detail: str = ""


@dataclass(frozen=True)
class Topics:
    """Output topics the processor writes publications for."""

    ready: str
    status: str


_STATUS_OF: Mapping[Classification, RunStatus] = {
    Classification.WAITING: RunStatus.WAITING,
    Classification.FAILED: RunStatus.FAILED,
    Classification.QUARANTINED: RunStatus.QUARANTINED,
}
_KIND_OF: Mapping[RunStatus, LedgerKind] = {
    RunStatus.WAITING: LedgerKind.WAITING,
    RunStatus.FAILED: LedgerKind.FAILED,
    RunStatus.QUARANTINED: LedgerKind.QUARANTINED,
}
_FINAL = frozenset({RunStatus.READY, RunStatus.FAILED, RunStatus.QUARANTINED, RunStatus.REJECTED})


def utcnow() -> datetime:
    """The current time in UTC (the default clock)."""
    return datetime.now(UTC)


class RunProcessor:
    """Turns intents and triggers into durable run state and publications."""

    def __init__(
        self,
        *,
        policy: Policy,
        codec: AvroCodec,
        index: RunIndex,
        leases: LeaseManager,
        truth: TruthStore,
        verifier: EvidenceVerifier,
        publisher: Publisher,
        topics: Topics,
        s3_bucket: str,
        s3_prefix: str,
        tenant_prefixes: Mapping[str, Sequence[str]] | None = None,
        recheck_interval: float = 30.0,
        lease_wait: float = 0.0,
        clock: Callable[[], datetime] = utcnow,
        crash_points: CrashPoints = INERT,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._crash = crash_points
        self._policy = policy
        self._codec = codec
        self._index = index
        self._leases = leases
        self._truth = truth
        self._verifier = verifier
        self._publisher = publisher
        self._topics = topics
        self._bucket = s3_bucket
        self._prefix = s3_prefix
        self._tenant_prefixes = tenant_prefixes
        self._recheck = timedelta(seconds=recheck_interval)
        self._lease_wait = lease_wait
        self._clock = clock

    @property
    def codec(self) -> AvroCodec:
        """The Avro codec this processor encodes and decodes with."""
        return self._codec

    # ------------------------------------------------------------------ entry points
    def handle_intent(self, record: Record) -> Outcome:
        """Admit one intent message and drive its run as far as the evidence allows.

        Raises:
            InputError: the message is not a valid intent (the caller dead-letters it).
            RetryableError: a server is unavailable (the caller retries; offset not stored).
        """
        intent = self._codec.decode_intent(record.value or b"")
        equivalence_key = run_equivalence_key(intent)
        run_id = run_id_for(equivalence_key)
        log = run_logger("sr.run", run_id=run_id, tenant_id=intent.tenant_id)
        try:
            self._verifier.check_evidence_root(
                intent.evidence_root, intent.tenant_id, default_bucket=self._bucket,
                tenant_prefixes=self._tenant_prefixes,
            )
        except EvidenceRootForbiddenError as exc:
            # Rejected before any evidence read and before a run exists.
            self._reject(record=record, intent=intent, run_id=run_id, reason_code=exc.code, detail=str(exc),
                         error=exc, log=log)
            return Outcome(Action.REJECTED, run_id, exc.code)
        admission = self._index.admit(NewRun(
            run_id=run_id,
            run_equivalence_key=equivalence_key,
            intent_fingerprint=intent_fingerprint(intent),
            tenant_id=intent.tenant_id,
            namespace=intent.namespace,
            scenario_id=intent.scenario_id,
            intent=intent.to_avro(),
            evidence_root=intent.evidence_root,
            deadline=intent.deadline,
        ))
        if admission.outcome is AdmissionOutcome.COLLISION:
            detail = (f"run {run_id} exists with a different intent fingerprint; "
                      "the existing run is left untouched")
            self._reject(record=record, intent=intent, run_id=run_id, reason_code="EQUIV_KEY_COLLISION",
                         detail=detail, error=None, log=log)
            return Outcome(Action.REJECTED, run_id, "EQUIV_KEY_COLLISION")
        if admission.outcome is AdmissionOutcome.DUPLICATE:
            return self._on_duplicate(admission, log)
        log.info("run admitted")
        return self.drive(run_id, fresh=True, log=log)

    def handle_trigger(self, record: Record) -> Outcome:
        """Apply one trigger message (EVIDENCE_ARRIVED / REEVALUATE / REEMIT).

        Raises:
            InputError: not a valid trigger, or it names an unknown run.
            RetryableError: a server is unavailable.
        """
        trigger = self._codec.decode_trigger(record.value or b"")
        log = run_logger("sr.run", run_id=trigger.run_id, trigger=trigger.kind.value,
                         requested_by=trigger.requested_by)
        return self.drive(trigger.run_id, fresh=False, wait=max(self._lease_wait, 5.0), trigger=trigger, log=log)

    # ------------------------------------------------------------------ the run step
    def drive(
        self,
        run_id: str,
        *,
        fresh: bool,
        wait: float | None = None,
        trigger: RunTrigger | None = None,
        log: RunLogger | None = None,
    ) -> Outcome:
        """Take the lease and advance the run one step.

        ``fresh`` means this process just inserted the index row, so no S3 state can exist
        yet and the ledger need not be listed.

        Raises:
            RunNotFoundError: ``run_id`` is not in the index.
            RetryableError: a server is unavailable.
        """
        log = log or run_logger("sr.run", run_id=run_id)
        try:
            lease = self._leases.acquire(run_id, wait=self._lease_wait if wait is None else wait)
        except LeaseBusyError:
            log.info("run is leased by another worker; leaving it to the holder")
            return Outcome(Action.BUSY, run_id)
        with lease:
            row = lease.row or self._index.get(run_id)
            if row is None:
                raise RunNotFoundError(f"run {run_id} is not in the index")
            # Every line about this step carries the run, its tenant and the fencing epoch.
            log = run_logger("sr.run", **{**(log.extra or {}), "tenant_id": row.tenant_id, "epoch": lease.epoch})
            return self._step(lease, row, fresh=fresh, trigger=trigger, log=log)

    def _step(self, lease: Lease, row: RunRow, *, fresh: bool, trigger: RunTrigger | None,
              log: RunLogger) -> Outcome:
        intent = RunIntent.from_avro(row.intent)
        keys = run_keys(self._prefix, intent.tenant_id, intent.namespace, row.run_id)
        if row.status in _FINAL and trigger is None:
            # Nothing to decide again; finish any publication a crash left behind. The index
            # row was written after the ledger entry, so no S3 read is needed to know this.
            self._republish_pending(row.run_id, log)
            return Outcome(Action.UNCHANGED, row.run_id, row.status.value)
        entries: tuple[LedgerEntry, ...] = () if fresh or row.ledger_seq < 0 else self._truth.read_ledger(keys)
        state = derive_state(entries) if entries else None
        status = state.status if state is not None else RunStatus.ADMITTED

        if trigger is not None:
            entries = self._record_trigger(lease, keys, entries, trigger, intent)
            if trigger.kind in (TriggerKind.REEMIT, TriggerKind.SUPERSEDE):
                return self._control_trigger(trigger, lease=lease, row=row, intent=intent, keys=keys,
                                             entries=entries, log=log)
        if status in _FINAL:
            self._republish_pending(row.run_id, log)
            return Outcome(Action.UNCHANGED, row.run_id, status.value)

        try:
            plan = self._plan_for(intent, row, keys)
        except EvidenceError as exc:
            # E.g. an output the policy does not know: the run cannot ever be planned.
            failed = ClassificationResult(classification=Classification.FAILED, reason_code=exc.code,
                                          detail=str(exc))
            return self._commit_status(lease=lease, intent=intent, p_hash=None, verdict=failed, keys=keys,
                                       entries=entries, current=status, log=log)
        p_hash = plan_hash(plan)
        results = self._verify(plan)
        verdict = classify(results, deadline=intent.deadline, now=self._clock())
        if verdict.classification is Classification.COMPLETE:
            return self._commit_ready(lease=lease, intent=intent, plan=plan, p_hash=p_hash, results=results,
                                      keys=keys, entries=entries, log=log)
        return self._commit_status(lease=lease, intent=intent, p_hash=p_hash, verdict=verdict, keys=keys,
                                   entries=entries, current=status, log=log)

    def _verify(self, plan: Plan) -> list[GateResult]:
        results = self._verifier.verify_plan(plan)
        if self._metrics is not None:
            self._metrics.evidence_bytes(sum(r.byte_count for r in results))
        return results

    def _transition(self, status: str) -> None:
        if self._metrics is not None:
            self._metrics.run_transition(status)

    def _plan_for(self, intent: RunIntent, row: RunRow, keys: RunKeys) -> Plan:
        """The run's plan: built once, written once; later steps use the stored one."""
        try:
            plan = build_plan(intent, self._policy, run_id=row.run_id)
        except EvidenceError:
            if row.plan_hash is None:
                raise
            return self._truth.read_plan(keys, row.plan_hash)
        p_hash = plan_hash(plan)
        if row.plan_hash is None:
            self._truth.write_plan(keys, plan_bytes(plan))
            self._crash.hit(CrashPoint.AFTER_PLAN_WRITE)
        elif row.plan_hash != p_hash:
            # The policy changed since admission: the run keeps the plan it was admitted with.
            plan = self._truth.read_plan(keys, row.plan_hash)
        return plan

    def _commit_ready(
        self,
        *,
        lease: Lease,
        intent: RunIntent,
        plan: Plan,
        p_hash: str,
        results: Sequence[GateResult],
        keys: RunKeys,
        entries: tuple[LedgerEntry, ...],
        log: RunLogger,
    ) -> Outcome:
        view = build_facts_view(plan, p_hash, results)
        view_bytes = facts_view_bytes(view)
        fv_hash = facts_view_hash(view)
        self._truth.write_facts_view(keys, view_bytes)
        self._crash.hit(CrashPoint.AFTER_FACTS_WRITE)
        facts_uri = f"s3://{self._bucket}/{keys.facts(fv_hash)}"
        entry = self._append(lease, keys, entries, LedgerKind.READY, {
            "plan_hash": p_hash,
            "facts_view_hash": fv_hash,
            "facts_view_uri": facts_uri,
            "policy_rev": plan.policy_rev,
        }, intent=intent)
        self._crash.hit(CrashPoint.AFTER_LEDGER_READY)
        event = control_fact(entry, intent)
        stored = lease.advance(
            RunStatus.READY,
            plan_hash=p_hash,
            facts_view_hash=fv_hash,
            ledger_seq=entry.seq,
            ledger_head_hash=entry_hash(entry),
            publications=[self.fact_publication(event)],
        )
        self._transition("READY")
        self._publisher.publish([p for p in stored if p.published_at is None])
        log.info("run READY", extra={"facts_view_hash": fv_hash})
        return Outcome(Action.READY, event.run_id, fv_hash)

    def _commit_status(
        self,
        *,
        lease: Lease,
        intent: RunIntent,
        p_hash: str | None,
        verdict: ClassificationResult,
        keys: RunKeys,
        entries: tuple[LedgerEntry, ...],
        current: RunStatus,
        log: RunLogger,
    ) -> Outcome:
        status = _STATUS_OF[verdict.classification]
        next_check = self._clock() + self._recheck if status is RunStatus.WAITING else None
        if status is current and entries:
            # No transition: no ledger entry, no event; only schedule the next re-check.
            lease.advance(status, ledger_seq=entries[-1].seq, ledger_head_hash=entry_hash(entries[-1]),
                          plan_hash=p_hash, reason_code=verdict.reason_code, next_check_at=next_check)
            return Outcome(Action.UNCHANGED, lease.run_id, verdict.reason_code)
        entry = self._append(lease, keys, entries, _KIND_OF[status], {
            "plan_hash": p_hash,
            "reason_code": verdict.reason_code,
            "detail": verdict.detail,
        }, intent=intent)
        event = RunStatusEvent(
            run_id=lease.run_id,
            status=StatusEventStatus(status.value),
            reason_code=verdict.reason_code,
            detail=verdict.detail,
            tenant_id=intent.tenant_id,
            namespace=intent.namespace,
            scenario_id=intent.scenario_id,
            emitted_at=datetime_from_millis(entry.at_ms),
        )
        publication = NewPublication(
            pub_key=f"{lease.run_id}:status:{entry.seq}:{status.value}",
            kind="STATUS",
            facts_view_hash=None,
            event_type=None,
            topic=self._topics.status,
            msg_key=lease.run_id.encode(),
            payload=self._codec.encode_status(event, subject=f"{self._topics.status}-value"),
            headers={IDEMPOTENCY_HEADER: f"{lease.run_id}:status:{entry.seq}:{status.value}"},
        )
        stored = lease.advance(
            status,
            reason_code=verdict.reason_code,
            plan_hash=p_hash,
            ledger_seq=entry.seq,
            ledger_head_hash=entry_hash(entry),
            next_check_at=next_check,
            publications=[publication],
        )
        self._transition(status.value)
        self._publisher.publish([p for p in stored if p.published_at is None])
        log.info("run %s", status.value, extra={"reason_code": verdict.reason_code})
        return Outcome(Action(status.value), lease.run_id, verdict.reason_code)

    def _control_trigger(self, trigger: RunTrigger, *, lease: Lease, row: RunRow, intent: RunIntent,
                         keys: RunKeys, entries: tuple[LedgerEntry, ...], log: RunLogger) -> Outcome:
        """REEMIT and SUPERSEDE act on the committed facts, not on the evidence status."""
        if trigger.kind is TriggerKind.REEMIT:
            return self._reemit_current(row.run_id, entries, log)
        return self._supersede(lease=lease, row=row, intent=intent, keys=keys, entries=entries, log=log)

    def _supersede(
        self,
        *,
        lease: Lease,
        row: RunRow,
        intent: RunIntent,
        keys: RunKeys,
        entries: tuple[LedgerEntry, ...],
        log: RunLogger,
    ) -> Outcome:
        """Re-verify a READY run; if the facts changed, commit SUPERSEDE(old→new) then READY(new).

        Nothing old is modified: the previous plan, facts view and ledger entries stay as they
        are. A correction that does not verify completely leaves the current READY in force.
        """
        state = derive_state(entries)
        if state.status is not RunStatus.READY or state.facts_view_hash is None or state.plan_hash is None:
            return Outcome(Action.UNCHANGED, row.run_id, f"SUPERSEDE ignored: run is {state.status.value}")
        old = state.facts_view_hash
        plan = self._truth.read_plan(keys, state.plan_hash)
        p_hash = state.plan_hash
        facts_uri: str
        if state.pending_supersede is not None:
            # A crash came between SUPERSEDED and READY(new): finish what was decided.
            new = state.pending_supersede[1]
            sup_entry = next(e for e in reversed(entries) if e.kind is LedgerKind.SUPERSEDED)
            facts_uri = str(sup_entry.body["facts_view_uri"])
        else:
            results = self._verify(plan)
            verdict = classify(results, deadline=None, now=self._clock())
            if verdict.classification is not Classification.COMPLETE:
                log.warning("supersede requested but the corrected evidence does not verify",
                            extra={"reason_code": verdict.reason_code})
                return Outcome(Action.UNCHANGED, row.run_id, f"SUPERSEDE_NOT_VERIFIED:{verdict.reason_code}")
            current = self._truth.read_facts_view(keys, old)
            view = build_facts_view(plan, p_hash, results, supersedes=old)
            if view.receipts == current.receipts:
                return Outcome(Action.UNCHANGED, row.run_id, "facts unchanged")
            new = facts_view_hash(view)
            self._truth.write_facts_view(keys, facts_view_bytes(view))
            facts_uri = f"s3://{self._bucket}/{keys.facts(new)}"
            sup_entry = self._append(lease, keys, entries, LedgerKind.SUPERSEDED, {
                "old_facts_view_hash": old,
                "new_facts_view_hash": new,
                "facts_view_uri": facts_uri,
                "plan_hash": p_hash,
                "policy_rev": plan.policy_rev,
            })
            entries = (*entries, sup_entry)
        ready_entry = self._append(lease, keys, entries, LedgerKind.READY, {
            "plan_hash": p_hash,
            "facts_view_hash": new,
            "facts_view_uri": facts_uri,
            "policy_rev": plan.policy_rev,
            "supersedes_facts_view_hash": old,
        })
        facts = [control_fact(sup_entry, intent), control_fact(ready_entry, intent)]
        wanted = [self.fact_publication(event) for event in facts]
        stored = lease.advance(
            RunStatus.READY,
            plan_hash=p_hash,
            facts_view_hash=new,
            ledger_seq=ready_entry.seq,
            ledger_head_hash=entry_hash(ready_entry),
            publications=wanted,
        )
        # SUPERSEDE(old→new) strictly before READY(new): same key, same partition, in order.
        order = {pub.pub_key: i for i, pub in enumerate(wanted)}
        pending = sorted((p for p in stored if p.published_at is None), key=lambda p: order.get(p.pub_key, 99))
        self._publisher.publish(pending)
        log.info("run SUPERSEDED", extra={"old_facts_view_hash": old, "facts_view_hash": new})
        return Outcome(Action.SUPERSEDED, row.run_id, new)

    def fact_publication(self, event: ReadyEvent) -> NewPublication:
        """The outbox row for a READY/SUPERSEDE control fact (exact bytes to send)."""
        return NewPublication.ready(
            event.run_id, event.facts_view_hash, event.event_type.value,
            topic=self._topics.ready,
            payload=self._codec.encode_ready(event, subject=f"{self._topics.ready}-value"),
            msg_key=event.run_id.encode(),
            headers={IDEMPOTENCY_HEADER: event.idempotency_key},
        )

    def _reemit_current(self, run_id: str, entries: Sequence[LedgerEntry], log: RunLogger) -> Outcome:
        """Re-send the current READY, rebuilt from the verified ledger (no re-verification)."""
        event = current_ready(entries)
        if event is None:
            return Outcome(Action.UNCHANGED, run_id, "REEMIT ignored: run is not READY")
        self.send_fact(event)
        log.info("READY re-emitted", extra={"facts_view_hash": event.facts_view_hash})
        return Outcome(Action.REEMITTED, run_id, event.facts_view_hash)

    def send_fact(self, event: ReadyEvent, *, dry_run: bool = False) -> bool:
        """Produce a control fact rebuilt from the ledger, checked against the stored outbox row.

        Returns True if it was (or, with ``dry_run``, would be) sent.

        Raises:
            IntegrityError: the index holds different bytes for this fact than the ledger
                implies (fail closed: nothing is sent).
        """
        wanted = self.fact_publication(event)
        stored = self._index.publication(wanted.pub_key)
        if stored is not None and stored.payload != wanted.payload:
            raise IntegrityError(f"stored publication {wanted.pub_key} differs from the ledger; not re-emitting")
        if dry_run:
            return True
        if stored is not None:
            self._publisher.publish([stored])
        else:
            self._publisher.send_raw(wanted.topic, key=wanted.msg_key, payload=wanted.payload,
                                     headers=dict(wanted.headers))
        return True

    # ------------------------------------------------------------------ ledger
    def _append(
        self,
        lease: Lease,
        keys: RunKeys,
        entries: tuple[LedgerEntry, ...],
        kind: LedgerKind,
        body: dict[str, Any],
        *,
        intent: RunIntent | None = None,
    ) -> LedgerEntry:
        """Append one entry; on a lost seq race, re-read and adopt an identical decision.

        The first entry of a run also records the admitted intent, so S3 alone is enough to
        rebuild the index (``sr index rebuild``) or export a runpack.

        Raises:
            LedgerRaceError: someone else wrote a *different* decision at that seq (we were
                fenced or raced): never overwrite; handling the message again re-evaluates.
        """
        previous = entries[-1] if entries else None
        if previous is None and intent is not None:
            body = {**body, "intent": intent.to_avro()}
        entry = next_entry(lease.run_id, previous, kind=kind, at_ms=millis(self._clock()),
                           lease_epoch=lease.epoch, body=body)
        result = self._truth.append(keys, entry)
        if result.status is not AppendStatus.CONFLICT:
            return entry
        # Another writer (a crashed earlier attempt of ours, or a fenced holder) got there
        # first. Re-read the verified ledger and adopt its entry if it records the same fact.
        current = self._truth.read_ledger(keys)
        for existing in current[len(entries):]:
            if existing.kind is kind and _same_decision(existing.body, body):
                return existing
        raise LedgerRaceError(
            f"ledger of run {lease.run_id} advanced concurrently at seq {entry.seq}; not overwriting"
        )

    def _record_trigger(self, lease: Lease, keys: RunKeys, entries: tuple[LedgerEntry, ...],
                        trigger: RunTrigger, intent: RunIntent) -> tuple[LedgerEntry, ...]:
        """Record the trigger (with ``requested_by``) in the ledger, once per trigger."""
        body: dict[str, Any] = {
            "kind": trigger.kind.value,
            "reason": trigger.reason,
            "requested_by": trigger.requested_by,
            "requested_at": millis(trigger.requested_at),
        }
        if any(e.kind is LedgerKind.TRIGGER and _same_decision(e.body, body) for e in entries):
            return entries  # a re-delivered trigger message is already on record
        entry = self._append(lease, keys, entries, LedgerKind.TRIGGER, body, intent=intent)
        lease.touch_head(entry.seq, entry_hash(entry))
        return (*entries, entry)

    # ------------------------------------------------------------------ publications
    def _republish_pending(self, run_id: str, log: RunLogger) -> None:
        pending = self._index.pending_publications(run_id)
        if pending:
            log.info("re-sending %d unpublished publication(s)", len(pending))
            self._publisher.publish(pending)

    def sweep(self, *, limit: int = 100, stale_admitted_after: float = 120.0) -> list[Outcome]:
        """Re-check due WAITING runs (deadlines included) and abandoned ADMITTED runs.

        Safe with many workers: each run is driven under its lease; a busy run is skipped
        (its holder is working on it).
        """
        now = self._clock()
        due = self._index.due_for_check(now, limit, stale_before=now - timedelta(seconds=stale_admitted_after))
        outcomes: list[Outcome] = []
        for row in due:
            log = run_logger("sr.run", run_id=row.run_id, tenant_id=row.tenant_id, cause="sweep")
            outcomes.append(self.drive(row.run_id, fresh=False, wait=0.0, log=log))
        return outcomes

    def flush_outbox(self, limit: int = 1000) -> int:
        """Publish every publication a crash left unpublished; returns how many were sent."""
        pending = self._index.unpublished(limit)
        if pending:
            self._publisher.publish(pending)
        return len(pending)

    def dead_letter(self, record: Record, error: BaseException) -> None:
        """Copy a poison ``record`` to the DLQ with error headers (waits for the ack).

        Raises:
            KafkaUnavailableError: not acknowledged; the offset must not be committed.
        """
        self._publisher.dead_letter(record, error)
        if self._metrics is not None:
            self._metrics.dead_lettered(error.code if isinstance(error, SRError) else "INTERNAL")

    # ------------------------------------------------------------------ rejections
    def _on_duplicate(self, admission: Admission, log: RunLogger) -> Outcome:
        row = admission.row
        if RunStatus(row.status) is RunStatus.ADMITTED:
            # The first delivery may have died mid-step: re-drive if nobody holds the lease.
            return self.drive(row.run_id, fresh=False, wait=0.0, log=log)
        return Outcome(Action.DUPLICATE, row.run_id, row.status)

    def _reject(
        self,
        *,
        record: Record,
        intent: RunIntent,
        run_id: str,
        reason_code: str,
        detail: str,
        error: BaseException | None,
        log: RunLogger,
    ) -> None:
        """REJECTED status event + DLQ copy of the message; no run state is touched."""
        event = RunStatusEvent(
            run_id=run_id,
            status=StatusEventStatus.REJECTED,
            reason_code=reason_code,
            detail=detail,
            tenant_id=intent.tenant_id,
            namespace=intent.namespace,
            scenario_id=intent.scenario_id,
            emitted_at=self._clock(),
        )
        self._publisher.send_status(self._topics.status, run_id,
                                    self._codec.encode_status(event, subject=f"{self._topics.status}-value"))
        self.dead_letter(record, error or _RejectionError(reason_code, detail))
        self._transition("REJECTED")
        log.warning("intent REJECTED", extra={"reason_code": reason_code})


class _RejectionError(PermanentError):
    """Carries a rejection reason code into the DLQ headers."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def _same_decision(existing: Mapping[str, Any], ours: Mapping[str, Any]) -> bool:
    """Two ledger bodies record the same fact when their identifying fields agree."""
    keys = ("plan_hash", "facts_view_hash", "reason_code", "kind", "requested_by", "requested_at",
            "old_facts_view_hash", "new_facts_view_hash")
    return all(existing.get(k) == ours.get(k) for k in keys)

