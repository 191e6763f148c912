"""Rows of the run index and the publication outbox: the values the index ports exchange.

Pure data with format checks (run ids 32 lowercase hex, hashes 64). The Postgres adapter maps
its records to these; the in-memory index in :mod:`worker.app.testing` stores them directly.
Publication keys follow :mod:`worker.core.vocabulary`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from worker.core.models import RunStatus
from worker.core.vocabulary import engine_request_key, fact_key, status_key

__all__ = ["Admission", "AdmissionOutcome", "NewPublication", "NewRun", "OutboxStats", "Publication", "PublicationKind",
           "RunRow"]

_RUN_ID_RE: Final = re.compile(r"[0-9a-f]{32}")
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")


def _hex_check(value: str | None, pattern: re.Pattern[str], what: str) -> None:
    if value is not None and (not isinstance(value, str) or pattern.fullmatch(value) is None):
        raise ValueError(f"{what} must be {'32' if pattern is _RUN_ID_RE else '64'} lowercase hex characters")


class AdmissionOutcome(StrEnum):
    """Result of :meth:`RunIndex.admit`."""

    NEW = "NEW"  # this call inserted the run
    DUPLICATE = "DUPLICATE"  # the run exists with the same intent fingerprint
    COLLISION = "COLLISION"  # the run (or its equivalence key) exists with a different fingerprint


class PublicationKind(StrEnum):
    """What a publication row carries."""

    READY = "READY"
    SUPERSEDE = "SUPERSEDE"
    REVOKED = "REVOKED"  # contract §11
    STATUS = "STATUS"
    ENGINE_REQUEST = "ENGINE_REQUEST"


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to admit (contract §3). ``intent`` is the Avro-shaped intent dict (JSON-able)."""

    run_id: str
    run_equivalence_key: str
    intent_fingerprint: str
    tenant_id: str
    namespace: str
    scenario_id: str
    intent: Mapping[str, Any]
    evidence_root: str
    deadline: datetime | None = None
    status: RunStatus = RunStatus.ADMITTED
    reason_code: str | None = None
    next_check_at: datetime | None = None

    def __post_init__(self) -> None:
        """Validate identifier formats (the schema enforces them too).

        Raises:
            ValueError: run_id is not 32 hex, or the key/fingerprint are not 64 hex.
        """
        _hex_check(self.run_id, _RUN_ID_RE, "run_id")
        _hex_check(self.run_equivalence_key, _HEX64_RE, "run_equivalence_key")
        _hex_check(self.intent_fingerprint, _HEX64_RE, "intent_fingerprint")


@dataclass(frozen=True, slots=True)
class RunRow:
    """One ``sr_runs`` row."""

    run_id: str
    run_equivalence_key: str
    intent_fingerprint: str
    tenant_id: str
    namespace: str
    scenario_id: str
    status: RunStatus
    reason_code: str | None
    plan_hash: str | None
    facts_view_hash: str | None
    ledger_seq: int  # head seq of the S3 ledger; -1 = no entry yet
    ledger_head_hash: str | None
    lease_epoch: int
    deadline: datetime | None
    next_check_at: datetime | None
    intent: dict[str, Any]
    evidence_root: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> RunRow:
        """Build from a ``dict_row`` record of the run columns."""
        return cls(
            run_id=rec["run_id"],
            run_equivalence_key=rec["run_equivalence_key"],
            intent_fingerprint=rec["intent_fingerprint"],
            tenant_id=rec["tenant_id"],
            namespace=rec["namespace"],
            scenario_id=rec["scenario_id"],
            status=RunStatus(rec["status"]),
            reason_code=rec["reason_code"],
            plan_hash=rec["plan_hash"],
            facts_view_hash=rec["facts_view_hash"],
            ledger_seq=int(rec["ledger_seq"]),
            ledger_head_hash=rec["ledger_head_hash"],
            lease_epoch=int(rec["lease_epoch"]),
            deadline=rec["deadline"],
            next_check_at=rec["next_check_at"],
            intent=dict(rec["intent"]),
            evidence_root=rec["evidence_root"],
            created_at=rec["created_at"],
            updated_at=rec["updated_at"],
        )


@dataclass(frozen=True, slots=True)
class Admission:
    """What :meth:`RunIndex.admit` found: the outcome and the stored row.

    For ``COLLISION`` the row is the *existing* run (left untouched).
    """

    outcome: AdmissionOutcome
    row: RunRow


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """The outbox's backlog: ``backlog`` publication rows not yet acknowledged by the broker,
    the oldest of them ``oldest_age_seconds`` old (0.0 when there is none)."""

    backlog: int
    oldest_age_seconds: float


