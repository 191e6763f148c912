"""Operator tooling: authorization, replay of a partition slice, re-emit, index rebuild.

Every operator action is authorized against the configured allowlist (``SR_OPERATORS``;
empty means nobody — fail closed) and recorded in ``sr_operator_actions``, allowed or not,
with the database role of the session beside the self-declared operator name.
Re-emission never recomputes anything: control facts are rebuilt from the verified S3 ledger
with the same pure function that built them at commit time (:mod:`worker.core.events`), and
checked against the bytes stored in the outbox, so every re-emission is byte-identical.

Re-emission is ordered (contract §11): it reads the ledger and sends while holding the run's
lease — the lease every commit holds — and sends only the run's last word
(:func:`~worker.core.events.current_facts`), so a re-emit racing a SUPERSEDE can never put
READY(old) after READY(new), and a revoked READY is never re-sent as current.
"""

from __future__ import annotations

import getpass
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker.app.ports import OperatorAudit, Record, RunIndex
from worker.app.processor import RunProcessor
from worker.app.truth import TruthStore
from worker.core.events import admitted_intent, control_facts, current_facts, current_ready
from worker.core.identity import intent_fingerprint, run_equivalence_key, run_id_for, run_id_of
from worker.core.index import NewPublication, RunRow
from worker.core.ledger import LedgerEntry, LedgerKind, derive_state, entry_hash
from worker.core.ledger_bodies import recorded_plan_hash
from worker.core.models import ReadyEvent, RunStatus
from worker.errors import AuthorizationError, InputError, IntegrityError, LeaseBusyError, RunNotFoundError, SRError

log = logging.getLogger("sr.operators")

#: Seconds a re-emission waits for a run's lease (a worker holds it for one step at a time).
REEMIT_LEASE_WAIT = 10.0


def operator_name(explicit: str | None, environ: dict[str, str] | None = None) -> str:
    """Who is acting: ``--operator``, else ``SR_OPERATOR``, else the OS user."""
    if explicit:
        return explicit
    env = environ or {}
    return env.get("SR_OPERATOR") or getpass.getuser()


def authorize(index: OperatorAudit, operators: Sequence[str], operator: str, action: str,
              detail: dict[str, Any] | None = None) -> None:
    """Record the attempt and refuse operators outside the allowlist.

    Raises:
        AuthorizationError: ``operator`` is not in ``operators`` (the refusal is recorded first).
    """
    allowed = operator in set(operators)
    index.record_operator_action(operator, action, allowed=allowed, detail=detail)
    if not allowed:
        log.warning("operator refused", extra={"operator": operator, "action": action})
        hint = "" if operators else " (no operators are configured: set SR_OPERATORS)"
        raise AuthorizationError(f"operator {operator!r} is not authorized to {action}{hint}")
    log.info("operator authorized", extra={"operator": operator, "action": action, **(detail or {})})


# ----------------------------------------------------------------------------- replay
@dataclass
class ReplaySummary:
    """What a replay saw and did."""

    records: int = 0
    runs: int = 0
    reemitted: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    first_offset: int | None = None
    last_offset: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"records": self.records, "runs": self.runs, "reemitted": self.reemitted,
                "skipped": dict(self.skipped), "first_offset": self.first_offset, "last_offset": self.last_offset}


def run_id_in(record: Record, processor: RunProcessor) -> str:
    """The run a record is about (READY/status events name it; intents derive it).

    Raises:
        InputError: the record is not a decodable SR message.
    """
    codec = processor.codec
    record_name, datum = codec.decode(record.value or b"")
    if record_name.endswith("RunIntent"):
        return run_id_of(codec.decode_intent(record.value or b""))
    run_id = datum.get("run_id")
    if not isinstance(run_id, str):
        raise InputError(f"{record_name} carries no run_id")
    return run_id


def replay(
    records: Iterator[Record],
    *,
    processor: RunProcessor,
    index: RunIndex,
    truth: TruthStore,
    dry_run: bool,
    on_record: Callable[[Record], None] | None = None,
) -> ReplaySummary:
    """Re-emit the control facts of every run named in ``records``, rebuilt from the ledger.

    Nothing is re-verified; each fact is checked against the outbox bytes before sending.
    """
    summary = ReplaySummary()
    seen: set[str] = set()
    order: list[str] = []
    for record in records:
        summary.records += 1
        summary.first_offset = record.offset if summary.first_offset is None else summary.first_offset
        summary.last_offset = record.offset
        if on_record is not None:
            on_record(record)
        try:
            run_id = run_id_in(record, processor)
        except SRError:
            summary.skipped["undecodable record"] += 1
            continue
        if run_id not in seen:
            seen.add(run_id)
            order.append(run_id)
    summary.runs = len(order)
    for run_id in order:
        row = index.get(run_id)
        if row is None:
            summary.skipped["run not in the index"] += 1
            continue
        try:
            facts = reemit_under_lease(row, processor=processor, truth=truth, dry_run=dry_run, select=current_facts)
        except LeaseBusyError:
            summary.skipped["run stayed leased by a worker (replay it again)"] += 1
            continue
        if not facts:
            summary.skipped[f"no READY fact (status {row.status.value})"] += 1
            continue
        summary.reemitted += len(facts)
    return summary


