"""The messages a verified ledger implies — control facts (READY / SUPERSEDE / REVOKED), status events
and engine requests — pure, no I/O.

The same function builds a message when it is committed and when it is sent again (``sr
replay``, ``sr reemit``, the REEMIT trigger, ``sr index rebuild``, a run step catching the
index up after a crash): every field comes from the ledger entry and the admitted intent and
every time from the entry's commit time, so every re-send encodes to the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

from worker.core.engine import EngineRequest
from worker.core.ledger import LedgerEntry, LedgerKind, derive_state
from worker.core.ledger_bodies import (
    EngineRequestedBody,
    ReadyBody,
    RevokedBody,
    StatusBody,
    SupersededBody,
    parse_body,
)
from worker.core.models import (
    EventType,
    ReadyEvent,
    RunIntent,
    RunStatus,
    RunStatusEvent,
    StatusEventStatus,
    datetime_from_millis,
)
from worker.errors import IntegrityError

#: Ledger kinds that record a status transition announced on the status topic (REVOKED
#: announces QUARANTINED ``EVIDENCE_CONTRADICTS_READY`` beside its REVOKED fact, contract §11).
STATUS_KINDS = frozenset({LedgerKind.WAITING, LedgerKind.FAILED, LedgerKind.QUARANTINED, LedgerKind.REVOKED})
#: Ledger kinds that record a control fact on ``sr.ready``.
FACT_KINDS = frozenset({LedgerKind.READY, LedgerKind.SUPERSEDED, LedgerKind.REVOKED})


def admitted_intent(entries: Sequence[LedgerEntry]) -> RunIntent:
    """The intent recorded in the run's first ledger entry.

    Raises:
        IntegrityError: the ledger is empty or its first entry carries no valid intent.
    """
    if not entries:
        raise IntegrityError("empty ledger: no admitted intent")
    raw = entries[0].body.get("intent")
    if not isinstance(raw, dict):
        raise IntegrityError(f"ledger of run {entries[0].run_id} has no intent in its first entry")
    try:
        return RunIntent.from_avro(raw)
    except Exception as exc:  # any validation failure means the stored truth is not usable
        raise IntegrityError(f"ledger of run {entries[0].run_id} holds an invalid intent: {exc}") from exc


def control_fact(entry: LedgerEntry, intent: RunIntent) -> ReadyEvent:
    """The READY, SUPERSEDE or REVOKED event recorded by one ledger entry.

    Raises:
        IntegrityError: the entry is not a READY/SUPERSEDED/REVOKED entry or lacks required fields.
    """
    if entry.kind not in FACT_KINDS:
        raise IntegrityError(f"ledger seq {entry.seq} ({entry.kind.value}) is not a control fact")
    body = parse_body(entry)
    # READY records the fact it commits; SUPERSEDED records the old→new pair it announces;
    # REVOKED names the fact it withdraws.
    if isinstance(body, ReadyBody):
        event_type, fact, supersedes = EventType.READY, body.facts_view_hash, body.supersedes_facts_view_hash
    elif isinstance(body, SupersededBody):
        event_type, fact, supersedes = EventType.SUPERSEDE, body.new_facts_view_hash, body.old_facts_view_hash
    elif isinstance(body, RevokedBody):
        event_type, fact, supersedes = EventType.REVOKED, body.facts_view_hash, None
    else:  # parse_body maps the fact kinds to exactly these three
        raise IntegrityError(f"ledger seq {entry.seq} ({entry.kind.value}) is not a control fact")
    try:
        return ReadyEvent(
            event_type=event_type,
            run_id=entry.run_id,
            facts_view_hash=fact,
            facts_view_uri=body.facts_view_uri,
            supersedes_facts_view_hash=supersedes,
            tenant_id=intent.tenant_id,
            namespace=intent.namespace,
            scenario_id=intent.scenario_id,
            pins=intent.pins,
            policy_rev=body.policy_rev,
            plan_hash=body.plan_hash,
            emitted_at=datetime_from_millis(entry.at_ms),
        )
    except ValueError as exc:
        raise IntegrityError(f"ledger seq {entry.seq} of run {entry.run_id} cannot be rebuilt as an event: "
                             f"{exc}") from exc



def control_facts(entries: Sequence[LedgerEntry]) -> list[ReadyEvent]:
    """Every control fact of a verified ledger, in ledger order (fenced writers' entries skipped)."""
    if not entries:
        return []
    intent = admitted_intent(entries)
    fenced = set(derive_state(entries).fenced_seqs)
    seen: set[str] = set()
    facts: list[ReadyEvent] = []
    for entry in entries:
        if entry.seq in fenced or entry.kind not in FACT_KINDS:
            continue
        event = control_fact(entry, intent)
        if event.idempotency_key in seen:
            continue  # the first record of a fact is the fact; a repeat adds nothing
        seen.add(event.idempotency_key)
        facts.append(event)
    return facts


def current_ready(entries: Sequence[LedgerEntry]) -> ReadyEvent | None:
    """The READY event of the run's current facts view, or None if the run is not READY."""
    state = derive_state(entries) if entries else None
    if state is None or state.status is not RunStatus.READY or state.facts_view_hash is None:
        return None
    for event in reversed(control_facts(entries)):
        if event.event_type is EventType.READY and event.facts_view_hash == state.facts_view_hash:
            return event
    return None


def current_facts(entries: Sequence[LedgerEntry]) -> list[ReadyEvent]:
    """What a re-emission sends for a run: its last word on ``sr.ready``, never an older fact.

    A READY run: its current READY, preceded by the SUPERSEDE that announced it when it came
    from a supersede. A run whose last facts view was revoked: that REVOKED fact (downstream
    must stop reading it). Any other run: nothing. Re-sending only these (in this order) is
    what keeps a re-emission from putting READY(old) after READY(new) (contract §11).
    """
    state = derive_state(entries) if entries else None
    if state is None or state.facts_view_hash is None:
        return []
    fv, facts = state.facts_view_hash, control_facts(entries)
    if state.status is RunStatus.READY:
        wanted = [EventType.SUPERSEDE, EventType.READY]
    elif state.revoked and state.revoked[-1] == fv:
        wanted = [EventType.REVOKED]
    else:
        return []
    # The first record of each fact (control_facts keeps one per idempotency key), in order.
    return [event for kind in wanted for event in facts if event.event_type is kind and event.facts_view_hash == fv]


def status_event(entry: LedgerEntry, intent: RunIntent) -> RunStatusEvent:
    """The status event announcing the WAITING / FAILED / QUARANTINED transition ``entry``
    records (a REVOKED entry announces QUARANTINED with its reason code).

    Raises:
        IntegrityError: the entry is not a status transition or its body does not fit.
    """
    body = parse_body(entry) if entry.kind in STATUS_KINDS else None
    if not isinstance(body, StatusBody | RevokedBody):
        raise IntegrityError(f"ledger seq {entry.seq} ({entry.kind.value}) is not a status transition")
    status = StatusEventStatus.QUARANTINED if isinstance(body, RevokedBody) else StatusEventStatus(entry.kind.value)
    return RunStatusEvent(
        run_id=entry.run_id,
        status=status,
        reason_code=body.reason_code,
        detail=body.detail,
        tenant_id=intent.tenant_id,
        namespace=intent.namespace,
        scenario_id=intent.scenario_id,
        emitted_at=datetime_from_millis(entry.at_ms),
    )


def engine_request(entry: LedgerEntry, intent: RunIntent) -> EngineRequest:
    """The engine request an ENGINE_REQUESTED entry records (contract §8): the engine writes
    ``intent.output_ids`` under ``intent.evidence_root``; ``requested_at`` is the entry's time.

    Raises:
        IntegrityError: the entry is not an ENGINE_REQUESTED entry or does not fit the request.
    """
    body = parse_body(entry) if entry.kind is LedgerKind.ENGINE_REQUESTED else None
    if not isinstance(body, EngineRequestedBody):
        raise IntegrityError(f"ledger seq {entry.seq} ({entry.kind.value}) is not an engine request")
    try:
        return EngineRequest(
            attempt_id=body.attempt_id,
            attempt_no=body.attempt_no,
            run_id=entry.run_id,
            tenant_id=intent.tenant_id,
            namespace=intent.namespace,
            scenario_id=intent.scenario_id,
            pins=intent.pins,
            window_start=intent.window_start,
            window_end=intent.window_end,
            output_ids=intent.output_ids,
            evidence_root=intent.evidence_root,
            plan_hash=body.plan_hash,
            policy_rev=body.policy_rev,
            requested_at=datetime_from_millis(entry.at_ms),
            attempt_deadline=datetime_from_millis(body.attempt_deadline),
        )
    except ValidationError as exc:
        raise IntegrityError(f"ledger seq {entry.seq} of run {entry.run_id}: not a valid engine request: "
                             f"{exc.errors()[0]['msg']}") from exc
