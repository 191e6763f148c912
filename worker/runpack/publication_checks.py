"""Runpack verification, publication stage: ``publications.json`` against the ledger.

``publications.json`` must be canonical, for this run, sorted and unique by ``pub_key``.
Each publication's payload must decode and:

* every publication is keyed by the run id and carries its ``pub_key`` as the idempotency
  header (:data:`~worker.core.vocabulary.IDEMPOTENCY_HEADER`);
* a READY / SUPERSEDE / REVOKED event is keyed :func:`~worker.core.vocabulary.fact_key`,
  names facts views of the runpack and equals the control fact rebuilt from its READY /
  SUPERSEDED / REVOKED ledger entry (:func:`worker.core.events.control_fact`); a REVOKED
  entry must come after the READY entry of the view it withdraws (contract §11);
* a STATUS event is keyed :func:`~worker.core.vocabulary.status_key` and matches the ledger
  entry of that seq (the status it announces, commit time, reason code): a WAITING / FAILED /
  QUARANTINED entry announces its own status, a REVOKED entry QUARANTINED
  (:data:`worker.core.events.STATUS_KINDS`);
* an ENGINE_REQUEST is keyed :func:`~worker.core.vocabulary.engine_request_key` and equals the
  request rebuilt from the ENGINE_REQUESTED entry of its attempt
  (:func:`worker.core.events.engine_request`).

A rebuilt fact or request is compared field by field, then, when the payload was written with
the current schema, byte for byte with its encoding: Avro decoding accepts some non-canonical
bytes (over-long varints) that decode to the same fields, and the outbox row must be exactly
what SR would send again.

A runpack carries no schema registry: payloads are decoded with SR's own schemas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Generic, NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError

from worker.adapters.avro import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, AvroCodec
from worker.core.canonical import canonical_json, parse_json_strict, sha256_hex
from worker.core.engine import EngineRequest
from worker.core.events import STATUS_KINDS, control_fact, engine_request
from worker.core.ledger import LedgerEntry, LedgerKind
from worker.core.ledger_bodies import RevokedBody, StatusBody
from worker.core.models import EventType, ReadyEvent, RunIntent, RunStatusEvent, StatusEventStatus, millis
from worker.core.vocabulary import IDEMPOTENCY_HEADER, engine_request_key, fact_key, status_key
from worker.errors import EncodeError, IntegrityError, InvalidJSONError, MessageTooLargeError, SRError
from worker.runpack.artifacts import PublicationRecord, PublicationsDoc, b64decode_strict
from worker.runpack.content import RECORDED_BY, RunContent
from worker.runpack.format import facts_path, sorted_paths
from worker.runpack.report import validation_summary

__all__ = ["check_publications"]

M = TypeVar("M", bound=BaseModel)

_PATH = "publications.json"
#: Bytes of a single-object header: the 2 magic bytes, then the 8-byte schema fingerprint.
_SO_HEADER: Final = len(SINGLE_OBJECT_MAGIC) + 8


class _Frame(NamedTuple, Generic[M]):
    """A publication's single-object frame, the fingerprint of the current schema of its
    record, and the encoder that writes that record (for the byte comparison)."""

    data: bytes
    current: bytes
    encode: Callable[[M], bytes]


def check_publications(c: RunContent) -> None:
    """Check ``publications.json`` and every publication in it (see the module docstring)."""
    data = c.required(_PATH)
    if data is None:
        return
    try:
        doc = PublicationsDoc.model_validate(parse_json_strict(data, max_bytes=len(data)))
    except (InvalidJSONError, MessageTooLargeError) as exc:
        c.add("PUBLICATIONS_INVALID", _PATH, str(exc))
        return
    except ValidationError as exc:
        c.add("PUBLICATIONS_INVALID", _PATH, validation_summary(exc))
        return
    if canonical_json(doc.model_dump(mode="json")) != data:
        c.add("PUBLICATIONS_INVALID", _PATH, "not canonical JSON")
    if doc.run_id != c.run_id:
        c.add("PUBLICATIONS_INVALID", _PATH, f"lists publications of run {doc.run_id}")
    if not sorted_paths([p.pub_key for p in doc.publications]):
        c.add("PUBLICATIONS_INVALID", _PATH, "publications are not sorted/unique by pub_key")
    codec = AvroCodec()
    for pub in doc.publications:
        _check_publication(c, codec, pub)


def _bad(c: RunContent, pub: PublicationRecord, detail: str, code: str = "PUBLICATION_MISMATCH") -> None:
    c.add(code, _PATH, f"{pub.pub_key}: {detail}")


def _check_publication(c: RunContent, codec: AvroCodec, pub: PublicationRecord) -> None:
    try:
        payload = b64decode_strict(pub.payload_b64)
        key = None if pub.msg_key_b64 is None else b64decode_strict(pub.msg_key_b64)
    except ValueError as exc:
        _bad(c, pub, str(exc), "PUBLICATION_INVALID")
        return
    if sha256_hex(payload) != pub.payload_sha256:
        _bad(c, pub, "payload bytes do not hash to payload_sha256", "PUBLICATION_INVALID")
    if key != c.run_id.encode():
        _bad(c, pub, "the message key is not the run id")
    if pub.headers.get(IDEMPOTENCY_HEADER) != pub.pub_key:
        _bad(c, pub, f"header {IDEMPOTENCY_HEADER} is not the pub_key")
    record = {"STATUS": "RunStatusEvent", "ENGINE_REQUEST": "EngineRequest"}.get(pub.kind, "ReadyEvent")
    frame = _single_object(codec, payload, record)
    try:
        current = codec.fingerprint(record)
        if pub.kind == "STATUS":
            _check_status(c, pub, codec.decode_status(frame))
        elif pub.kind == "ENGINE_REQUEST":
            _check_engine_request(c, pub, codec.decode_engine_request(frame),
                                  _Frame(frame, current, codec.encode_engine_request))
        else:
            _check_ready(c, pub, codec.decode_ready(frame), _Frame(frame, current, codec.encode_ready))
    except SRError as exc:
        _bad(c, pub, f"payload does not decode: {exc}", "PUBLICATION_UNDECODABLE")


def _check_ready(c: RunContent, pub: PublicationRecord, event: ReadyEvent, frame: _Frame[ReadyEvent]) -> None:
    fv = event.facts_view_hash
    expected_key = fact_key(c.run_id, fv, event.event_type.value)
    if event.run_id != c.run_id or pub.pub_key != expected_key:
        _bad(c, pub, f"the payload is the event {expected_key} of run {event.run_id}, not this row's")
    if event.event_type.value != pub.kind or pub.event_type != pub.kind or pub.facts_view_hash != fv:
        _bad(c, pub, "event type / facts_view_hash differ between the row and the payload")
    if facts_path(fv) not in c.listed:
        _bad(c, pub, f"names facts view {fv}, which is not in the runpack", "PUBLICATION_FACTS_UNKNOWN")
    if not event.facts_view_uri.endswith(f"/facts/{fv}.json"):
        _bad(c, pub, f"facts_view_uri {event.facts_view_uri} does not name facts view {fv}")
    old = event.supersedes_facts_view_hash
    if old is not None and facts_path(old) not in c.listed:
        _bad(c, pub, f"supersedes facts view {old}, which is not in the runpack", "PUBLICATION_FACTS_UNKNOWN")
    # The event must be exactly the control fact its ledger entry records.
    entry = c.entry_recording(event.event_type, fv)
    if event.event_type is EventType.REVOKED and entry is not None:
        _check_revoked_after_ready(c, pub, entry, fv)
    _check_rebuilt(c, pub, event, entry, control_fact, frame=frame,
                   missing=f"no {RECORDED_BY[event.event_type].value} ledger entry records facts view {fv}",
                   as_what="an event", what=f"the {event.event_type.value} fact")


def _check_revoked_after_ready(c: RunContent, pub: PublicationRecord, revoked: LedgerEntry, fv: str) -> None:
    """A REVOKED fact withdraws a READY that came before it: its ledger entry must follow the
    READY entry of the same facts view (the worker sends them in that order, on one key)."""
    ready = c.entry_recording(EventType.READY, fv)
    if ready is None:
        if c.complete_ledger:
            _bad(c, pub, f"ledger seq {revoked.seq} revokes facts view {fv}, which no READY ledger entry records")
    elif ready.seq > revoked.seq:
        _bad(c, pub, f"ledger seq {revoked.seq} revokes facts view {fv} before READY seq {ready.seq} records it")


def _status_seq(pub_key: str) -> int | None:
    """The ledger seq a STATUS key names (its third ``:`` field, ASCII digits), or None."""
    fields = pub_key.split(":")
    if len(fields) != 4 or not (fields[2].isascii() and fields[2].isdigit()):
        return None
    return int(fields[2])


def _check_status(c: RunContent, pub: PublicationRecord, event: RunStatusEvent) -> None:
    seq = _status_seq(pub.pub_key)
    if (seq is None or event.run_id != c.run_id or pub.pub_key != status_key(c.run_id, seq, event.status.value)
            or pub.facts_view_hash is not None or pub.event_type is not None):
        _bad(c, pub, "a STATUS publication must be keyed <run_id>:status:<seq>:<status> of its own event")
        return
    entry = next((e for e in c.entries if e.seq == seq), None)
    if entry is None:
        if c.complete_ledger:
            _bad(c, pub, f"ledger entry seq {seq} does not exist")
        return
    announced = _announced_status(entry)
    if announced != event.status.value:
        kind = entry.kind.value
        what = kind if announced in (None, kind) else f"{kind} (announcing {announced})"
        _bad(c, pub, f"ledger entry seq {seq} is {what}, not {event.status.value}")
    if millis(event.emitted_at) != entry.at_ms:
        _bad(c, pub, f"emitted_at is not the commit time of ledger entry seq {seq}")
    body = c.bodies.get(seq)
    recorded = body.reason_code if isinstance(body, StatusBody | RevokedBody) else None
    if body is not None and recorded != event.reason_code:  # a body that did not fit is reported already
        _bad(c, pub, f"reason_code differs from ledger entry seq {seq}")


def _announced_status(entry: LedgerEntry) -> str | None:
    """The status a ledger entry announces on the status topic, or None: a WAITING / FAILED /
    QUARANTINED entry its own; a REVOKED entry QUARANTINED, beside its REVOKED fact (contract
    §11; the rule :func:`worker.core.events.status_event` builds the event by)."""
    if entry.kind not in STATUS_KINDS:
        return None
    return StatusEventStatus.QUARANTINED.value if entry.kind is LedgerKind.REVOKED else entry.kind.value


def _check_engine_request(c: RunContent, pub: PublicationRecord, request: EngineRequest,
                          frame: _Frame[EngineRequest]) -> None:
    if (request.run_id != c.run_id or pub.pub_key != engine_request_key(c.run_id, request.attempt_id)
            or pub.facts_view_hash is not None or pub.event_type is not None):
        _bad(c, pub, "an ENGINE_REQUEST publication must be keyed <run_id>:engine:<attempt_id> of its own request")
        return
    entry = next((e for e in c.entries if e.kind is LedgerKind.ENGINE_REQUESTED
                  and e.body.get("attempt_id") == request.attempt_id), None)
    _check_rebuilt(c, pub, request, entry, engine_request, frame=frame,
                   missing=f"no ENGINE_REQUESTED ledger entry records attempt {request.attempt_id}",
                   as_what="a request", what="the request")


def _check_rebuilt(c: RunContent, pub: PublicationRecord, published: M, entry: LedgerEntry | None,
                   rebuild: Callable[[LedgerEntry, RunIntent], M], *, frame: _Frame[M], missing: str,
                   as_what: str, what: str) -> None:
    """``published`` must be exactly the message ``entry`` implies, rebuilt from it and the
    admitted intent, field by field and (current schema) byte for byte; ``missing`` is
    reported when no entry records it (in a complete ledger)."""
    if entry is None:
        if c.complete_ledger:
            _bad(c, pub, missing)
        return
    if c.intent is None:
        return
    try:
        expected = rebuild(entry, c.intent)
    except IntegrityError as exc:
        _bad(c, pub, f"ledger seq {entry.seq} cannot be rebuilt as {as_what}: {exc}")
        return
    if published != expected:
        mine, theirs = published.model_dump(), expected.model_dump()
        fields = ", ".join(sorted(k for k in theirs if mine.get(k) != theirs[k]))
        _bad(c, pub, f"differs from {what} of ledger seq {entry.seq} in: {fields}")
        return
    # An older writer schema (another fingerprint) encodes the same fields in other bytes:
    # only a payload of the current schema can be compared byte for byte offline.
    if frame.data[2:_SO_HEADER] != frame.current:
        return
    try:
        rebuilt = frame.encode(expected)
    except (EncodeError, MessageTooLargeError) as exc:
        _bad(c, pub, f"{what} of ledger seq {entry.seq} cannot be encoded: {exc}")
        return
    if rebuilt != frame.data:
        _bad(c, pub, f"payload bytes differ from the encoding of {what} of ledger seq {entry.seq} "
                     "(same fields, other bytes)")


def _single_object(codec: AvroCodec, payload: bytes, record: str) -> bytes:
    """Re-frame a Confluent-framed payload (magic 0 + schema id) for offline decoding.

    A runpack has no schema registry; SR wrote the payload with its own schema, so the body
    is decoded with the local schema of ``record`` (a mismatch fails to decode and is reported).
    """
    if payload[:1] == CONFLUENT_MAGIC and len(payload) >= 5:
        return SINGLE_OBJECT_MAGIC + codec.fingerprint(record) + payload[5:]
    return payload