@dataclass(frozen=True, slots=True)
class NewPublication:
    """A publication to store with a state transition (see ``Lease.advance``).

    ``pub_key``: for READY/SUPERSEDE ``<run_id>:<facts_view_hash>:<event_type>`` (use
    :meth:`ready`), for status events ``<run_id>:status:<ledger_seq>:<status>`` (use
    :meth:`status_event`), for engine requests ``<run_id>:engine:<attempt_id>`` (use
    :meth:`engine_request`). The schema enforces these shapes. ``kind``/``event_type`` accept
    plain strings or the enums.
    """

    pub_key: str
    kind: str
    topic: str
    payload: bytes
    msg_key: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    facts_view_hash: str | None = None
    event_type: str | None = None

    def __post_init__(self) -> None:
        """Validate the shape (the schema enforces it too, this just fails earlier and clearer).

        Raises:
            ValueError: unknown kind, facts_view_hash/event_type inconsistent with it, empty topic.
            TypeError: payload is not bytes.
        """
        kind = PublicationKind(self.kind)  # ValueError on an unknown kind
        if kind in (PublicationKind.STATUS, PublicationKind.ENGINE_REQUEST):
            if self.facts_view_hash is not None or self.event_type is not None:
                raise ValueError(f"a {kind.value} publication has no facts_view_hash or event_type")
        else:
            _hex_check(self.facts_view_hash, _HEX64_RE, "facts_view_hash")
            if self.facts_view_hash is None or self.event_type != kind.value:
                raise ValueError(f"a {kind.value} publication needs facts_view_hash and event_type={kind.value}")
        if not isinstance(self.payload, bytes | bytearray | memoryview):
            raise TypeError("payload must be bytes")
        if not self.topic:
            raise ValueError("topic must not be empty")

    @classmethod
    def ready(cls, run_id: str, facts_view_hash: str, event_type: str, *, topic: str, payload: bytes,
              msg_key: bytes | None = None, headers: Mapping[str, str] | None = None) -> NewPublication:
        """A READY, SUPERSEDE or REVOKED publication with its derived ``pub_key``."""
        kind = PublicationKind(event_type)
        return cls(pub_key=fact_key(run_id, facts_view_hash, kind.value), kind=kind.value, topic=topic,
                   payload=payload, msg_key=msg_key, headers=dict(headers or {}),
                   facts_view_hash=facts_view_hash, event_type=kind.value)

    @classmethod
    def status_event(cls, run_id: str, ledger_seq: int, status: str, *, topic: str, payload: bytes,
                     msg_key: bytes | None = None, headers: Mapping[str, str] | None = None) -> NewPublication:
        """A run-status publication with its derived ``pub_key``."""
        return cls(pub_key=status_key(run_id, ledger_seq, RunStatus(status).value), kind=PublicationKind.STATUS,
                   topic=topic, payload=payload, msg_key=msg_key, headers=dict(headers or {}))

    @classmethod
    def engine_request(cls, run_id: str, attempt_id: str, *, topic: str, payload: bytes,
                       msg_key: bytes | None = None, headers: Mapping[str, str] | None = None) -> NewPublication:
        """An engine-request publication (one per attempt) with its derived ``pub_key``.

        Raises:
            ValueError: ``run_id`` or ``attempt_id`` is not 32 lowercase hex characters.
        """
        _hex_check(run_id, _RUN_ID_RE, "run_id")
        _hex_check(attempt_id, _RUN_ID_RE, "attempt_id")
        return cls(pub_key=engine_request_key(run_id, attempt_id), kind=PublicationKind.ENGINE_REQUEST,
                   topic=topic, payload=payload, msg_key=msg_key, headers=dict(headers or {}))


@dataclass(frozen=True, slots=True)
class Publication:
    """One stored ``sr_publications`` row: exactly the bytes to (re-)send."""

    id: int
    run_id: str
    pub_key: str
    kind: PublicationKind
    facts_view_hash: str | None
    event_type: str | None
    topic: str
    msg_key: bytes | None
    payload: bytes
    headers: dict[str, str]
    created_at: datetime
    published_at: datetime | None
    kafka_partition: int | None
    kafka_offset: int | None

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Publication:
        """Build from a ``dict_row`` record of the publication columns."""
        msg_key = rec["msg_key"]
        return cls(
            id=int(rec["id"]),
            run_id=rec["run_id"],
            pub_key=rec["pub_key"],
            kind=PublicationKind(rec["kind"]),
            facts_view_hash=rec["facts_view_hash"],
            event_type=rec["event_type"],
            topic=rec["topic"],
            msg_key=None if msg_key is None else bytes(msg_key),
            payload=bytes(rec["payload"]),
            headers={str(k): str(v) for k, v in dict(rec["headers"]).items()},
            created_at=rec["created_at"],
            published_at=rec["published_at"],
            kafka_partition=rec["kafka_partition"],
            kafka_offset=rec["kafka_offset"],
        )

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """Headers as Kafka wants them, in a deterministic (sorted) order."""
        return [(k, v.encode("utf-8")) for k, v in sorted(self.headers.items())]
