"""Pure builders of the derived runpack artifacts (shared by export and verify).

Exact copies of S3 truth (plan, ledger entries, facts views) need no builder: their bytes
are already canonical JSON. The artifacts built here are derived deterministically from
that truth and from the publication outbox, so verify can rebuild and compare them.

Publications: only the fields that are a deterministic function of the run are kept —
``pub_key``, ``kind``, ``facts_view_hash``, ``event_type``, ``topic``, the message key, the
exact payload bytes (base64, plus their sha256) and the headers. Broker positions
(``kafka_partition``/``kafka_offset``), ``created_at``/``published_at`` and the row id are
properties of one environment's delivery, not of the run, and are left out: they differ
between a primary and a rebuilt index and would break byte-identical re-exports.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Final, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from worker.core.canonical import canonical_json, sha256_hex
from worker.core.facts import FactsView
from worker.core.ledger import LedgerEntry, RunState
from worker.core.ledger_bodies import LedgerBody, ReadyBody, RevokedBody, SupersededBody, TriggerBody
from worker.core.models import Hex64, RunId

__all__ = [
    "MAX_PUBLICATIONS",
    "PUBLICATIONS_FORMAT_VERSION",
    "PublicationRecord",
    "PublicationSource",
    "PublicationsDoc",
    "b64decode_strict",
    "facts_references",
    "intent_bytes",
    "plan_references",
    "publication_record",
    "publications_bytes",
    "receipts_bytes",
    "run_summary",
    "run_summary_bytes",
]

PUBLICATIONS_FORMAT_VERSION: Final = 1
_FROZEN: Final = ConfigDict(frozen=True, extra="forbid")


class PublicationSource(Protocol):
    """What a runpack needs of an outbox row (:class:`worker.adapters.postgres.Publication`)."""

    @property
    def run_id(self) -> str: ...
    @property
    def pub_key(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def facts_view_hash(self) -> str | None: ...
    @property
    def event_type(self) -> str | None: ...
    @property
    def topic(self) -> str: ...
    @property
    def msg_key(self) -> bytes | None: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def headers(self) -> dict[str, str]: ...


#: Cap on publications per runpack (each one is a Kafka message; thousands would be odd).
MAX_PUBLICATIONS: Final = 10_000

Text = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class PublicationRecord(BaseModel):
    """One publication as stored in ``publications.json``."""

    model_config = _FROZEN

    pub_key: Text
    kind: Literal["READY", "SUPERSEDE", "REVOKED", "STATUS", "ENGINE_REQUEST"]
    facts_view_hash: Hex64 | None
    event_type: Literal["READY", "SUPERSEDE", "REVOKED"] | None
    topic: Text
    msg_key_b64: str | None
    payload_b64: str
    payload_sha256: Hex64
    headers: dict[str, str]


class PublicationsDoc(BaseModel):
    """``publications.json``: the run's publications sorted by ``pub_key``."""

    model_config = _FROZEN

    format_version: Literal[1] = PUBLICATIONS_FORMAT_VERSION
    run_id: RunId
    publications: Annotated[tuple[PublicationRecord, ...], Field(max_length=MAX_PUBLICATIONS)]


def b64decode_strict(text: str) -> bytes:
    """Decode standard base64, refusing anything that is not exactly canonical base64.

    Raises:
        ValueError: not valid, canonical base64.
    """
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"not valid base64: {exc}") from exc
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError("base64 is not in canonical form")
    return data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def publication_record(pub: PublicationSource) -> PublicationRecord:
    """The runpack record of one outbox row.

    Raises:
        pydantic.ValidationError: the row has an unexpected shape (a schema drift).
    """
    return PublicationRecord(
        pub_key=pub.pub_key,
        kind=str(pub.kind),  # a StrEnum in the index; pydantic checks the Literal
        facts_view_hash=pub.facts_view_hash,
        event_type=pub.event_type,
        topic=pub.topic,
        msg_key_b64=None if pub.msg_key is None else _b64(pub.msg_key),
        payload_b64=_b64(pub.payload),
        payload_sha256=sha256_hex(pub.payload),
        headers=dict(sorted(pub.headers.items())),
    )


