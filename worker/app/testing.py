"""In-memory implementations of every port in :mod:`worker.app.ports`, shipped for tests.

Like procrastinate's ``InMemoryConnector`` or dramatiq's ``StubBroker``: SR's own unit tests
drive the real application services on these, and so can users testing their integrations.
They keep the semantics the services rely on, not the performance:

* :class:`InMemoryObjectStore` — write-once ``If-None-Match`` PUTs, DRIFT on a different
  payload, byte caps, ETag-pinned ranged reads, listing in UTF-8 key order, injectable faults;
* :class:`InMemoryDatabase` with :class:`InMemoryRunIndex` and :class:`InMemoryLeases` — the
  run index, the outbox (``ON CONFLICT DO NOTHING`` returning the original rows), advisory
  locks per session and the fencing epoch, so a stale holder's write is rejected exactly as
  in Postgres; :meth:`InMemoryLeases.crash` drops a "process"'s sessions (and locks);
* :class:`StubEventSink` — a broker that records what was produced and acknowledges it, with
  injectable delivery failures;
* :class:`ManualClock` — time that moves only when told;
* :class:`RaisingCrashPoints` — crash points that raise :class:`SimulatedCrash` instead of
  killing the process, so a test can "restart" on the same durable state.

All are thread-safe (one lock each); none does I/O.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from worker.app.crashpoints import CrashPoint, CrashPoints
from worker.app.ports import Delivered, Headers, ObjectMeta, Record, WriteOutcome
from worker.core.identity import run_lock_key
from worker.core.index import Admission, AdmissionOutcome, NewPublication, NewRun, Publication, PublicationKind, RunRow
from worker.core.models import RunStatus
from worker.errors import (
    DriftError,
    KafkaUnavailableError,
    LeaseBusyError,
    LeaseLostError,
    MessageTooLargeError,
    ObjectNotFoundError,
    PreconditionFailedError,
    RunNotFoundError,
    StaleEpochError,
)

__all__ = [
    "InMemoryDatabase",
    "InMemoryLease",
    "InMemoryLeases",
    "InMemoryObjectStore",
    "InMemoryRunIndex",
    "ManualClock",
    "RaisingCrashPoints",
    "SentMessage",
    "SimulatedCrash",
    "StubEventSink",
]


# --------------------------------------------------------------------------- clock
class ManualClock:
    """A clock that only moves when told. Starts at ``start`` (aware UTC)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        """Move forward ``seconds``; returns the new now."""
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now


# --------------------------------------------------------------------------- crash points
class SimulatedCrash(BaseException):
    """Raised at an armed crash point; a BaseException so no ``except Exception`` eats it."""


class RaisingCrashPoints(CrashPoints):
    """Crash points that raise :class:`SimulatedCrash` on the ``after``-th hit of ``point``."""

    def hit(self, point: CrashPoint) -> None:
        """Raise at the armed point when its turn has come."""
        if self._point is not point:
            return
        with self._lock:
            self._hits += 1
            if self._hits != self._after:
                return
        raise SimulatedCrash(point.value)


