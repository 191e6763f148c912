"""The ports of SR's application layer: what the services need from the outside world.

Every application service (admission, the run step, triggers, the sweeper, operators)
depends only on these Protocols and on the pure core. Adapters in :mod:`worker.adapters`
implement them against Kafka, Postgres and S3; :mod:`worker.app.testing` implements them in
memory, so the decision logic is unit-tested without servers.

The value types the ports exchange live here too (messages, deliveries, object metadata);
the run-index rows live in :mod:`worker.core.index`. No SDK is imported by this module.

Error contract shared by every implementation: faults are raised as the
:class:`~worker.errors.SRError` hierarchy (``RetryableError`` subclasses for transient
faults, already retried with bounded backoff inside the adapter; ``PermanentError``
subclasses otherwise). Nothing raises an SDK exception through a port.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol, Self

from worker.core.engine import EngineRequest, EngineResult
from worker.core.index import Admission, NewPublication, NewRun, Publication, RunRow
from worker.core.models import ReadyEvent, RunIntent, RunStatus, RunStatusEvent, RunTrigger

__all__ = [
    "Clock",
    "Delivered",
    "EventCodec",
    "EventSink",
    "Headers",
    "Lease",
    "Leases",
    "ObjectMeta",
    "ObjectStore",
    "OperatorAudit",
    "PartitionReader",
    "Record",
    "RunIndex",
    "RunObserver",
    "SilentObserver",
    "WriteOutcome",
]

#: Kafka-style headers as produced: (name, value) pairs, value bytes/str or None.
Headers = Sequence[tuple[str, str | bytes | None]]


# --------------------------------------------------------------------------- messages
@dataclass(frozen=True)
class Record:
    """One consumed message in plain Python types: where it came from and its exact bytes.

    The application layer decodes ``value`` itself and keeps the record only as the source
    reference for a DLQ copy (original key, bytes and headers) and for logs.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int | None

    def header(self, name: str) -> bytes | None:
        """The first header called ``name``, if any."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class Delivered:
    """Where the broker stored a produced message."""

    topic: str
    partition: int
    offset: int


# --------------------------------------------------------------------------- objects
class WriteOutcome(StrEnum):
    """Result of a write-once PUT."""

    CREATED = "CREATED"
    EXISTING_IDENTICAL = "EXISTING_IDENTICAL"


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """Listing/HEAD metadata of one object. ``size`` in bytes; ``etag`` without quotes.

    Never assume the ETag is an MD5 of the bytes (multipart uploads and SSE-KMS break that);
    it only pins a version of the object.
    """

    key: str
    size: int
    etag: str


class ObjectStore(Protocol):
    """The object-store operations SR's truth store and evidence verifier use.

    Keys are validated by the caller (:mod:`worker.core.keys`); reads are capped.
    """

    def create(self, bucket: str, key: str, body: bytes) -> bool:
        """PUT only if absent (``If-None-Match: *``): True if created, False if it existed.

        Raises:
            S3UnavailableError: transient faults persisted. S3AccessError: permanent fault.
        """
        ...

    def put_write_once(self, bucket: str, key: str, body: bytes) -> WriteOutcome:
        """Write-once PUT; an existing object must hold exactly ``body``.

        Raises:
            DriftError: a different payload exists at ``key``.
            S3UnavailableError / S3AccessError: as :meth:`create`.
        """
        ...

    def get(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        """The whole object, at most ``max_bytes`` bytes.

        Raises:
            ObjectNotFoundError: no such key. MessageTooLargeError: over the cap.
            S3UnavailableError / S3AccessError: as :meth:`create`.
        """
        ...

    def get_range(
        self, bucket: str, key: str, *, start: int, end: int, object_size: int, etag: str | None = None
    ) -> list[bytes | memoryview]:
        """Bytes ``[start, end)`` of an object listed as ``object_size`` bytes with ``etag``.

        Raises:
            ObjectNotFoundError: no such key. PreconditionFailedError: the object changed.
            S3UnavailableError / S3AccessError: as :meth:`create`.
        """
        ...

    def sha256(self, bucket: str, key: str, *, max_bytes: int) -> tuple[str, int]:
        """(sha256 hex, size) of the object's bytes, streamed, at most ``max_bytes``.

        Raises:
            ObjectNotFoundError: no such key. MessageTooLargeError: over the cap.
            S3UnavailableError / S3AccessError: as :meth:`create`.
        """
        ...

    def head(self, bucket: str, key: str) -> ObjectMeta | None:
        """Metadata of ``key``, or None if it does not exist.

        Raises:
            S3UnavailableError / S3AccessError: as :meth:`create`.
        """
        ...

    def list(
        self, bucket: str, prefix: str, *, start_after: str | None = None, page_size: int = 1000
    ) -> Iterator[ObjectMeta]:
        """Every object under ``prefix`` in key (UTF-8 byte) order, lazily paged.

        Raises:
            S3UnavailableError / S3AccessError: as :meth:`create`.
        """
        ...


# --------------------------------------------------------------------------- run index
class RunIndex(Protocol):
    """The rebuildable run index and the publication outbox (Postgres in production)."""

    def admit(self, run: NewRun) -> Admission:
        """Insert ``run`` unless its run id or equivalence key exists (one round trip).

        Returns NEW, DUPLICATE (same fingerprint) or COLLISION with the stored row.
        """
        ...

    def get(self, run_id: str) -> RunRow | None:
        """The run's row, or None."""
        ...

    def list_runs(self, status: RunStatus | str | None = None, tenant: str | None = None,
                  since: datetime | None = None, limit: int = 100, reason: str | None = None) -> list[RunRow]:
        """Runs, newest first, optionally filtered by status, tenant, creation time and reason code."""
        ...

    def count_by_status(self) -> dict[str, int]:
        """Number of runs per status."""
        ...

    def due_for_check(self, now: datetime, limit: int = 100, *,
                      stale_before: datetime | None = None) -> list[RunRow]:
        """WAITING runs whose ``next_check_at`` has passed, and ADMITTED runs untouched since
        ``stale_before`` (abandoned mid-step), oldest first."""
        ...

    def publications(self, run_id: str) -> list[Publication]:
        """Every stored publication of a run, oldest first."""
        ...

    def publication(self, pub_key: str) -> Publication | None:
        """One stored publication by key."""
        ...

    def pending_publications(self, run_id: str) -> list[Publication]:
        """A run's publications not yet marked published, oldest first."""
        ...

    def unpublished(self, limit: int = 1000) -> list[Publication]:
        """Publications of any run not yet marked published, oldest first."""
        ...

    def mark_published(self, pub_key: str, partition: int, offset: int) -> None:
        """Record the broker position of ``pub_key`` (idempotent)."""
        ...

    def restore_run(self, row: Mapping[str, Any]) -> None:
        """Upsert a run row rebuilt from S3 (``sr index rebuild``); the epoch never goes back."""
        ...

    def restore_publication(self, pub: NewPublication, *, run_id: str, published: bool) -> None:
        """Insert a publication row rebuilt from S3 unless its key exists."""
        ...


