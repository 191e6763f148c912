"""Run leases: a session-level advisory lock plus a fencing epoch (contract §5).

A :class:`Lease` is a Postgres *session-level* advisory lock on ``run_lock_key(run_id)``,
held on a dedicated connection for the duration of a run step, plus ``sr_runs.lease_epoch``,
bumped in the same statement that takes the lock. Every state-advancing write
(:meth:`Lease.advance`, :meth:`Lease.touch_head`) is epoch-checked
(``WHERE run_id = … AND lease_epoch = …``) and sent on the lease's own connection:

* if that connection fails, the session and therefore the lock are gone: the write raises
  :class:`~worker.errors.LeaseLostError` and is **never** retried on another connection;
* if a newer holder bumped the epoch, a write carrying the old epoch (through any
  connection) matches no row and raises :class:`~worker.errors.StaleEpochError`.

Round trips: ``acquire`` 1 (per attempt while busy), ``advance`` 1, ``touch_head`` 1,
``is_held`` 1, ``release`` 1.

Session advisory locks need a direct connection or session pooling — not PgBouncer in
transaction-pooling mode.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self

from worker.adapters.postgres.config import PgConfig
from worker.adapters.postgres.index import publication_params
from worker.adapters.postgres.pool import ConnectionPool
from worker.adapters.postgres.queries import Connection, RoundTripCounter, execute, query, retrying
from worker.core.identity import run_lock_key
from worker.core.index import NewPublication, Publication, RunRow
from worker.core.models import RunStatus
from worker.errors import (
    LeaseBusyError,
    LeaseLostError,
    PostgresError,
    PostgresUnavailableError,
    RunNotFoundError,
    StaleEpochError,
)

__all__ = ["Lease", "LeaseManager", "advance_with_epoch", "touch_head_with_epoch"]

_FIRST_PAUSE: Final = 0.02  # seconds between busy re-tries, doubling ...
_MAX_PAUSE: Final = 0.25  # ... up to this


# --------------------------------------------------------------------------- epoch-checked writes
def advance_with_epoch(
    conn: Connection,
    run_id: str,
    epoch: int,
    status: RunStatus | str,
    *,
    ledger_seq: int,
    ledger_head_hash: str | None,
    reason_code: str | None = None,
    plan_hash: str | None = None,
    facts_view_hash: str | None = None,
    next_check_at: datetime | None = None,
    publications: Sequence[NewPublication] = (),
    counter: RoundTripCounter | None = None,
) -> list[Publication]:
    """Epoch-checked state advance + publication rows in ONE statement (one round trip).

    Updates the run's status, reason_code, ledger head and next_check_at (plan_hash and
    facts_view_hash only when given: None keeps the stored value) **only if** the row's
    ``lease_epoch`` still equals ``epoch``, and in the same statement inserts
    ``publications`` (``ON CONFLICT (pub_key) DO NOTHING``). Returns the stored publication
    rows in the order given — for a pub_key that already existed, the ORIGINAL row (payload
    bytes, published_at), so a re-drive re-sends byte-identical messages.

    Used by :meth:`Lease.advance` on the lease connection; public so a fenced writer can be
    simulated through any connection.

    Raises:
        StaleEpochError: no row has this run_id and epoch (a newer holder took the lease, or
            the run does not exist); nothing was written.
        ValueError: two publications share a pub_key, or one does not belong to ``run_id``.
        PostgresUnavailableError: the connection failed (the outcome is unknown).
        PostgresError: another database error (e.g. a constraint rejected a value).
    """
    for pub in publications:
        if not pub.pub_key.startswith(f"{run_id}:"):
            raise ValueError(f"publication {pub.pub_key!r} does not belong to run {run_id}")
    params: dict[str, Any] = {
        "run_id": run_id,
        "epoch": epoch,
        "status": RunStatus(status).value,
        "reason_code": reason_code,
        "plan_hash": plan_hash,
        "facts_view_hash": facts_view_hash,
        "ledger_seq": ledger_seq,
        "ledger_head_hash": ledger_head_hash,
        "next_check_at": next_check_at,
        **publication_params(publications),
    }
    rows = execute(conn, query("advance_run"), params, counter)
    if not rows or rows[0]["updated_run_id"] is None:
        raise StaleEpochError(f"run {run_id}: lease epoch {epoch} is not current; write rejected")
    by_key = {r["pub_key"]: Publication.from_record(r) for r in rows if r["id"] is not None}
    missing = [p.pub_key for p in publications if p.pub_key not in by_key]
    if missing:
        # Only possible if another session inserted the same key concurrently, which the
        # lease excludes; the run row was updated, the caller may safely re-drive.
        raise PostgresError(f"run {run_id}: publication rows {missing} not returned")
    return [by_key[p.pub_key] for p in publications]


def touch_head_with_epoch(
    conn: Connection,
    run_id: str,
    epoch: int,
    ledger_seq: int,
    ledger_head_hash: str,
    *,
    counter: RoundTripCounter | None = None,
) -> None:
    """Epoch-checked move of the ledger head without a status change (one round trip).

    Raises:
        StaleEpochError: no row has this run_id and epoch; nothing was written.
        PostgresUnavailableError: the connection failed.
        PostgresError: another database error.
    """
    rows = execute(conn, query("touch_head"), {
        "run_id": run_id, "epoch": epoch, "ledger_seq": ledger_seq, "ledger_head_hash": ledger_head_hash,
    }, counter)
    if not rows:
        raise StaleEpochError(f"run {run_id}: lease epoch {epoch} is not current; write rejected")


# --------------------------------------------------------------------------- the lease
class Lease:
    """A held run lease: the advisory lock on a dedicated connection plus its fencing epoch.

    Obtained from :meth:`LeaseManager.acquire`; use as a context manager (``__exit__``
    releases). Not thread-safe: one run step uses it from one thread.
    """

    def __init__(self, pool: ConnectionPool, conn: Connection, *, run_id: str, lock_key: int, epoch: int,
                 counter: RoundTripCounter, row: RunRow | None = None) -> None:
        self._row = row
        self._pool = pool
        self._conn: Connection | None = conn
        self._run_id = run_id
        self._lock_key = lock_key
        self._epoch = epoch
        self._counter = counter
        self._backend_pid = conn.info.backend_pid
        self._lost_reason: str | None = None
        # A lease dropped without release() must not pin its lock (and pool slot) forever.
        self._finalizer = weakref.finalize(self, pool.discard, conn)

    @property
    def run_id(self) -> str:
        """The leased run."""
        return self._run_id

    @property
    def epoch(self) -> int:
        """The fencing epoch this lease writes with."""
        return self._epoch

    @property
    def row(self) -> RunRow | None:
        """The run's index row as read (with the new epoch) in the acquiring round trip."""
        return self._row

    @property
    def backend_pid(self) -> int:
        """Postgres backend pid of the lease's session (for logs and operators)."""
        return self._backend_pid

    @property
    def active(self) -> bool:
        """False once released or known lost (no I/O; see :meth:`is_held` for a server check)."""
        return self._conn is not None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Release the lease (never masks the block's exception)."""
        self.release()

    def __repr__(self) -> str:
        state = "held" if self._conn is not None else (self._lost_reason or "released")
        return f"Lease(run_id={self._run_id!r}, epoch={self._epoch}, {state})"

    # ------------------------------------------------------------------ plumbing
    def _connection(self) -> Connection:
        if self._conn is None:
            raise LeaseLostError(f"lease on run {self._run_id} is no longer held ({self._lost_reason or 'released'})")
        return self._conn

    def _lose(self, reason: str) -> None:
        """Forget the lease: close its connection (ending the session frees the lock)."""
        conn, self._conn = self._conn, None
        self._lost_reason = reason
        if conn is not None:
            self._finalizer.detach()
            self._pool.discard(conn)

    # ------------------------------------------------------------------ writes
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
        """Advance the run's index row and store its publications atomically (one round trip).

        See :func:`advance_with_epoch` for the semantics. Never retried: on a connection
        failure the lock is gone with the session.

        Raises:
            LeaseLostError: the lease's connection failed or the lease was released/lost.
            StaleEpochError: the epoch is no longer current (the lease is then dropped).
            ValueError: invalid publications (nothing sent).
            PostgresError: another database error (the lease stays held).
        """
        conn = self._connection()
        try:
            return advance_with_epoch(
                conn, self._run_id, self._epoch, status, ledger_seq=ledger_seq, ledger_head_hash=ledger_head_hash,
                reason_code=reason_code, plan_hash=plan_hash, facts_view_hash=facts_view_hash,
                next_check_at=next_check_at, publications=publications, counter=self._counter,
            )
        except PostgresUnavailableError as exc:
            self._lose("connection lost")
            raise LeaseLostError(f"lease on run {self._run_id} lost during advance: {exc}") from exc
        except StaleEpochError:
            self._lose("fenced by a newer epoch")
            raise

    def touch_head(self, ledger_seq: int, ledger_head_hash: str) -> None:
        """Move the ledger head without changing the status, epoch-checked (one round trip).

        Raises:
            LeaseLostError: the lease's connection failed or the lease was released/lost.
            StaleEpochError: the epoch is no longer current (the lease is then dropped).
            PostgresError: another database error.
        """
        conn = self._connection()
        try:
            touch_head_with_epoch(conn, self._run_id, self._epoch, ledger_seq, ledger_head_hash,
                                  counter=self._counter)
        except PostgresUnavailableError as exc:
            self._lose("connection lost")
            raise LeaseLostError(f"lease on run {self._run_id} lost during touch_head: {exc}") from exc
        except StaleEpochError:
            self._lose("fenced by a newer epoch")
            raise

    # ------------------------------------------------------------------ checks
    def is_held(self) -> bool:
        """Does this session still hold the lock with a current epoch? (one round trip; 0 if known lost)

        Call before an irreversible external action. A failed check drops the lease.

        Raises:
            PostgresError: a database error other than a lost connection.
        """
        if self._conn is None:
            return False
        unsigned = self._lock_key & 0xFFFF_FFFF_FFFF_FFFF
        try:
            rows = execute(self._conn, query("lease_held"), {
                "classid": unsigned >> 32, "objid": unsigned & 0xFFFF_FFFF,
                "run_id": self._run_id, "epoch": self._epoch,
            }, self._counter)
        except PostgresUnavailableError:
            self._lose("connection lost")
            return False
        held = bool(rows and rows[0]["held"])
        if not held:
            self._lose("lock or epoch no longer held")
        return held

    def release(self) -> None:
        """Unlock and return the connection to the pool (one round trip). Idempotent.

        A broken connection is discarded instead (its session, and lock, are gone anyway).
        Never raises for a lost connection.
        """
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        self._lost_reason = "released"
        self._finalizer.detach()
        try:
            rows = execute(conn, query("release_lease"), {"lock_key": self._lock_key}, self._counter)
        except PostgresError:
            self._pool.discard(conn)
            return
        if rows and rows[0]["released"]:
            self._pool.putconn(conn)
        else:
            # We did not hold it (should not happen): do not reuse a session in an odd state.
            self._pool.discard(conn)


# --------------------------------------------------------------------------- the manager
class LeaseManager:
    """Hands out :class:`Lease` objects from a pool of dedicated connections.

    ``config.pool_size`` connections at most (= concurrent leases), TCP keepalives on so a
    dead peer is noticed within ~11 s. Thread-safe. Use as a context manager; leaving it
    closes every connection, which frees every lock still held.
    """

    def __init__(self, config: PgConfig, counter: RoundTripCounter | None = None) -> None:
        self._config = config
        self.counter = counter if counter is not None else RoundTripCounter()
        self._pool = ConnectionPool(config, size=config.pool_size, keepalives=True)
        self._closed = threading.Event()

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
        """Close every connection (outstanding leases become lost)."""
        self.close()

    def close(self) -> None:
        """Close every connection (outstanding leases become lost). Idempotent."""
        self._closed.set()
        self._pool.close()

    def acquire(self, run_id: str, *, wait: float = 0.0) -> Lease:
        """Take the run's lease: advisory lock + epoch bump in one round trip.

        While another session holds the lock, retries (one round trip each, pauses from
        20 ms doubling to 250 ms) until ``wait`` seconds have passed.

        Args:
            run_id: the run (32 lowercase hex).
            wait: seconds to keep trying while the lease is busy (0 = one attempt).

        Raises:
            LeaseBusyError: another session still holds the lease after ``wait`` seconds.
            RunNotFoundError: the run is not in the index (no lock is kept).
            UnsafeKeyError: ``run_id`` is not 32 lowercase hex.
            ValueError: ``wait`` is negative or not finite.
            PostgresUnavailableError: Postgres stayed unavailable for every attempt.
            PostgresError: another database error.
        """
        lock_key = run_lock_key(run_id)
        if not math.isfinite(wait) or wait < 0:
            raise ValueError("wait must be a finite number of seconds >= 0")
        deadline = time.monotonic() + wait
        pause = _FIRST_PAUSE
        while True:
            lease = retrying(self._config)(self._try_acquire, run_id, lock_key)
            if lease is not None:
                return lease
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed.is_set():
                raise LeaseBusyError(f"run {run_id} is leased by another session")
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, _MAX_PAUSE)

    def _try_acquire(self, run_id: str, lock_key: int) -> Lease | None:
        """One attempt: a Lease, or None when the lock is busy.

        Raises:
            RunNotFoundError: no such run (the lock taken in the same statement is undone).
            PostgresUnavailableError: connecting or the statement failed (retryable).
            PostgresError: another database error.
        """
        conn = self._pool.getconn()
        try:
            rows = execute(conn, query("acquire_lease"), {"lock_key": lock_key, "run_id": run_id}, self.counter)
        except BaseException:
            # The lock may or may not have been taken: closing the session settles it.
            self._pool.discard(conn)
            raise
        row = rows[0] if rows else {}
        if not row.get("granted"):
            self._pool.putconn(conn)
            return None
        epoch = row.get("lease_epoch")
        if epoch is None:
            if row.get("unlocked"):
                self._pool.putconn(conn)
            else:
                self._pool.discard(conn)
            raise RunNotFoundError(f"run {run_id} is not in the index")
        return Lease(self._pool, conn, run_id=run_id, lock_key=lock_key, epoch=int(epoch), counter=self.counter,
                     row=RunRow.from_record(row))
