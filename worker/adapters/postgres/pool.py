"""Connections: opening one, checking an idle one without I/O, and a small pool of them.

Why a pool of our own rather than ``psycopg_pool``: the leases need properties that pool
does not give as it is — a connection found dead at checkout is replaced at once on the
calling thread (``psycopg_pool`` sleeps about 1 s, doubling, before trying the next one), a
failed connect surfaces its cause immediately instead of after the whole checkout timeout,
and closing the pool also closes the connections checked out, which ends every session and
so frees every advisory lock still held.
"""

from __future__ import annotations

import queue
import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.pq import TransactionStatus

from worker.adapters.postgres.config import PgConfig, connect_params
from worker.adapters.postgres.queries import Connection, retrying, translated
from worker.errors import PostgresError, PostgresUnavailableError

__all__ = ["ConnectionPool", "close_quietly", "connect", "is_healthy"]


def connect(config: PgConfig, *, keepalives: bool = False, autocommit: bool = True,
            with_statement_timeout: bool = True) -> Connection:
    """Open one connection (TCP + authentication; no statement is sent).

    Args:
        config: DSN and timeouts (see :func:`~worker.adapters.postgres.config.connect_params`).
        keepalives: turn TCP keepalives on (a dead peer is noticed within ~11 s).
        autocommit: every statement is its own transaction unless one is opened explicitly.
        with_statement_timeout: make the server cancel statements running longer than
            ``config.statement_timeout`` seconds.

    Raises:
        PostgresUnavailableError: the server cannot be reached or refused the connection.
        PostgresError: the DSN is invalid.
    """
    params = connect_params(config, keepalives=keepalives, with_statement_timeout=with_statement_timeout)
    with translated("cannot connect to Postgres"):
        return psycopg.connect(config.dsn.get_secret_value(), autocommit=autocommit, **params)


def _socket_readable(conn: Connection) -> bool:
    """True when an *idle* connection has bytes waiting: the server closed it or sent a FATAL."""
    try:
        fd = conn.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


def is_healthy(conn: Connection) -> bool:
    """Cheap, I/O-free check that an idle connection is usable (no round trip).

    False when it is closed or broken, not idle (inside or after a failed transaction), or its
    socket is readable — which on an idle connection means the server dropped it.
    """
    if conn.closed or conn.broken:
        return False
    if conn.info.transaction_status != TransactionStatus.IDLE:
        return False
    return not _socket_readable(conn)


def close_quietly(conn: Connection) -> None:
    """Close ``conn``, ignoring any error (closing a broken connection must never raise)."""
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing a broken connection must never raise
        return


class ConnectionPool:
    """A tiny thread-safe pool of autocommit connections.

    Up to ``size`` connections, created lazily on the thread that needs one (one eagerly on
    :meth:`open`). Idle connections are reused most-recently-used first; before one is handed
    out it is checked without any I/O (:func:`is_healthy`) and replaced if unhealthy. No
    network I/O happens in the constructor. A checked-out connection belongs to its user
    until :meth:`putconn` or :meth:`discard`; :meth:`close` closes it anyway.
    """

    def __init__(self, config: PgConfig, *, size: int | None = None, keepalives: bool = False) -> None:
        """Prepare the pool (nothing is connected yet).

        Raises:
            ValueError: ``size`` is smaller than 1.
        """
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
                close_quietly(conn)
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
                if is_healthy(conn):
                    return conn
                self._forget(conn)
        except BaseException:
            self._slots.release()
            raise

    def putconn(self, conn: Connection) -> None:
        """Return a checked-out connection; an unhealthy one is closed instead of reused."""
        try:
            if self._closed or not is_healthy(conn):
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
        close_quietly(conn)

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
            close_quietly(conn)