class OperatorAudit(Protocol):
    """Where operator actions (allowed and refused) are recorded."""

    def record_operator_action(self, operator: str, action: str, *, allowed: bool,
                               detail: Mapping[str, Any] | None = None) -> None:
        """Append one audit row."""
        ...


# --------------------------------------------------------------------------- leases
class Lease(Protocol):
    """A held run lease: exclusive right to advance one run, fenced by ``epoch``.

    Every write is epoch-checked: a holder whose epoch is no longer current gets
    :class:`~worker.errors.StaleEpochError`; one whose session is gone gets
    :class:`~worker.errors.LeaseLostError`. Neither is ever retried on the holder's behalf.
    """

    @property
    def run_id(self) -> str:
        """The leased run."""
        ...

    @property
    def epoch(self) -> int:
        """The fencing epoch this acquisition bumped the run to."""
        ...

    @property
    def row(self) -> RunRow | None:
        """The run's row as read by the acquiring statement (None if not read)."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def advance(
        self,
        status: RunStatus | str,
        *,
        ledger_seq: int,
        ledger_head_hash: str | None,
        reason_code: str | None = None,
        plan_hash: str | None = None,
        facts_view_hash: str | None = None,
        next_check_at: datetime | None = None,
        publications: Sequence[NewPublication] = (),
    ) -> list[Publication]:
        """Advance the index row and store publications atomically; returns the stored rows
        (for a key that existed, the ORIGINAL row: re-sends are byte-identical).

        ``plan_hash`` / ``facts_view_hash`` None keeps the stored value.
        """
        ...

    def touch_head(self, ledger_seq: int, ledger_head_hash: str) -> None:
        """Move the ledger head without a status change (epoch-checked)."""
        ...

    def is_held(self) -> bool:
        """Is the lease still held with a current epoch?"""
        ...

    def release(self) -> None:
        """Give the lease up. Idempotent; never raises for a lost session."""
        ...


class Leases(Protocol):
    """Hands out run leases."""

    def acquire(self, run_id: str, *, wait: float = 0.0) -> Lease:
        """Take the run's lease (bumping its epoch), trying for up to ``wait`` seconds.

        Raises:
            LeaseBusyError: still held by another session after ``wait``.
            RunNotFoundError: the run is not in the index.
        """
        ...


# --------------------------------------------------------------------------- kafka
class EventSink(Protocol):
    """Produces messages and reports where the broker stored them (acks=all)."""

    def send(self, topic: str, *, key: bytes | None, value: bytes,
             headers: Headers | None = None) -> Future[Delivered]:
        """Queue one message; the future resolves on the broker's acknowledgement.

        Raises:
            KafkaUnavailableError: the local queue stayed full. KafkaFatalError: refused.
        """
        ...

    def send_and_wait(self, topic: str, *, key: bytes | None, value: bytes, headers: Headers | None = None,
                      timeout: float | None = None) -> Delivered:
        """:meth:`send` and block until acknowledged.

        Raises:
            KafkaUnavailableError: not acknowledged in time. KafkaFatalError: refused.
        """
        ...


class PartitionReader(Protocol):
    """Reads a slice of one partition (operators' ``sr replay``)."""

    def read_slice(self, topic: str, partition: int, *, from_offset: int | None = None,
                   from_time_ms: int | None = None, to_offset: int | None = None,
                   idle_timeout: float = 5.0) -> Iterator[Record]:
        """The records of ``topic[partition]`` from the start point up to ``to_offset``
        (exclusive) or, without it, until the partition stays idle at its end.

        Raises:
            KafkaUnavailableError: the broker is unreachable. InputError: bad slice bounds.
        """
        ...


# --------------------------------------------------------------------------- time
class Clock(Protocol):
    """Now, as an aware UTC datetime (injected so tests control deadlines)."""

    def __call__(self) -> datetime: ...


# --------------------------------------------------------------------------- encoding
class EventCodec(Protocol):
    """SR's message encoding (Avro in production): outgoing events to the exact bytes stored in
    the outbox, and consumed records back to messages (operators find a record's run)."""

    def decode(self, data: bytes, *, expected: str | None = None) -> tuple[str, dict[str, Any]]:
        """(record full name, datum) of one message.

        Raises:
            DecodeError / UnknownSchemaError / MessageTooLargeError: not a message SR can read.
        """
        ...

    def decode_intent(self, data: bytes) -> RunIntent:
        """A validated intent.

        Raises:
            DecodeError / IntentInvalidError: not a valid intent.
        """
        ...

    def decode_trigger(self, data: bytes) -> RunTrigger:
        """A validated trigger.

        Raises:
            DecodeError: not a valid trigger.
        """
        ...

    def encode_ready(self, event: ReadyEvent, *, subject: str | None = None) -> bytes:
        """A READY / SUPERSEDE event's bytes (``subject``: the schema-registry subject, if any).

        Raises:
            EncodeError: the event does not fit the schema.
        """
        ...

    def encode_status(self, event: RunStatusEvent, *, subject: str | None = None) -> bytes:
        """A run-status event's bytes.

        Raises:
            EncodeError: the event does not fit the schema.
        """
        ...

    def encode_engine_request(self, request: EngineRequest, *, subject: str | None = None) -> bytes:
        """An engine request's bytes (contract §8).

        Raises:
            EncodeError: the request does not fit the schema.
        """
        ...

    def decode_engine_result(self, data: bytes) -> EngineResult:
        """A validated engine result.

        Raises:
            DecodeError: not a valid EngineResult.
        """
        ...


# --------------------------------------------------------------------------- observation
class RunObserver(Protocol):
    """The one hook bus of the application layer (metrics implement it; the default is silent)."""

    def run_transition(self, status: str) -> None:
        """A run moved to ``status`` (READY, WAITING, FAILED, QUARANTINED, REJECTED)."""
        ...

    def evidence_bytes(self, n: int) -> None:
        """``n`` evidence bytes were hashed."""
        ...

    def dead_lettered(self, error_class: str) -> None:
        """A message was dead-lettered with ``error_class``."""
        ...

    def ready_published(self, n: int = 1) -> None:
        """``n`` READY / SUPERSEDE facts were acknowledged by the broker."""
        ...

    def engine_attempt(self, event: str, seconds: float | None = None) -> None:
        """An engine attempt was ``started``, ``succeeded``, ``failed`` or ``timed_out``;
        ``seconds`` is its duration (request to recorded result) when it has one."""
        ...

    def lease_lost(self, reason: str) -> None:
        """A run step lost its lease: ``lost`` (the session ended) or ``fenced`` (a newer epoch)."""
        ...


class SilentObserver:
    """A :class:`RunObserver` that records nothing."""

    def run_transition(self, status: str) -> None:
        """Ignore."""

    def evidence_bytes(self, n: int) -> None:
        """Ignore."""

    def dead_lettered(self, error_class: str) -> None:
        """Ignore."""

    def ready_published(self, n: int = 1) -> None:
        """Ignore."""

    def engine_attempt(self, event: str, seconds: float | None = None) -> None:
        """Ignore."""

    def lease_lost(self, reason: str) -> None:
        """Ignore."""
