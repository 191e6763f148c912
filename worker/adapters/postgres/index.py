"""The run index and the publication outbox: reads and idempotent writes (contract §5, §6).

Postgres holds SR's *rebuildable* index (S3 is the truth):

* ``sr_runs`` — one row per admitted run (status, ledger head, fencing ``lease_epoch``...);
* ``sr_publications`` — the outbox: the exact bytes of every event SR publishes.

Epoch-checked, state-advancing writes are NOT here: they run on the lease connection
(:mod:`worker.adapters.postgres.leases`), so a session that lost its advisory lock cannot write.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from psycopg.types.json import Jsonb

from worker.adapters.postgres.config import PgConfig
from worker.adapters.postgres.pool import ConnectionPool
from worker.adapters.postgres.queries import Query, RoundTripCounter, execute, query, retrying
from worker.core.index import (
    Admission,
    AdmissionOutcome,
    NewPublication,
    NewRun,
    OutboxStats,
    Publication,
    PublicationKind,
    RunRow,
)
from worker.core.models import RunStatus
from worker.errors import PostgresError

__all__ = ["MAX_LIST_LIMIT", "RunIndex", "publication_params"]

_T = TypeVar("_T")

#: Largest ``limit`` a listing method accepts.
MAX_LIST_LIMIT: Final = 10_000


def publication_params(publications: Sequence[NewPublication]) -> dict[str, list[Any]]:
    """Column arrays for the ``unnest`` in ``advance_run``.

    Raises:
        ValueError: two publications share a pub_key.
    """
    keys = [p.pub_key for p in publications]
    if len(set(keys)) != len(keys):
        raise ValueError("publications must have distinct pub_keys")
    return {
        "pub_keys": keys,
        "kinds": [PublicationKind(p.kind).value for p in publications],
        "fv_hashes": [p.facts_view_hash for p in publications],
        "event_types": [p.event_type for p in publications],
        "topics": [p.topic for p in publications],
        "msg_keys": [None if p.msg_key is None else bytes(p.msg_key) for p in publications],
        "payloads": [bytes(p.payload) for p in publications],
        "headers": [Jsonb(dict(p.headers)) for p in publications],
    }


# --------------------------------------------------------------------------- the run index
class RunIndex:
    """Reads and idempotent writes of the run index and the outbox.

    Use as a context manager (connects in ``__enter__``). Thread-safe: a small pool of
    autocommit connections is shared by all threads. Every method is ONE round trip unless
    a retryable error forces a retry (then each attempt counts).
    """

    def __init__(self, config: PgConfig, counter: RoundTripCounter | None = None) -> None:
        self._config = config
        self.counter = counter if counter is not None else RoundTripCounter()
        self._pool = ConnectionPool(config, keepalives=True)

    def __enter__(self) -> Self:
        """Open the pool (one connection now, more on demand).

        Raises:
            PostgresUnavailableError: the server is unreachable.
            PostgresError: the DSN is invalid.
        """
        self._pool.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Close every connection."""
        self._pool.close()

    def close(self) -> None:
        """Close every connection (same as leaving the ``with`` block)."""
        self._pool.close()

    # ------------------------------------------------------------------ plumbing
    def _once(self, q: Query, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        with self._pool.connection() as conn:
            return execute(conn, q, params, self.counter)

    def _run(self, name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self._call(self._once, query(name), params)

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        return retrying(self._config)(fn, *args)

    # ------------------------------------------------------------------ runs
    def admit(self, run: NewRun) -> Admission:
        """Insert the run unless it (or its equivalence key) exists; one round trip.

        NEW: inserted now. DUPLICATE: it exists with the same fingerprint (the caller must
        still resume it if its status shows it never progressed, e.g. a crash right after
        admission, or a retry of this very call whose first reply was lost). COLLISION: the
        run id or equivalence key exists with a different fingerprint; nothing is changed.

        Raises:
            PostgresUnavailableError: Postgres stayed unavailable for every attempt.
            PostgresError: a database error (e.g. a schema constraint rejected the row).
        """
        params = {
            "run_id": run.run_id,
            "run_equivalence_key": run.run_equivalence_key,
            "intent_fingerprint": run.intent_fingerprint,
            "tenant_id": run.tenant_id,
            "namespace": run.namespace,
            "scenario_id": run.scenario_id,
            "status": RunStatus(run.status).value,
            "reason_code": run.reason_code,
            "deadline": run.deadline,
            "next_check_at": run.next_check_at,
            "intent": Jsonb(dict(run.intent)),
            "evidence_root": run.evidence_root,
        }
        rows = self._run("admit_run", params)
        if not rows:
            # A concurrent admission committed between our snapshot and our INSERT: the row
            # exists now and a second look (one more round trip, only in this race) sees it.
            rows = self._run("admit_run", params)
        if not rows:
            raise PostgresError(f"admission of run {run.run_id} returned no row")
        # Prefer the row with our run_id (a different run_id can only share the key if a
        # caller broke the run_id = f(equivalence key) rule).
        rec = next((r for r in rows if r["run_id"] == run.run_id), rows[0])
        row = RunRow.from_record(rec)
        if rec["inserted"]:
            outcome = AdmissionOutcome.NEW
        elif (row.intent_fingerprint == run.intent_fingerprint and row.run_id == run.run_id
              and row.run_equivalence_key == run.run_equivalence_key):
            outcome = AdmissionOutcome.DUPLICATE
        else:
            outcome = AdmissionOutcome.COLLISION
        return Admission(outcome=outcome, row=row)

    def get(self, run_id: str) -> RunRow | None:
        """The run's index row, or None; one round trip.

        Raises:
            PostgresUnavailableError: Postgres stayed unavailable for every attempt.
            PostgresError: a database error.
        """
        rows = self._run("get_run", {"run_id": run_id})
        return RunRow.from_record(rows[0]) if rows else None

    def list_runs(self, status: RunStatus | str | None = None, tenant: str | None = None,
                  since: datetime | None = None, limit: int = 100, reason: str | None = None) -> list[RunRow]:
        """Runs newest first, optionally filtered; one round trip.

        Args:
            status: only runs in this status.
            tenant: only this tenant's runs.
            since: only runs created at or after this (aware) time.
            limit: at most this many rows (1..10000).
            reason: only runs whose ``reason_code`` is this (e.g. ``ENGINE_RUNNING``).

        Raises:
            ValueError: ``limit`` out of range or unknown status.
            PostgresUnavailableError: Postgres stayed unavailable for every attempt.
            PostgresError: a database error.
        """
        self._check_limit(limit)
        rows = self._run("list_runs", {
            "status": None if status is None else RunStatus(status).value,
            "tenant_id": tenant,
            "since": since,
            "limit": limit,
            "reason_code": reason,
        })
        return [RunRow.from_record(r) for r in rows]

    def count_by_status(self) -> dict[str, int]:
        """How many runs the index holds in each status; one round trip (a single GROUP BY).

        Returns:
            status -> number of runs; statuses with no run are absent.

        Raises:
            PostgresUnavailableError: Postgres stayed unavailable for every attempt.
            PostgresError: a database error.
        """
        rows = self._run("count_by_status", {})
        return {str(r["status"]): int(r["n"]) for r in rows}

    def outbox_stats(self) -> OutboxStats:
        """The outbox backlog: unpublished publication rows and the age of the oldest (seconds,
        by the database's clock; 0.0 when there is none); one round trip.

        Raises:
            PostgresUnavailableError: Postgres stayed unavailable for every attempt.
            PostgresError: a database error.
        """
        row = self._run("outbox_stats", {})[0]
        return OutboxStats(backlog=int(row["backlog"]), oldest_age_seconds=float(row["oldest_age_seconds"]))

    def due_for_check(self, now: datetime, limit: int = 100, *, stale_before: datetime | None = None) -> list[RunRow]:
        """Runs to look at again; one round trip.

        WAITING runs whose ``next_check_at`` or ``deadline`` is at or before ``now``, and — when
        ``stale_before`` is given — ADMITTED runs not touched since then (a worker died
        mid-step and no message will re-drive them).

        Raises:
            ValueError: ``limit`` out of range.
            PostgresUnavailableError: Postgres stayed unavailable for every attempt.
            PostgresError: a database error.
        """
        self._check_limit(limit)
        rows = self._run("due_for_check", {"now": now, "limit": limit, "stale_before": stale_before})
        return [RunRow.from_record(r) for r in rows]

    # ------------------------------------------------------------------ publications
    def publications(self, run_id: str) -> list[Publication]:
        """Every stored publication of the run (published or not), oldest first; one round trip.

        Raises:
            PostgresUnavailableError: Postgres stayed unavailable for every attempt.
            PostgresError: a database error.
        """
        return [Publication.from_record(r) for r in self._run("run_publications", {"run_id": run_id})]

    def publication(self, pub_key: str) -> Publication | None:
        """The stored publication with ``pub_key``, if any; one round trip.

        Raises:
            PostgresUnavailableError: Postgres stayed unavailable for every attempt.
            PostgresError: a database error.
        """
        rows = self._run("publication_by_key", {"pub_key": pub_key})
        return Publication.from_record(rows[0]) if rows else None

    def pending_publications(self, run_id: str) -> list[Publication]:
        """The run's not-yet-published publications, oldest first; one round trip.

        Raises:
            PostgresUnavailableError: Postgres stayed unavailable for every attempt.
            PostgresError: a database error.
        """
        return [Publication.from_record(r) for r in self._run("pending_publications", {"run_id": run_id})]

    def unpublished(self, limit: int = 1000) -> list[Publication]:
        """Not-yet-published publications of all runs, oldest first (crash re-drive); one round trip.

        Raises:
            ValueError: ``limit`` out of range.
            PostgresUnavailableError: Postgres stayed unavailable for every attempt.
            PostgresError: a database error.
        """
        self._check_limit(limit)
        return [Publication.from_record(r) for r in self._run("unpublished", {"limit": limit})]

    def mark_published(self, pub_key: str, partition: int, offset: int) -> None:
        """Record that ``pub_key`` reached Kafka at (partition, offset); idempotent, one round trip.

        A publication already marked keeps its first recorded position.

        Raises:
            PostgresError: no publication has this key (a caller bug).
            PostgresUnavailableError: Postgres stayed unavailable for every attempt.
        """
        rows = self._run("mark_published", {"pub_key": pub_key, "partition": partition, "offset": offset})
        if not rows:
            raise PostgresError(f"no publication with key {pub_key!r}")

    # ------------------------------------------------------------------ operators
    def record_operator_action(self, operator: str, action: str, *, allowed: bool,
                               detail: Mapping[str, Any] | None = None) -> None:
        """Append one operator action (allowed or refused) to the audit table; one round trip.
        The row records the Postgres role of this session (``session_user``, the column's
        default) beside the self-declared ``operator`` (contract §10).

        Raises:
            PostgresUnavailableError: Postgres stayed unavailable for every attempt.
            PostgresError: a database error.
        """
        self._run("record_operator_action", {"operator": operator, "action": action, "allowed": allowed,
                                             "detail": Jsonb(dict(detail or {}))})

    def operator_actions(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest operator actions (``operator``, ``db_role``, ``action``, ``allowed``,
        ``detail``, ``at``), newest first; one round trip.

        Raises:
            PostgresUnavailableError / PostgresError: as for every query.
        """
        self._check_limit(limit)
        return self._run("operator_actions", {"limit": limit})

    # ------------------------------------------------------------------ rebuild
    def restore_run(self, row: Mapping[str, Any]) -> None:
        """Upsert a run row reconstructed from S3 (``sr index rebuild``); one round trip.

        ``row`` carries the ``restore_run`` columns; ``intent`` is the Avro-shaped dict. The
        stored lease epoch never decreases.

        Raises:
            PostgresUnavailableError / PostgresError: as for every query.
        """
        params = dict(row)
        params["intent"] = Jsonb(dict(row["intent"]))
        self._run("restore_run", params)

    def restore_publication(self, pub: NewPublication, *, run_id: str, published: bool) -> None:
        """Insert a publication reconstructed from S3 unless its key exists; one round trip.

        Raises:
            PostgresUnavailableError / PostgresError: as for every query.
        """
        self._run("restore_publication", {
            "run_id": run_id, "pub_key": pub.pub_key, "kind": pub.kind, "facts_view_hash": pub.facts_view_hash,
            "event_type": pub.event_type, "topic": pub.topic, "msg_key": pub.msg_key, "payload": pub.payload,
            "headers": Jsonb(dict(pub.headers)), "published": published,
        })

    @staticmethod
    def _check_limit(limit: int) -> None:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
