"""Postgres adapter: migrations, the run index and the publication outbox (contract §5, §6).

Postgres holds SR's *rebuildable* index (S3 is the truth) and the coordination state:

* ``sr_runs`` — one row per admitted run (status, ledger head, fencing ``lease_epoch``...);
* ``sr_publications`` — the outbox: the exact bytes of every event SR publishes.

Conventions of this module:

* SQL lives in named blocks in ``sql/queries.sql`` (loaded once, :func:`load_queries`);
  schema changes are versioned files ``sql/NNNN_name.sql`` applied by :func:`migrate`.
* Every statement sent counts as one round trip on a shared :class:`RoundTripCounter`.
* psycopg exceptions are translated at this edge: ``OperationalError``/``InterfaceError``
  become :class:`~worker.errors.PostgresUnavailableError` (retryable), any other
  ``psycopg.Error`` becomes :class:`~worker.errors.PostgresError`. Only retryable errors are
  retried (tenacity, bounded attempts, capped exponential backoff with jitter).
* No network I/O in constructors: pools connect in ``__enter__``.
* Epoch-checked, state-advancing writes are NOT here: they run on the lease connection
  (:mod:`worker.adapters.postgres.leases`), so a session that lost its advisory lock cannot write.

Session-level advisory locks need a direct connection or *session* pooling: SR does not
work behind PgBouncer in transaction-pooling mode.
"""

from __future__ import annotations

import hashlib
import math
import queue
import re
import select
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import psycopg
import psycopg.conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from worker.core.index import (
    Admission,
    AdmissionOutcome,
    NewPublication,
    NewRun,
    Publication,
    PublicationKind,
    RunRow,
)
from worker.core.models import RunStatus
from worker.errors import PermanentError, PostgresError, PostgresUnavailableError, RetryableError

__all__ = [
    "MIGRATION_LOCK_KEY",
    "Admission",
    "AdmissionOutcome",
    "Connection",
    "ConnectionPool",
    "Migration",
    "MigrationError",
    "NewPublication",
    "NewRun",
    "PgConfig",
    "Publication",
    "PublicationKind",
    "Query",
    "RoundTripCounter",
    "RunIndex",
    "RunRow",
    "connect",
    "execute",
    "load_migrations",
    "load_queries",
    "migrate",
    "publication_params",
    "query",
    "retrying",
]

#: A psycopg connection as SR uses it (autocommit; rows fetched through ``dict_row`` cursors).
Connection = psycopg.Connection[Any]

_T = TypeVar("_T")