# --------------------------------------------------------------------------- object store
class InMemoryObjectStore:
    """An S3-like store in a dict. ``requests`` counts calls by verb (PUT/GET/HEAD/LIST)."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str], bytes] = {}
        self._faults: dict[str, list[BaseException]] = defaultdict(list)
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()

    # ---------------------------------------------------------------- test helpers
    def fail_next(self, verb: str, error: BaseException, times: int = 1) -> None:
        """Make the next ``times`` requests of ``verb`` (PUT/GET/HEAD/LIST) raise ``error``."""
        with self._lock:
            self._faults[verb].extend([error] * times)

    def put(self, bucket: str, key: str, body: bytes) -> None:
        """Plain overwrite (how evidence producers write; not write-once)."""
        self._request("PUT")
        with self._lock:
            self._objects[(bucket, key)] = bytes(body)

    def delete(self, bucket: str, key: str) -> None:
        """Remove ``key`` if present."""
        with self._lock:
            self._objects.pop((bucket, key), None)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix``, in key order (no request counted)."""
        with self._lock:
            return sorted((k for b, k in self._objects if b == bucket and k.startswith(prefix)),
                          key=lambda k: k.encode())

    def read(self, bucket: str, key: str) -> bytes:
        """The stored bytes (no request counted). Raises KeyError if absent."""
        with self._lock:
            return self._objects[(bucket, key)]

    def _request(self, verb: str) -> None:
        with self._lock:
            self.requests[verb] += 1
            faults = self._faults.get(verb)
            error = faults.pop(0) if faults else None
        if error is not None:
            raise error

    @staticmethod
    def _etag(data: bytes) -> str:
        # Deliberately not an MD5: nothing may assume an ETag is one.
        return hashlib.sha256(data).hexdigest()[:32]

    def _get_bytes(self, bucket: str, key: str) -> bytes:
        with self._lock:
            data = self._objects.get((bucket, key))
        if data is None:
            raise ObjectNotFoundError(f"s3://{bucket}/{key} not found")
        return data

    # ---------------------------------------------------------------- the port
    def create(self, bucket: str, key: str, body: bytes) -> bool:
        """PUT with ``If-None-Match: *``."""
        self._request("PUT")
        with self._lock:
            if (bucket, key) in self._objects:
                return False
            self._objects[(bucket, key)] = bytes(body)
            return True

    def put_write_once(self, bucket: str, key: str, body: bytes) -> WriteOutcome:
        """Write-once PUT; identical bytes at the key are adopted, different ones are DRIFT."""
        if self.create(bucket, key, body):
            return WriteOutcome.CREATED
        if self.get(bucket, key, max_bytes=len(body) + 1) != bytes(body):
            raise DriftError(f"s3://{bucket}/{key} exists with different content")
        return WriteOutcome.EXISTING_IDENTICAL

    def get(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        """The whole object, capped."""
        self._request("GET")
        data = self._get_bytes(bucket, key)
        if len(data) > max_bytes:
            raise MessageTooLargeError(f"s3://{bucket}/{key}: object is {len(data)} bytes, cap is {max_bytes}")
        return data

    def get_range(
        self, bucket: str, key: str, *, start: int, end: int, object_size: int, etag: str | None = None
    ) -> list[bytes | memoryview]:
        """Bytes ``[start, end)``, pinned to the listed size and ETag."""
        self._request("GET")
        data = self._get_bytes(bucket, key)
        if len(data) != object_size or (etag is not None and self._etag(data) != etag):
            raise PreconditionFailedError(f"s3://{bucket}/{key} changed since it was listed")
        return [memoryview(data)[start:end]]

    def sha256(self, bucket: str, key: str, *, max_bytes: int) -> tuple[str, int]:
        """(sha256 hex, size) of the object, capped."""
        data = self.get(bucket, key, max_bytes=max_bytes)
        return hashlib.sha256(data).hexdigest(), len(data)

    def head(self, bucket: str, key: str) -> ObjectMeta | None:
        """Metadata or None."""
        self._request("HEAD")
        with self._lock:
            data = self._objects.get((bucket, key))
        return None if data is None else ObjectMeta(key, len(data), self._etag(data))

    def list(
        self, bucket: str, prefix: str, *, start_after: str | None = None, page_size: int = 1000
    ) -> Iterator[ObjectMeta]:
        """Every object under ``prefix`` in UTF-8 key order; one LIST counted per page."""
        keys = [k for k in self.keys(bucket, prefix) if start_after is None or k.encode() > start_after.encode()]
        self._request("LIST")
        for i, key in enumerate(keys):
            if i and i % page_size == 0:
                self._request("LIST")
            with self._lock:
                data = self._objects.get((bucket, key))
            if data is not None:
                yield ObjectMeta(key, len(data), self._etag(data))


# --------------------------------------------------------------------------- run index + leases
class InMemoryDatabase:
    """The shared state behind :class:`InMemoryRunIndex` and :class:`InMemoryLeases`.

    ``round_trips`` counts every statement the way the Postgres adapter counts them.
    """

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock or ManualClock()
        self.lock = threading.RLock()
        self.runs: dict[str, RunRow] = {}
        self.by_equivalence_key: dict[str, str] = {}
        self.publications: dict[str, Publication] = {}
        self.operator_actions: list[dict[str, Any]] = []
        self.locks: dict[int, object] = {}  # advisory lock key -> owning session
        self.round_trips = 0
        self._ids = itertools.count(1)

    def statement(self) -> None:
        """Count one round trip."""
        with self.lock:
            self.round_trips += 1

    def store_publications(self, run_id: str, publications: Sequence[NewPublication]) -> list[Publication]:
        """Insert unless the key exists; return the stored rows in the order given (caller holds lock)."""
        stored: list[Publication] = []
        for pub in publications:
            if pub.pub_key not in self.publications:
                self.publications[pub.pub_key] = Publication(
                    id=next(self._ids), run_id=run_id, pub_key=pub.pub_key, kind=PublicationKind(pub.kind),
                    facts_view_hash=pub.facts_view_hash, event_type=pub.event_type, topic=pub.topic,
                    msg_key=None if pub.msg_key is None else bytes(pub.msg_key), payload=bytes(pub.payload),
                    headers=dict(pub.headers), created_at=self.clock(), published_at=None,
                    kafka_partition=None, kafka_offset=None,
                )
            stored.append(self.publications[pub.pub_key])
        return stored

    def advance(self, run_id: str, epoch: int, status: RunStatus | str, *, ledger_seq: int,
                ledger_head_hash: str | None, reason_code: str | None = None, plan_hash: str | None = None,
                facts_view_hash: str | None = None, next_check_at: datetime | None = None,
                publications: Sequence[NewPublication] = ()) -> list[Publication]:
        """The epoch-checked ``advance_run`` statement (any session may send it).

        Raises:
            StaleEpochError: no row with this run id and epoch. ValueError: bad publications.
        """
        keys = [p.pub_key for p in publications]
        if len(set(keys)) != len(keys):
            raise ValueError("publications must have distinct pub_keys")
        for pub in publications:
            if not pub.pub_key.startswith(f"{run_id}:"):
                raise ValueError(f"publication {pub.pub_key!r} does not belong to run {run_id}")
        with self.lock:
            self.statement()
            row = self.runs.get(run_id)
            if row is None or row.lease_epoch != epoch:
                raise StaleEpochError(f"run {run_id}: lease epoch {epoch} is not current; write rejected")
            self.runs[run_id] = replace(
                row, status=RunStatus(status), reason_code=reason_code,
                plan_hash=plan_hash if plan_hash is not None else row.plan_hash,
                facts_view_hash=facts_view_hash if facts_view_hash is not None else row.facts_view_hash,
                ledger_seq=ledger_seq, ledger_head_hash=ledger_head_hash, next_check_at=next_check_at,
                updated_at=self.clock(),
            )
            return self.store_publications(run_id, publications)


class InMemoryRunIndex:
    """The run index and outbox over an :class:`InMemoryDatabase` (implements ``RunIndex``)."""

    def __init__(self, db: InMemoryDatabase) -> None:
        self.db = db

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def admit(self, run: NewRun) -> Admission:
        """Insert-or-get on run id and equivalence key."""
        db = self.db
        with db.lock:
            db.statement()
            existing_id = run.run_id if run.run_id in db.runs else db.by_equivalence_key.get(run.run_equivalence_key)
            if existing_id is not None:
                row = db.runs[existing_id]
                same = row.intent_fingerprint == run.intent_fingerprint and row.run_id == run.run_id
                return Admission(AdmissionOutcome.DUPLICATE if same else AdmissionOutcome.COLLISION, row)
            now = db.clock()
            row = RunRow(
                run_id=run.run_id, run_equivalence_key=run.run_equivalence_key,
                intent_fingerprint=run.intent_fingerprint, tenant_id=run.tenant_id, namespace=run.namespace,
                scenario_id=run.scenario_id, status=run.status, reason_code=run.reason_code, plan_hash=None,
                facts_view_hash=None, ledger_seq=-1, ledger_head_hash=None, lease_epoch=0,
                deadline=run.deadline, next_check_at=run.next_check_at, intent=dict(run.intent),
                evidence_root=run.evidence_root, created_at=now, updated_at=now,
            )
            db.runs[run.run_id] = row
            db.by_equivalence_key[run.run_equivalence_key] = run.run_id
            return Admission(AdmissionOutcome.NEW, row)

    def get(self, run_id: str) -> RunRow | None:
        """The run's row."""
        with self.db.lock:
            self.db.statement()
            return self.db.runs.get(run_id)

    def list_runs(self, status: RunStatus | str | None = None, tenant: str | None = None,
                  since: datetime | None = None, limit: int = 100) -> list[RunRow]:
        """Newest first, filtered."""
        with self.db.lock:
            self.db.statement()
            rows = [r for r in self.db.runs.values()
                    if (status is None or r.status == RunStatus(status))
                    and (tenant is None or r.tenant_id == tenant)
                    and (since is None or r.created_at >= since)]
        rows.sort(key=lambda r: r.run_id)
        rows.sort(key=lambda r: r.created_at, reverse=True)
        return rows[:limit]

    def count_by_status(self) -> dict[str, int]:
        """Runs per status."""
        with self.db.lock:
            self.db.statement()
            return dict(Counter(r.status.value for r in self.db.runs.values()))

    def due_for_check(self, now: datetime, limit: int = 100, *,
                      stale_before: datetime | None = None) -> list[RunRow]:
        """Due WAITING runs and abandoned ADMITTED runs, most overdue first."""
        def due(r: RunRow) -> bool:
            if r.status is RunStatus.WAITING:
                return any(t is not None and t <= now for t in (r.next_check_at, r.deadline))
            return (r.status is RunStatus.ADMITTED and stale_before is not None
                    and r.updated_at <= stale_before)

        def order(r: RunRow) -> tuple[datetime, str]:
            times = [t for t in (r.next_check_at, r.deadline) if t is not None]
            return (min(times) if times else r.updated_at, r.run_id)

        with self.db.lock:
            self.db.statement()
            return sorted(filter(due, self.db.runs.values()), key=order)[:limit]

    def _pubs(self, keep: Any) -> list[Publication]:
        with self.db.lock:
            self.db.statement()
            return sorted((p for p in self.db.publications.values() if keep(p)), key=lambda p: p.id)

    def publications(self, run_id: str) -> list[Publication]:
        """A run's publications, oldest first."""
        return self._pubs(lambda p: p.run_id == run_id)

    def publication(self, pub_key: str) -> Publication | None:
        """One publication by key."""
        with self.db.lock:
            self.db.statement()
            return self.db.publications.get(pub_key)

    def pending_publications(self, run_id: str) -> list[Publication]:
        """A run's unpublished publications."""
        return self._pubs(lambda p: p.run_id == run_id and p.published_at is None)

    def unpublished(self, limit: int = 1000) -> list[Publication]:
        """Every unpublished publication, oldest first."""
        return self._pubs(lambda p: p.published_at is None)[:limit]

    def mark_published(self, pub_key: str, partition: int, offset: int) -> None:
        """First recorded position wins."""
        db = self.db
        with db.lock:
            db.statement()
            pub = db.publications.get(pub_key)
            if pub is not None and pub.published_at is None:
                db.publications[pub_key] = replace(pub, published_at=db.clock(), kafka_partition=partition,
                                                   kafka_offset=offset)

    def record_operator_action(self, operator: str, action: str, *, allowed: bool,
                               detail: Mapping[str, Any] | None = None) -> None:
        """Append an audit row."""
        with self.db.lock:
            self.db.statement()
            self.db.operator_actions.append({"operator": operator, "action": action, "allowed": allowed,
                                             "detail": dict(detail or {}), "at": self.db.clock()})

    def operator_actions(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest audit rows first."""
        with self.db.lock:
            self.db.statement()
            return list(reversed(self.db.operator_actions))[:limit]

    def restore_run(self, row: Mapping[str, Any]) -> None:
        """Upsert a rebuilt row; the epoch never goes backwards."""
        db = self.db
        with db.lock:
            db.statement()
            old = db.runs.get(row["run_id"])
            now = db.clock()
            epoch = max(int(row["lease_epoch"]), old.lease_epoch if old is not None else 0)
            db.runs[row["run_id"]] = RunRow(
                run_id=row["run_id"], run_equivalence_key=row["run_equivalence_key"],
                intent_fingerprint=row["intent_fingerprint"], tenant_id=row["tenant_id"],
                namespace=row["namespace"], scenario_id=row["scenario_id"], status=RunStatus(row["status"]),
                reason_code=row["reason_code"], plan_hash=row["plan_hash"], facts_view_hash=row["facts_view_hash"],
                ledger_seq=int(row["ledger_seq"]), ledger_head_hash=row["ledger_head_hash"], lease_epoch=epoch,
                deadline=row["deadline"], next_check_at=row["next_check_at"], intent=dict(row["intent"]),
                evidence_root=row["evidence_root"], created_at=old.created_at if old is not None else now,
                updated_at=now,
            )
            db.by_equivalence_key[row["run_equivalence_key"]] = row["run_id"]

    def restore_publication(self, pub: NewPublication, *, run_id: str, published: bool) -> None:
        """Insert unless the key exists."""
        db = self.db
        with db.lock:
            db.statement()
            if pub.pub_key in db.publications:
                return
            stored = db.store_publications(run_id, [pub])[0]
            if published:
                db.publications[pub.pub_key] = replace(stored, published_at=db.clock())


class InMemoryLease:
    """A held lease of one :class:`InMemoryLeases` session (implements ``Lease``)."""

    def __init__(self, db: InMemoryDatabase, session: object, *, run_id: str, epoch: int, row: RunRow) -> None:
        self._db = db
        self._session: object | None = session
        self._run_id = run_id
        self._lock_key = run_lock_key(run_id)
        self._epoch = epoch
        self._row = row

    @property
    def run_id(self) -> str:
        """The leased run."""
        return self._run_id

    @property
    def epoch(self) -> int:
        """The fencing epoch of this acquisition."""
        return self._epoch

    @property
    def row(self) -> RunRow | None:
        """The row as read on acquisition."""
        return self._row

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def _held(self) -> bool:
        return self._session is not None and self._db.locks.get(self._lock_key) is self._session

    def _require(self) -> None:
        if not self._held():
            raise LeaseLostError(f"lease on run {self._run_id} is no longer held")

    def advance(self, status: RunStatus | str, *, ledger_seq: int, ledger_head_hash: str | None,
                reason_code: str | None = None, plan_hash: str | None = None, facts_view_hash: str | None = None,
                next_check_at: datetime | None = None,
                publications: Sequence[NewPublication] = ()) -> list[Publication]:
        """Epoch-checked advance on this session."""
        with self._db.lock:
            self._require()
            try:
                return self._db.advance(self._run_id, self._epoch, status, ledger_seq=ledger_seq,
                                        ledger_head_hash=ledger_head_hash, reason_code=reason_code,
                                        plan_hash=plan_hash, facts_view_hash=facts_view_hash,
                                        next_check_at=next_check_at, publications=publications)
            except StaleEpochError:
                self._drop()
                raise

    def touch_head(self, ledger_seq: int, ledger_head_hash: str) -> None:
        """Epoch-checked head move."""
        db = self._db
        with db.lock:
            self._require()
            db.statement()
            row = db.runs.get(self._run_id)
            if row is None or row.lease_epoch != self._epoch:
                self._drop()
                raise StaleEpochError(f"run {self._run_id}: lease epoch {self._epoch} is not current")
            db.runs[self._run_id] = replace(row, ledger_seq=ledger_seq, ledger_head_hash=ledger_head_hash,
                                            updated_at=db.clock())

    def is_held(self) -> bool:
        """Lock held by this session and epoch current."""
        with self._db.lock:
            if self._session is None:
                return False
            self._db.statement()
            row = self._db.runs.get(self._run_id)
            held = self._held() and row is not None and row.lease_epoch == self._epoch
            if not held:
                self._drop()
            return held

    def _drop(self) -> None:
        if self._held():
            del self._db.locks[self._lock_key]
        self._session = None

    def release(self) -> None:
        """Unlock (idempotent)."""
        with self._db.lock:
            if self._session is None:
                return
            self._db.statement()
            self._drop()


class InMemoryLeases:
    """Advisory locks + fencing epochs over an :class:`InMemoryDatabase` (implements ``Leases``).

    One instance plays one worker process: :meth:`crash` ends all its sessions, which frees
    their locks the way Postgres does when a backend's client dies.
    """

    def __init__(self, db: InMemoryDatabase) -> None:
        self.db = db
        self._sessions: list[object] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.crash()

    def acquire(self, run_id: str, *, wait: float = 0.0) -> InMemoryLease:
        """Try the lock and bump the epoch; retry while busy for up to ``wait`` seconds."""
        key = run_lock_key(run_id)
        deadline = time.monotonic() + wait
        while True:
            db = self.db
            with db.lock:
                db.statement()
                if key not in db.locks:
                    row = db.runs.get(run_id)
                    if row is None:
                        raise RunNotFoundError(f"run {run_id} is not in the index")
                    session = object()
                    self._sessions.append(session)
                    db.locks[key] = session
                    row = replace(row, lease_epoch=row.lease_epoch + 1, updated_at=db.clock())
                    db.runs[run_id] = row
                    return InMemoryLease(db, session, run_id=run_id, epoch=row.lease_epoch, row=row)
            if time.monotonic() >= deadline:
                raise LeaseBusyError(f"run {run_id} is leased by another session")
            time.sleep(0.005)

    def crash(self) -> None:
        """End every session of this "process": its locks are freed, its leases are lost."""
        with self.db.lock:
            sessions = set(map(id, self._sessions))
            for key, owner in list(self.db.locks.items()):
                if id(owner) in sessions:
                    del self.db.locks[key]
            self._sessions.clear()


# --------------------------------------------------------------------------- kafka
@dataclass(frozen=True)
class SentMessage:
    """One message the :class:`StubEventSink` acknowledged."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str | None:
        """A header's value as text, if present."""
        for key, value in self.headers:
            if key == name:
                return value.decode()
        return None

    def as_record(self) -> Record:
        """The message as a consumer would see it."""
        return Record(self.topic, self.partition, self.offset, self.key, self.value, self.headers, None)


class StubEventSink:
    """A broker stand-in: acknowledges every message at once and keeps it (implements ``EventSink``).

    Partition = crc32-free stable choice (sum of key bytes modulo ``partitions``), so one key
    always lands on one partition and per-key order is observable.
    """

    def __init__(self, partitions: int = 4) -> None:
        self.partitions = partitions
        self.sent: list[SentMessage] = []
        self._offsets: Counter[tuple[str, int]] = Counter()
        self._failures: list[BaseException] = []
        self._lock = threading.Lock()

    def fail_next(self, times: int = 1, error: BaseException | None = None) -> None:
        """Fail the next ``times`` deliveries (default: KafkaUnavailableError)."""
        with self._lock:
            self._failures.extend([error or KafkaUnavailableError("stub broker unavailable")] * times)

    def messages(self, topic: str) -> list[SentMessage]:
        """What was acknowledged on ``topic``, in order."""
        with self._lock:
            return [m for m in self.sent if m.topic == topic]

    def send(self, topic: str, *, key: bytes | None, value: bytes, headers: Headers | None = None) -> Future[Delivered]:
        """Acknowledge at once (or fail, if told to)."""
        future: Future[Delivered] = Future()
        with self._lock:
            if self._failures:
                future.set_exception(self._failures.pop(0))
                return future
            partition = sum(key or b"") % self.partitions
            offset = self._offsets[(topic, partition)]
            self._offsets[(topic, partition)] += 1
            encoded = tuple((k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in (headers or ()))
            self.sent.append(SentMessage(topic, partition, offset, key, bytes(value), encoded))
        future.set_result(Delivered(topic, partition, offset))
        return future

    def send_and_wait(self, topic: str, *, key: bytes | None, value: bytes, headers: Headers | None = None,
                      timeout: float | None = None) -> Delivered:
        """:meth:`send`, resolved."""
        return self.send(topic, key=key, value=value, headers=headers).result()

    def read_slice(self, topic: str, partition: int, *, from_offset: int | None = None,
                   from_time_ms: int | None = None, to_offset: int | None = None,
                   idle_timeout: float = 5.0) -> Iterator[Record]:
        """What was sent to ``topic[partition]`` (implements ``PartitionReader``)."""
        for message in self.messages(topic):
            if message.partition != partition or (from_offset is not None and message.offset < from_offset):
                continue
            if to_offset is not None and message.offset >= to_offset:
                return
            yield message.as_record()
