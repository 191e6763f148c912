"""Named SQL statements, how one is sent, and the one translation of psycopg errors.

* Every statement SR sends lives in a named block of ``sql/queries.sql`` (``-- name: x``
  up to the next block), read and parsed once per process (:func:`load_queries`).
* :func:`execute` sends one statement = one round trip, counted on a
  :class:`RoundTripCounter` when one is given.
* psycopg exceptions become SR errors here and nowhere else (:func:`translate`):
  ``OperationalError``/``InterfaceError`` (connection failed or lost, statement cancelled,
  serialization failure) become :class:`~worker.errors.PostgresUnavailableError`
  (retryable), any other ``psycopg.Error`` becomes :class:`~worker.errors.PostgresError`.
* Only retryable errors are retried (:func:`retrying`: bounded attempts, capped exponential
  backoff with full jitter).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import psycopg
import psycopg.errors
from psycopg.rows import dict_row
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from worker.adapters.postgres.config import PgConfig
from worker.errors import PostgresError, PostgresUnavailableError, RetryableError

__all__ = [
    "Connection",
    "Query",
    "RoundTripCounter",
    "describe",
    "execute",
    "load_queries",
    "parse_queries",
    "query",
    "retrying",
    "translate",
    "translated",
]

#: A psycopg connection as SR uses it (autocommit; rows fetched through ``dict_row`` cursors).
Connection = psycopg.Connection[Any]

SQL_PACKAGE: Final = "worker.adapters.postgres"
SQL_DIR: Final = "sql"
QUERIES_FILE: Final = "queries.sql"
_QUERY_NAME_RE: Final = re.compile(r"^--\s*name:\s*(?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_FIRST_BACKOFF: Final = 0.05  # seconds


# --------------------------------------------------------------------------- error translation
def describe(exc: psycopg.Error) -> str:
    """A one-line description of a psycopg error: class, SQLSTATE, first message line (never the DSN)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    return f"{type(exc).__name__}{state}: {first}"


def translate(exc: psycopg.Error, what: str) -> PostgresError:
    """The SR error for a psycopg error raised while doing ``what`` (the message's prefix).

    Returns:
        :class:`PostgresUnavailableError` (retryable) for ``OperationalError`` and
        ``InterfaceError`` — the connection failed or was lost, or the statement was cancelled
        (statement timeout, lock timeout, serialization failure); :class:`PostgresError` for
        any other database error (constraint violation, bad SQL...). A missing SR table says
        how to create it: no command but ``sr run`` and ``sr db migrate`` applies migrations.
    """
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return PostgresUnavailableError(f"{what}: {describe(exc)}")
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return PostgresError(f"{what}: {describe(exc)} (is the database migrated? run `sr db migrate`)")
    return PostgresError(f"{what}: {describe(exc)}")


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Run the ``with`` block translating any ``psycopg.Error`` with :func:`translate`.

    Raises:
        PostgresUnavailableError / PostgresError: see :func:`translate`.
    """
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, what) from exc


# --------------------------------------------------------------------------- round trips
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
    """One named SQL statement from ``queries.sql`` (``sql`` is what is sent, comments included)."""

    name: str
    sql: bytes


def parse_queries(text: str) -> dict[str, Query]:
    """Split a ``-- name: x`` annotated SQL file into named queries, in file order.

    A block runs from its ``-- name:`` line to the next one; its trailing ``;`` is dropped.
    Text before the first block (the file's header comment) belongs to no query.

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
            raise PostgresError(f"{QUERIES_FILE}: block {name!r} is duplicated or empty")
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
                text = resources.files(SQL_PACKAGE).joinpath(SQL_DIR, QUERIES_FILE).read_text("utf-8")
            except OSError as exc:
                raise PostgresError(f"cannot read {SQL_DIR}/{QUERIES_FILE}: {exc}") from exc
            _QUERIES = parse_queries(text)
        return _QUERIES


def query(name: str) -> Query:
    """The named statement ``name`` from ``queries.sql``.

    Raises:
        PostgresError: no such statement (a programming error).
    """
    try:
        return load_queries()[name]
    except KeyError as exc:
        raise PostgresError(f"{QUERIES_FILE} has no statement named {name!r}") from exc


# --------------------------------------------------------------------------- execution
def execute(
    conn: Connection,
    q: Query,
    params: Mapping[str, Any] | None = None,
    counter: RoundTripCounter | None = None,
) -> list[dict[str, Any]]:
    """Send one statement (one round trip) and return its rows as dicts.

    With a ``counter``, the statement is counted before it is sent and its duration (seconds,
    including fetching the rows) is reported to ``counter.on_query`` afterwards. Without
    ``params`` the statement may hold several SQL commands (a migration file).

    Raises:
        PostgresUnavailableError: the connection failed or was lost, or the statement was
            cancelled (statement timeout, lock timeout, serialization failure).
        PostgresError: any other database error (constraint violation, bad SQL...).
    """
    if counter is not None:
        counter.add()
    started = time.perf_counter()
    try:
        with translated(q.name), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(q.sql, params)
            if cur.description is None:
                return []
            return cur.fetchall()
    finally:
        if counter is not None:
            counter.observe(time.perf_counter() - started)


def retrying(config: PgConfig) -> Retrying:
    """The retry policy for idempotent operations: only :class:`RetryableError`, bounded.

    ``config.max_attempts`` attempts in all; pauses are "full jitter" exponential backoff
    (uniform in [0, 50 ms * 2**n] seconds), each capped at ``config.backoff_max`` seconds.
    The last error is re-raised.
    """
    return Retrying(
        stop=stop_after_attempt(config.max_attempts),
        wait=wait_random_exponential(multiplier=_FIRST_BACKOFF, max=config.backoff_max),
        retry=retry_if_exception_type(RetryableError),
        reraise=True,
    )