_SQL_PACKAGE: Final = "worker.adapters.postgres"
_SQL_DIR: Final = "sql"
_QUERIES_FILE: Final = "queries.sql"
_MIGRATION_RE: Final = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql")
_QUERY_NAME_RE: Final = re.compile(r"^--\s*name:\s*(?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
#: Key of the transaction-level advisory lock that serialises migrators (ASCII "sr_migr8").
MIGRATION_LOCK_KEY: Final = 0x73725F6D69677238
_MAX_LIST_LIMIT: Final = 10_000
_FIRST_BACKOFF: Final = 0.05  # seconds


class MigrationError(PostgresError, PermanentError):
    """The migration files and the database disagree (a changed or malformed migration)."""

    code = "MIGRATION_INVALID"


# --------------------------------------------------------------------------- configuration
class PgConfig(BaseModel):
    """Connection settings shared by the run index and the lease manager.

    All durations are in **seconds** (converted to milliseconds only when handed to Postgres).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dsn: SecretStr
    #: Seconds to wait for a TCP connection + authentication (libpq rounds up to whole seconds).
    connect_timeout: float = Field(default=5.0, gt=0)
    #: Seconds after which the server cancels a single statement (``statement_timeout``).
    statement_timeout: float = Field(default=30.0, gt=0)
    #: Attempts (first try included) for an operation failing with a retryable error.
    max_attempts: int = Field(default=5, ge=1)
    #: Upper bound, in seconds, of one backoff pause between attempts.
    backoff_max: float = Field(default=5.0, gt=0)
    #: Connections per pool (the run index and the lease manager each have their own pool).
    pool_size: int = Field(default=8, ge=1)


class RoundTripCounter:
    """Thread-safe count of statements sent to Postgres (each statement = one round trip).

    Args:
        on_query: optional observer called by :func:`execute` after every statement (success
            or failure) with its duration in **seconds** — the hook for a latency histogram.
            It runs on the calling thread, so it must be fast and must not raise. It may also
            be set later through the :attr:`on_query` attribute.
    """

    def __init__(self, on_query: Callable[[float], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self.on_query = on_query

    def observe(self, seconds: float) -> None:
        """Report one statement's duration (seconds) to :attr:`on_query`, if set."""
        hook = self.on_query
        if hook is not None:
            hook(seconds)

    def add(self, n: int = 1) -> None:
        """Count ``n`` more round trips."""
        with self._lock:
            self._count += n

    def snapshot(self) -> int:
        """Round trips counted so far."""
        with self._lock:
            return self._count

    def reset(self) -> None:
        """Start counting from zero again."""
        with self._lock:
            self._count = 0


# --------------------------------------------------------------------------- named queries
@dataclass(frozen=True, slots=True)
class Query:
    """One named SQL statement from ``queries.sql``."""

    name: str
    sql: bytes


def _parse_queries(text: str) -> dict[str, Query]:
    """Split a ``-- name: x`` annotated SQL file into named queries.

    Raises:
        PostgresError: a name is repeated or a block is empty (a packaging bug).
    """
    matches = list(_QUERY_NAME_RE.finditer(text))
    found: dict[str, Query] = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end():end].strip().rstrip(";").strip()
        name = match.group("name")
        if name in found or not body:
            raise PostgresError(f"queries.sql: block {name!r} is duplicated or empty")
        found[name] = Query(name=name, sql=body.encode())
    return found


_QUERIES_LOCK = threading.Lock()
_QUERIES: dict[str, Query] | None = None


def load_queries() -> Mapping[str, Query]:
    """All named statements of ``sql/queries.sql`` (read and parsed once per process).

    Raises:
        PostgresError: the file is missing or malformed (a packaging bug).
    """
    global _QUERIES  # noqa: PLW0603 - a load-once cache
    with _QUERIES_LOCK:
        if _QUERIES is None:
            try:
                text = resources.files(_SQL_PACKAGE).joinpath(_SQL_DIR, _QUERIES_FILE).read_text("utf-8")
            except OSError as exc:
                raise PostgresError(f"cannot read {_SQL_DIR}/{_QUERIES_FILE}: {exc}") from exc
            _QUERIES = _parse_queries(text)
        return _QUERIES


def query(name: str) -> Query:
    """The named statement ``name`` from ``queries.sql``.

    Raises:
        PostgresError: no such statement (a programming error).
    """
    try:
        return load_queries()[name]
    except KeyError as exc:
        raise PostgresError(f"queries.sql has no statement named {name!r}") from exc