def reemit_under_lease(row: RunRow, *, processor: RunProcessor, truth: TruthStore, dry_run: bool,
                       select: Callable[[Sequence[LedgerEntry]], list[ReadyEvent]],
                       wait: float = REEMIT_LEASE_WAIT) -> list[ReadyEvent]:
    """Read the run's ledger and send the facts ``select`` picks from it, all while holding
    the run's lease, so no commit can come between the read and the send. A dry run takes no
    lease (it sends nothing). Returns the facts sent (or, dry, that would be).

    Raises:
        LeaseBusyError: a worker held the lease for all of ``wait`` seconds.
        IntegrityError: the ledger and the outbox disagree (nothing more is sent).
        RetryableError: a server is unavailable.
    """
    def send() -> list[ReadyEvent]:
        entries = truth.read_ledger(truth.keys_for(row.tenant_id, row.namespace, row.run_id)) \
            if row.ledger_seq >= 0 else ()
        facts = select(entries)
        for event in facts:
            processor.send_fact(event, dry_run=dry_run)
        return facts

    if dry_run:
        return send()
    with processor.context.leases.acquire(row.run_id, wait=wait):
        return send()


def reemit_run(run_id: str, *, processor: RunProcessor, index: RunIndex, truth: TruthStore,
               dry_run: bool = False) -> str:
    """Re-emit the run's current READY, rebuilt from the ledger under the run's lease (see
    :func:`reemit_under_lease`); returns its facts_view_hash.

    Raises:
        RunNotFoundError: the run is not in the index.
        InputError: the run is not READY (a revoked READY is not re-sent).
        LeaseBusyError: a worker kept the run leased for :data:`REEMIT_LEASE_WAIT` seconds.
        IntegrityError: the ledger and the outbox disagree.
    """
    row = index.get(run_id)
    if row is None:
        raise RunNotFoundError(f"run {run_id} not found")

    def ready(entries: Sequence[LedgerEntry]) -> list[ReadyEvent]:
        event = current_ready(entries)
        return [] if event is None else [event]

    sent = reemit_under_lease(row, processor=processor, truth=truth, dry_run=dry_run, select=ready)
    if not sent:
        raise InputError(f"run {run_id} is {row.status.value}, not READY: nothing to re-emit")
    return sent[0].facts_view_hash


# ----------------------------------------------------------------------------- rebuild
@dataclass
class RebuildSummary:
    """What ``sr index rebuild`` restored."""

    runs: int = 0
    restored: Counter[str] = field(default_factory=Counter)
    publications: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"runs": self.runs, "restored": dict(self.restored), "publications": self.publications,
                "skipped": dict(self.skipped)}


def rebuild_index(
    *,
    truth: TruthStore,
    index: RunIndex,
    processor: RunProcessor,
    republish: bool = False,
    tenant: str | None = None,
    on_run: Callable[[str], None] | None = None,
) -> RebuildSummary:
    """Reconstruct the Postgres index (runs, equivalence, status, deadlines, publications) from S3.

    Each run's ledger is read and verified; its first entry holds the admitted intent, from
    which the identity is recomputed and checked against the run id. READY/SUPERSEDE facts
    become publication rows with the exact bytes to send; ``republish`` leaves them
    unpublished so the worker's outbox re-sends them (byte-identical, so harmless to
    idempotent consumers), otherwise they are recorded as already published. The request of
    an open engine attempt is restored the same way.
    """
    summary = RebuildSummary()
    now = datetime.now(UTC)
    for _tenant, _namespace, run_id in truth.list_runs(tenant):
        summary.runs += 1
        if on_run is not None:
            on_run(run_id)
        try:
            entries = truth.read_ledger(truth.keys_for(_tenant, _namespace, run_id))
        except IntegrityError as exc:
            log.warning("ledger failed verification; run not restored", extra={"run_id": run_id, "error": str(exc)})
            summary.skipped["ledger failed verification"] += 1
            continue
        if not entries:
            # Planned but never decided: the intent message (offset uncommitted) re-admits it.
            summary.skipped["no ledger entries yet"] += 1
            continue
        intent = admitted_intent(entries)
        equivalence_key = run_equivalence_key(intent)
        if run_id_for(equivalence_key) != run_id:
            summary.skipped["identity mismatch"] += 1
            continue
        state = derive_state(entries)
        plan_hash = state.plan_hash or recorded_plan_hash(entries)
        index.restore_run({
            "run_id": run_id,
            "run_equivalence_key": equivalence_key,
            "intent_fingerprint": intent_fingerprint(intent),
            "tenant_id": intent.tenant_id,
            "namespace": intent.namespace,
            "scenario_id": intent.scenario_id,
            "status": state.status.value,
            "reason_code": state.last_reason_code,
            "plan_hash": plan_hash,
            "facts_view_hash": state.facts_view_hash,
            "ledger_seq": entries[-1].seq,
            "ledger_head_hash": entry_hash(entries[-1]),
            "lease_epoch": max(e.lease_epoch for e in entries),
            "deadline": intent.deadline,
            "next_check_at": now if state.status is RunStatus.WAITING else None,
            "intent": intent.to_avro(),
            "evidence_root": intent.evidence_root,
        })
        summary.restored[state.status.value] += 1
        for event in control_facts(entries):
            pub: NewPublication = processor.fact_publication(event)
            index.restore_publication(pub, run_id=run_id, published=not republish)
            summary.publications += 1
        if state.open_attempt is not None:
            # The open attempt's request, so the outbox can re-send it byte-identically.
            opened = next(e for e in reversed(entries) if e.kind is LedgerKind.ENGINE_REQUESTED
                          and e.body.get("attempt_id") == state.open_attempt.attempt_id)
            index.restore_publication(processor.publications.request_of(opened, intent),
                                      run_id=run_id, published=not republish)
            summary.publications += 1
    return summary
