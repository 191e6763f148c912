"""An in-memory Postgres: the run index, the outbox, advisory locks and fencing epochs."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from worker.app.testing.clock import ManualClock
from worker.core.identity import run_lock_key
from worker.core.index import Admission, AdmissionOutcome, NewPublication, NewRun, Publication, PublicationKind, RunRow
from worker.core.models import RunStatus
from worker.errors import LeaseBusyError, LeaseLostError, RunNotFoundError, StaleEpochError

__all__ = ["InMemoryDatabase", "InMemoryLease", "InMemoryLeases", "InMemoryRunIndex"]


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
                  since: datetime | None = None, limit: int = 100, reason: str | None = None) -> list[RunRow]:
        """Newest first, filtered."""
        with self.db.lock:
            self.db.statement()
            rows = [r for r in self.db.runs.values()
                    if (status is None or r.status == RunStatus(status))
                    and (tenant is None or r.tenant_id == tenant)
                    and (since is None or r.created_at >= since)
                    and (reason is None or r.reason_code == reason)]
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
            # The in-memory database has one role, like a local superuser session.
            self.db.operator_actions.append({"operator": operator, "db_role": "postgres", "action": action,
                                             "allowed": allowed, "detail": dict(detail or {}),
                                             "at": self.db.clock()})

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