# --------------------------------------------------------------------------- execution
def _describe(exc: psycopg.Error) -> str:
    """A one-line description of a psycopg error (SQLSTATE + first message line; no DSN)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    return f"{type(exc).__name__}{state}: {first}"


def execute(
    conn: Connection,
    q: Query,
    params: Mapping[str, Any] | None = None,
    counter: RoundTripCounter | None = None,
) -> list[dict[str, Any]]:
    """Send one statement (one round trip) and return its rows as dicts.

    With a ``counter``, the statement is counted before it is sent and its duration (seconds,
    including fetching the rows) is reported to ``counter.on_query`` afterwards.

    Raises:
        PostgresUnavailableError: the connection failed or was lost, or the statement was
            cancelled (statement timeout, lock timeout, serialization failure).
        PostgresError: any other database error (constraint violation, bad SQL...).
    """
    if counter is not None:
        counter.add()
    started = time.perf_counter()
    try:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(q.sql, params)
            if cur.description is None:
                return []
            return cur.fetchall()
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise PostgresUnavailableError(f"{q.name}: {_describe(exc)}") from exc
    except psycopg.Error as exc:
        raise PostgresError(f"{q.name}: {_describe(exc)}") from exc
    finally:
        if counter is not None:
            counter.observe(time.perf_counter() - started)


def retrying(config: PgConfig) -> Retrying:
    """The retry policy for idempotent operations: only :class:`RetryableError`, bounded.

    ``config.max_attempts`` attempts in all; pauses are "full jitter" exponential backoff
    (uniform in [0, 50 ms * 2**n]), each capped at ``config.backoff_max`` seconds. The last
    error is re-raised.
    """
    return Retrying(
        stop=stop_after_attempt(config.max_attempts),
        wait=wait_random_exponential(multiplier=_FIRST_BACKOFF, max=config.backoff_max),
        retry=retry_if_exception_type(RetryableError),
        reraise=True,
    )


def _connect_kwargs(config: PgConfig, *, keepalives: bool, with_statement_timeout: bool) -> dict[str, Any]:
    """libpq parameters added to the DSN (no extra round trip: all set at connection start).

    Raises:
        PostgresError: the DSN is not a valid libpq connection string.
    """
    try:
        given = psycopg.conninfo.conninfo_to_dict(config.dsn.get_secret_value())
    except psycopg.Error:
        # Deliberately not chained: the parser's message may quote parts of the secret DSN.
        raise PostgresError("invalid Postgres DSN (check SR_PG_DSN)") from None
    kwargs: dict[str, Any] = {"connect_timeout": max(1, math.ceil(config.connect_timeout))}
    if "application_name" not in given:
        kwargs["application_name"] = "scenario-runner"
    if with_statement_timeout:
        timeout_ms = max(1, round(config.statement_timeout * 1000))
        options = str(given.get("options") or "").strip()
        kwargs["options"] = f"{options} -c statement_timeout={timeout_ms}".strip()
    if keepalives:
        # Detect a dead peer within ~11 s (5 s idle + 3 probes every 2 s).
        kwargs.update(keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
    return kwargs


def connect(config: PgConfig, *, keepalives: bool = False, autocommit: bool = True,
            with_statement_timeout: bool = True) -> Connection:
    """Open one connection (TCP + authentication; no statement is sent).

    Raises:
        PostgresUnavailableError: the server cannot be reached or refused the connection.
        PostgresError: the DSN is invalid.
    """
    kwargs = _connect_kwargs(config, keepalives=keepalives, with_statement_timeout=with_statement_timeout)
    try:
        return psycopg.connect(config.dsn.get_secret_value(), autocommit=autocommit, **kwargs)
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise PostgresUnavailableError(f"cannot connect to Postgres: {_describe(exc)}") from exc
    except psycopg.Error as exc:
        raise PostgresError(f"cannot connect to Postgres: {_describe(exc)}") from exc


def _socket_readable(conn: Connection) -> bool:
    """True when an *idle* connection has bytes waiting: the server closed it or sent a FATAL."""
    try:
        fd = conn.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


def _healthy(conn: Connection) -> bool:
    """Cheap, I/O-free check that an idle pooled connection is usable (no round trip)."""
    if conn.closed or conn.broken:
        return False
    if conn.info.transaction_status != TransactionStatus.IDLE:
        return False
    return not _socket_readable(conn)


def _close_quietly(conn: Connection) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing a broken connection must never raise
        return


class ConnectionPool:
    """A tiny thread-safe pool of autocommit connections.

    Up to ``size`` connections, created lazily (one eagerly on :meth:`open`). Idle
    connections are reused most-recently-used first; before one is handed out it is checked
    without any I/O (closed, broken, mid-transaction, or its socket readable — which on an
    idle connection means the server dropped it), and replaced if unhealthy.
    """

    def __init__(self, config: PgConfig, *, size: int | None = None, keepalives: bool = False) -> None:
        self._config = config
        self._size = size if size is not None else config.pool_size
        if self._size < 1:
            raise ValueError("pool size must be at least 1")
        self._keepalives = keepalives
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(self._size)
        self._lock = threading.Lock()
        self._all: set[Connection] = set()
        self._closed = False

    @property
    def size(self) -> int:
        """Maximum number of connections."""
        return self._size

    def open(self) -> None:
        """Open one connection now so a bad DSN or a down server fails fast (retried).

        Raises:
            PostgresUnavailableError: the server stayed unreachable for every attempt.
            PostgresError: the DSN is invalid.
        """
        conn = retrying(self._config)(self._new_connection)
        self._idle.put(conn)

    def _new_connection(self) -> Connection:
        conn = connect(self._config, keepalives=self._keepalives)
        with self._lock:
            if self._closed:
                _close_quietly(conn)
                raise PostgresError("connection pool is closed")
            self._all.add(conn)
        return conn

    def getconn(self, timeout: float | None = None) -> Connection:
        """Check out a healthy connection, connecting a new one if none is idle.

        Args:
            timeout: seconds to wait for a free slot when all ``size`` connections are in
                use (default: ``config.connect_timeout``).

        Raises:
            PostgresUnavailableError: no slot freed up in time, or connecting failed.
            PostgresError: the pool is closed, or the DSN is invalid.
        """
        if self._closed:
            raise PostgresError("connection pool is closed")
        wait = self._config.connect_timeout if timeout is None else timeout
        if not self._slots.acquire(timeout=max(0.0, wait)):
            raise PostgresUnavailableError(f"no free Postgres connection within {wait:.1f} s (pool of {self._size})")
        try:
            while True:
                try:
                    conn = self._idle.get_nowait()
                except queue.Empty:
                    return self._new_connection()
                if _healthy(conn):
                    return conn
                self._forget(conn)
        except BaseException:
            self._slots.release()
            raise

    def putconn(self, conn: Connection) -> None:
        """Return a checked-out connection; an unhealthy one is closed instead of reused."""
        try:
            if self._closed or not _healthy(conn):
                self._forget(conn)
            else:
                self._idle.put(conn)
        finally:
            self._slots.release()

    def discard(self, conn: Connection) -> None:
        """Close a checked-out connection (e.g. one whose session state is unknown) and free its slot."""
        try:
            self._forget(conn)
        finally:
            self._slots.release()

    def _forget(self, conn: Connection) -> None:
        with self._lock:
            self._all.discard(conn)
        _close_quietly(conn)

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Connection]:
        """Check out a connection for the ``with`` block; a failed one is discarded.

        Raises:
            PostgresUnavailableError: see :meth:`getconn`.
            PostgresError: see :meth:`getconn`.
        """
        conn = self.getconn(timeout)
        try:
            yield conn
        finally:
            self.putconn(conn)  # closes it instead if it broke

    def close(self) -> None:
        """Close every connection, including checked-out ones (their users get errors). Idempotent."""
        with self._lock:
            self._closed = True
            conns = list(self._all)
            self._all.clear()
        for conn in conns:
            _close_quietly(conn)


# --------------------------------------------------------------------------- migrations
@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned schema file ``NNNN_name.sql``."""

    version: int
    name: str  # the file stem, e.g. "0001_init"
    sql: str
    checksum: str  # sha256 hex of the file's bytes


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migration files in version order (default: the packaged ``sql/`` directory).

    Only files named ``NNNN_lower_snake.sql`` are migrations (``queries.sql`` is not).

    Raises:
        MigrationError: two files share a version.
    """
    root: Any = directory if directory is not None else resources.files(_SQL_PACKAGE).joinpath(_SQL_DIR)
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        match = _MIGRATION_RE.fullmatch(entry.name)
        if match is None:
            continue
        data: bytes = entry.read_bytes()
        version = int(match.group("version"))
        if version in found:
            raise MigrationError(f"two migrations share version {version:04d}")
        found[version] = Migration(
            version=version,
            name=entry.name.removesuffix(".sql"),
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


_BOOTSTRAP_SQL: Final = b"""
CREATE TABLE IF NOT EXISTS sr_schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
_LOCK_SQL: Final = b"SELECT pg_advisory_xact_lock(%(key)s::bigint)"
_APPLIED_SQL: Final = b"SELECT name, checksum FROM sr_schema_migrations WHERE version = %(version)s"
_RECORD_SQL: Final = (
    b"INSERT INTO sr_schema_migrations (version, name, checksum) VALUES (%(version)s, %(name)s, %(checksum)s)"
)