def publications_bytes(run_id: str, pubs: Iterable[PublicationSource]) -> bytes:
    """Exact bytes of ``publications.json``: records sorted by ``pub_key``.

    Raises:
        pydantic.ValidationError: a row has an unexpected shape.
    """
    records = sorted((publication_record(p) for p in pubs), key=lambda r: r.pub_key)
    doc = PublicationsDoc(run_id=run_id, publications=tuple(records))
    return canonical_json(doc.model_dump(mode="json"))


def intent_bytes(intent: Mapping[str, Any]) -> bytes:
    """Exact bytes of ``intent.json``: canonical JSON of the Avro-shaped intent dict.

    Raises:
        CanonicalJSONError: the dict is not canonical-JSON data.
    """
    return canonical_json(dict(intent))


def receipts_bytes(view: FactsView, facts_view_hash: str) -> bytes:
    """Exact bytes of ``receipts/<hash>.json``: the gate receipts of one facts view."""
    return canonical_json({
        "facts_view_hash": facts_view_hash,
        "run_id": view.run_id,
        "plan_hash": view.plan_hash,
        "policy_rev": view.policy_rev,
        "receipts": view.model_dump(mode="json")["receipts"],  # as the view's format writes them
    })


def plan_references(bodies: Iterable[LedgerBody]) -> list[str]:
    """Distinct ``plan_hash`` values the ledger bodies record, in first-seen order."""
    found: list[str] = []
    for body in bodies:
        plan = None if isinstance(body, TriggerBody) else body.plan_hash
        if plan is not None and plan not in found:
            found.append(plan)
    return found


def facts_references(bodies: Iterable[LedgerBody]) -> list[str]:
    """Distinct facts-view hashes the ledger references (READY, SUPERSEDED, REVOKED), first-seen order.

    A READY's ``supersedes_facts_view_hash`` is not a reference of its own: in a valid ledger
    it names a view an earlier entry references already (the SUPERSEDED one, or the revoked
    one after a RETRY), and a ledger where it does not is reported by the verifier instead of
    sending the export after a view that may not exist.
    """
    found: list[str] = []
    for body in bodies:
        names: tuple[str, ...]
        if isinstance(body, ReadyBody | RevokedBody):
            names = (body.facts_view_hash,)
        elif isinstance(body, SupersededBody):
            names = (body.old_facts_view_hash, body.new_facts_view_hash)
        else:
            continue
        for name in names:
            if name not in found:
                found.append(name)
    return found


def run_summary(state: RunState, entries: Sequence[LedgerEntry], bodies: Iterable[LedgerBody], *, tenant_id: str,
                namespace: str, scenario_id: str, ledger_head_sha256: str,
                source: Mapping[str, str]) -> dict[str, Any]:
    """The ``run.json`` document: what the ledger says about the run, as of its last entry.

    ``facts_revoked`` (the facts views REVOKED entries withdrew, oldest first, contract §11)
    is present only when the ledger revokes one: ``facts_view_hash`` of a revoked run still
    names its last, withdrawn view, and ``facts_history`` does not tell revoked views from
    superseded ones. Runs without a revocation keep the summary (and the bytes) they always had.

    Args:
        state: the state derived from ``entries``.
        entries: the whole ledger, in seq order (not empty).
        bodies: the typed bodies of ``entries`` (:func:`~worker.core.ledger_bodies.parse_body`).
        tenant_id / namespace / scenario_id: the run's intent.
        ledger_head_sha256: sha256 of the last entry's bytes.
        source: where the run's truth was read (bucket, run root).
    """
    summary: dict[str, Any] = {
        "run_id": state.run_id,
        "tenant_id": tenant_id,
        "namespace": namespace,
        "scenario_id": scenario_id,
        "status": state.status.value,
        "reason_code": state.last_reason_code,
        "plan_hash": state.plan_hash,
        "facts_view_hash": state.facts_view_hash,
        "facts_history": list(state.facts_history),
        "facts_referenced": facts_references(bodies),
        "fenced_seqs": list(state.fenced_seqs),
        "ledger_entries": len(entries),
        "ledger_head_sha256": ledger_head_sha256,
        "as_of_ms": entries[-1].at_ms,
        "source": dict(source),
    }
    if state.revoked:
        summary["facts_revoked"] = list(state.revoked)
    return summary


def run_summary_bytes(summary: Mapping[str, Any]) -> bytes:
    """Exact bytes of ``run.json``.

    Raises:
        CanonicalJSONError: the summary is not canonical-JSON data (a caller bug).
    """
    return canonical_json(dict(summary))


