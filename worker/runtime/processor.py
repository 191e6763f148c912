"""The run step: admission, lease, plan, verification, ledger, index, publication.

This is DESIGN.md §3–§6 in code. One :class:`RunProcessor` is shared by the worker's
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
from worker.adapters.kafka import Record
from worker.adapters.postgres import Admission, AdmissionOutcome, NewPublication, NewRun, RunIndex, RunRow
from worker.core.evidence import Classification, ClassificationResult, GateResult, classify
from worker.core.facts import build_facts_view, facts_view_bytes, facts_view_hash
from worker.core.identity import intent_fingerprint, run_equivalence_key, run_id_for
from worker.core.keys import RunKeys, run_keys
from worker.core.ledger import LedgerEntry, LedgerKind, derive_state, entry_hash, next_entry
from worker.core.models import (
    EventType,
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
    PermanentError,
    RunNotFoundError,
)
from worker.logs import RunLogger, run_logger
from worker.runtime.crashpoints import INERT, CrashPoint, CrashPoints
from worker.runtime.lease import Lease, LeaseManager
from worker.runtime.publisher import IDEMPOTENCY_HEADER, Publisher
from worker.runtime.truth import AppendStatus, TruthStore
from worker.runtime.verifier import EvidenceVerifier


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
    ) -> None:
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
        if trigger.kind is TriggerKind.REEMIT:
            return self.reemit(trigger.run_id)
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
            log = run_logger("sr.run", **{**(log.extra or {}), "epoch": lease.epoch})
            row = self._index.get(run_id)
            if row is None:
                raise RunNotFoundError(f"run {run_id} is not in the index")
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
        status = derive_state(entries).status if entries else RunStatus.ADMITTED

        if status in _FINAL:
            self._republish_pending(row.run_id, log)
            if trigger is not None:
                entries = self._record_trigger(lease, keys, entries, trigger)
            return Outcome(Action.UNCHANGED, row.run_id, status.value)
        if trigger is not None:
            entries = self._record_trigger(lease, keys, entries, trigger)

        try:
            plan = self._plan_for(intent, row, keys)
        except EvidenceError as exc:
            # E.g. an output the policy does not know: the run cannot ever be planned.
            failed = ClassificationResult(classification=Classification.FAILED, reason_code=exc.code,
                                          detail=str(exc))
            return self._commit_status(lease=lease, intent=intent, p_hash=None, verdict=failed, keys=keys,
                                       entries=entries, current=status, log=log)
        p_hash = plan_hash(plan)
        results = self._verifier.verify_plan(plan)
        verdict = classify(results, deadline=intent.deadline, now=self._clock())
        if verdict.classification is Classification.COMPLETE:
            return self._commit_ready(lease=lease, intent=intent, plan=plan, p_hash=p_hash, results=results,
                                      keys=keys, entries=entries, log=log)
        return self._commit_status(lease=lease, intent=intent, p_hash=p_hash, verdict=verdict, keys=keys,
                                   entries=entries, current=status, log=log)

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
        event = ReadyEvent(
            event_type=EventType.READY,
            run_id=plan.run_id,
            facts_view_hash=fv_hash,
            facts_view_uri=facts_uri,
            supersedes_facts_view_hash=None,
            tenant_id=intent.tenant_id,
            namespace=intent.namespace,
            scenario_id=intent.scenario_id,
            pins=intent.pins,
            policy_rev=plan.policy_rev,
            plan_hash=p_hash,
            emitted_at=datetime_from_millis(entry.at_ms),
        )
        publication = NewPublication(
            pub_key=event.idempotency_key,
            kind="READY",
            facts_view_hash=fv_hash,
            event_type=EventType.READY.value,
            topic=self._topics.ready,
            msg_key=event.run_id.encode(),
            payload=self._codec.encode_ready(event, subject=f"{self._topics.ready}-value"),
            headers={IDEMPOTENCY_HEADER: event.idempotency_key},
        )
        stored = lease.advance(
            RunStatus.READY,
            plan_hash=p_hash,
            facts_view_hash=fv_hash,
            ledger_seq=entry.seq,
            ledger_head_hash=entry_hash(entry),
            publications=[publication],
        )
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
        self._publisher.publish([p for p in stored if p.published_at is None])
        log.info("run %s", status.value, extra={"reason_code": verdict.reason_code})
        return Outcome(Action(status.value), lease.run_id, verdict.reason_code)

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
            IntegrityError: someone else wrote a *different* decision at that seq (we were
                fenced or raced): never overwrite; the next re-drive re-evaluates.
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
        raise IntegrityError(
            f"ledger of run {lease.run_id} advanced concurrently at seq {entry.seq}; not overwriting"
        )

    def _record_trigger(self, lease: Lease, keys: RunKeys, entries: tuple[LedgerEntry, ...],
                        trigger: RunTrigger) -> tuple[LedgerEntry, ...]:
        entry = self._append(lease, keys, entries, LedgerKind.TRIGGER, {
            "kind": trigger.kind.value,
            "reason": trigger.reason,
            "requested_by": trigger.requested_by,
            "requested_at": millis(trigger.requested_at),
        })
        lease.touch_head(entry.seq, entry_hash(entry))
        return (*entries, entry)

    # ------------------------------------------------------------------ publications
    def _republish_pending(self, run_id: str, log: RunLogger) -> None:
        pending = self._index.pending_publications(run_id)
        if pending:
            log.info("re-sending %d unpublished publication(s)", len(pending))
            self._publisher.publish(pending)

    def reemit(self, run_id: str) -> Outcome:
        """Re-send the run's stored READY publication(s), byte-identical (no recompute).

        Raises:
            RunNotFoundError: unknown run.
        """
        row = self._index.get(run_id)
        if row is None:
            raise RunNotFoundError(f"run {run_id} is not in the index")
        pubs = [p for p in self._index.publications(run_id) if p.kind in ("READY", "SUPERSEDE")]
        self._publisher.publish(pubs)
        return Outcome(Action.REEMITTED, run_id, f"{len(pubs)} publication(s)")

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
        self._publisher.dead_letter(record, error or _RejectionError(reason_code, detail))
        log.warning("intent REJECTED", extra={"reason_code": reason_code})


class _RejectionError(PermanentError):
    """Carries a rejection reason code into the DLQ headers."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def _same_decision(existing: Mapping[str, Any], ours: Mapping[str, Any]) -> bool:
    """Two ledger bodies record the same fact when their identifying fields agree."""
    keys = ("plan_hash", "facts_view_hash", "reason_code", "kind", "requested_by", "requested_at")
    return all(existing.get(k) == ours.get(k) for k in keys)