def _apply_one(conn: Connection, migration: Migration) -> bool:
    """Apply ``migration`` in its own transaction unless already recorded; True if applied.

    Raises:
        MigrationError: the recorded checksum or name differs from the file's.
        psycopg.Error: a database error (translated by the caller).
    """
    with conn.transaction():
        # Serialise concurrent migrators; the lock is released at commit/rollback.
        conn.execute(_LOCK_SQL, {"key": MIGRATION_LOCK_KEY})
        row = conn.execute(_APPLIED_SQL, {"version": migration.version}).fetchone()
        if row is not None:
            name, checksum = row
            if checksum != migration.checksum or name != migration.name:
                raise MigrationError(
                    f"migration {migration.version:04d} was applied as {name!r} with checksum {checksum[:12]}... "
                    f"but the file {migration.name}.sql now has checksum {migration.checksum[:12]}...: "
                    "applied migrations must never change; add a new migration instead"
                )
            return False
        conn.execute(migration.sql.encode("utf-8"))
        conn.execute(_RECORD_SQL, {"version": migration.version, "name": migration.name,
                                   "checksum": migration.checksum})
        return True


def migrate(dsn: str, *, migrations: Sequence[Migration] | None = None, connect_timeout: float = 10.0) -> list[str]:
    """Bring the schema up to date; returns the names of the migrations applied by this call.

    Each migration runs in its own transaction holding a transaction-level advisory lock,
    so workers starting at once apply each migration exactly once; re-running is a no-op.
    Migrations recorded in the database but unknown to this build (a newer worker ran) are
    left alone.

    Args:
        dsn: libpq connection string of the target database.
        migrations: override the packaged migrations (tests).
        connect_timeout: seconds to wait for the connection (connecting is retried with the
            default bounded backoff; applying is not).

    Raises:
        MigrationError: an already-applied migration file was changed.
        PostgresUnavailableError: the server is unreachable or the connection dropped.
        PostgresError: a migration failed (its transaction is rolled back).
    """
    todo = list(migrations) if migrations is not None else load_migrations()
    config = PgConfig(dsn=SecretStr(dsn), connect_timeout=connect_timeout)
    applied: list[str] = []
    conn = retrying(config)(connect, config, autocommit=True, with_statement_timeout=False)
    try:
        with conn.transaction():
            conn.execute(_LOCK_SQL, {"key": MIGRATION_LOCK_KEY})
            conn.execute(_BOOTSTRAP_SQL)
        for migration in todo:
            if _apply_one(conn, migration):
                applied.append(migration.name)
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise PostgresUnavailableError(f"migrate: {_describe(exc)}") from exc
    except psycopg.Error as exc:
        raise PostgresError(f"migrate: {_describe(exc)}") from exc
    finally:
        _close_quietly(conn)
    return applied


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
                  since: datetime | None = None, limit: int = 100) -> list[RunRow]:
        """Runs newest first, optionally filtered; one round trip.

        Args:
            status: only runs in this status.
            tenant: only this tenant's runs.
            since: only runs created at or after this (aware) time.
            limit: at most this many rows (1..10000).

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

        Raises:
            PostgresUnavailableError: Postgres stayed unavailable for every attempt.
            PostgresError: a database error.
        """
        self._run("record_operator_action", {"operator": operator, "action": action, "allowed": allowed,
                                             "detail": Jsonb(dict(detail or {}))})

    def operator_actions(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest operator actions, newest first; one round trip.

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
        if not 1 <= limit <= _MAX_LIST_LIMIT:
            raise ValueError(f"limit must be between 1 and {_MAX_LIST_LIMIT}")
