"""Run leases (advisory lock + fencing epoch) against the real Postgres server (no mocks)."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from worker.adapters.postgres import PgConfig, RoundTripCounter, RunIndex
from worker.adapters.postgres.leases import Lease, LeaseManager, advance_with_epoch
from worker.core.identity import run_id_for, run_lock_key
from worker.core.index import NewPublication, NewRun
from worker.core.models import RunStatus
from worker.errors import (
    LeaseBusyError,
    LeaseLostError,
    PostgresError,
    RunNotFoundError,
    StaleEpochError,
    UnsafeKeyError,
)

pytestmark = pytest.mark.integration


def hex64(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


@pytest.fixture
def config(pg_dsn: str) -> PgConfig:
    return PgConfig(dsn=SecretStr(pg_dsn), pool_size=3, max_attempts=3, backoff_max=0.2)


@pytest.fixture
def counter() -> RoundTripCounter:
    return RoundTripCounter()


@pytest.fixture
def index(config: PgConfig) -> Iterator[RunIndex]:
    with RunIndex(config) as idx:
        yield idx


@pytest.fixture
def leases(config: PgConfig, counter: RoundTripCounter) -> Iterator[LeaseManager]:
    with LeaseManager(config, counter) as mgr:
        yield mgr


@pytest.fixture
def run_id(index: RunIndex) -> str:
    key = hex64(uuid.uuid4().hex)
    rid = run_id_for(key)
    index.admit(NewRun(run_id=rid, run_equivalence_key=key, intent_fingerprint=hex64("fp"), tenant_id="acme",
                       namespace="ns", scenario_id="sc", intent={"k": 1}, evidence_root="s3://b/evidence/acme/"))
    return rid


def raw(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def terminate(dsn: str, pid: int) -> None:
    """Kill a backend (as if its worker paused long enough for the session to be dropped)."""
    with raw(dsn) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone() == (True,)


def advisory_locks(dsn: str) -> int:
    with raw(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                           "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                           ).fetchone()
    assert row is not None
    return int(row[0])


def ready_pub(run_id: str, fvh: str, payload: bytes) -> NewPublication:
    return NewPublication.ready(run_id, fvh, "READY", topic="sr.ready", payload=payload, msg_key=run_id.encode(),
                                headers={"sr-idempotency-key": f"{run_id}:{fvh}:READY"})


# ----------------------------------------------------------------------------- acquisition
def test_two_managers_race_exactly_one_wins(config: PgConfig, run_id: str, pg_dsn: str) -> None:
    barrier = threading.Barrier(2)
    won: list[tuple[LeaseManager, Lease]] = []
    busy: list[tuple[LeaseManager, LeaseBusyError]] = []
    with LeaseManager(config) as m1, LeaseManager(config) as m2:

        def contender(mgr: LeaseManager) -> None:
            barrier.wait()
            try:
                won.append((mgr, mgr.acquire(run_id)))
            except LeaseBusyError as exc:
                busy.append((mgr, exc))

        threads = [threading.Thread(target=contender, args=(m,)) for m in (m1, m2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(won) == 1 and len(busy) == 1
        (_, winner), (loser_mgr, _) = won[0], busy[0]
        with pytest.raises(LeaseBusyError):
            loser_mgr.acquire(run_id, wait=0.2)
        first_epoch = winner.epoch
        winner.release()
        with loser_mgr.acquire(run_id) as second:
            assert second.epoch > first_epoch
            assert second.is_held()
    assert advisory_locks(pg_dsn) == 0


def test_acquire_waits_for_release(leases: LeaseManager, config: PgConfig, run_id: str) -> None:
    with LeaseManager(config) as other:
        holder = other.acquire(run_id)
        released = threading.Event()

        def release() -> None:
            released.set()  # before the release, so a granted acquire always sees it
            holder.release()

        timer = threading.Timer(0.3, release)
        timer.start()
        with leases.acquire(run_id, wait=10) as lease:
            # Granted only once the holder let go: the acquire waited for the release.
            assert released.is_set()
            assert lease.epoch == holder.epoch + 1
        timer.join()


def test_epoch_increases_on_every_acquisition(leases: LeaseManager, index: RunIndex, run_id: str) -> None:
    epochs = []
    for _ in range(3):
        with leases.acquire(run_id) as lease:
            epochs.append(lease.epoch)
    assert epochs == [1, 2, 3]
    row = index.get(run_id)
    assert row is not None and row.lease_epoch == 3


def test_unknown_run_raises_and_keeps_no_lock(leases: LeaseManager, counter: RoundTripCounter, pg_dsn: str) -> None:
    counter.reset()
    with pytest.raises(RunNotFoundError):
        leases.acquire("0" * 32)
    assert counter.snapshot() == 1  # lock, (no) bump and undo in one statement
    assert advisory_locks(pg_dsn) == 0
    with pytest.raises(UnsafeKeyError):
        leases.acquire("not-a-run-id")


def test_round_trips_acquire_advance_release(leases: LeaseManager, counter: RoundTripCounter, run_id: str) -> None:
    counter.reset()
    lease = leases.acquire(run_id)
    assert counter.snapshot() == 1
    counter.reset()
    lease.advance(RunStatus.WAITING, ledger_seq=0, ledger_head_hash=hex64("h0"), reason_code="EVIDENCE_MISSING",
                  plan_hash=hex64("plan"), next_check_at=datetime.now(UTC) + timedelta(seconds=30),
                  publications=[NewPublication.status_event(run_id, 0, "WAITING", topic="sr.run-status",
                                                            payload=b"w")])
    assert counter.snapshot() == 1
    counter.reset()
    lease.touch_head(1, hex64("h1"))
    assert counter.snapshot() == 1
    counter.reset()
    assert lease.is_held()
    assert counter.snapshot() == 1
    counter.reset()
    lease.release()
    assert counter.snapshot() == 1
    lease.release()  # idempotent, no I/O
    assert counter.snapshot() == 1
    assert not lease.is_held()
    with pytest.raises(LeaseLostError):
        lease.advance(RunStatus.WAITING, ledger_seq=1, ledger_head_hash=hex64("h1"))


# ----------------------------------------------------------------------------- fencing
def test_fencing_after_session_loss(leases: LeaseManager, config: PgConfig, index: RunIndex, run_id: str,
                                    pg_dsn: str) -> None:
    a = leases.acquire(run_id)
    e1 = a.epoch
    a.advance(RunStatus.WAITING, ledger_seq=0, ledger_head_hash=hex64("a0"), reason_code="EVIDENCE_MISSING",
              plan_hash=hex64("plan"))

    terminate(pg_dsn, a.backend_pid)  # A "paused" long enough for its session to be dropped

    with LeaseManager(config) as other:
        b = other.acquire(run_id, wait=5)
        e2 = b.epoch
        assert e2 > e1

        # A's own connection is dead: the lock went with it.
        with pytest.raises(LeaseLostError):
            a.advance(RunStatus.READY, ledger_seq=1, ledger_head_hash=hex64("a1"), facts_view_hash=hex64("fa"),
                      publications=[ready_pub(run_id, hex64("fa"), b"from A")])
        assert not a.is_held()
        # Even through a fresh, healthy connection, A's epoch is stale.
        with raw(pg_dsn) as conn, pytest.raises(StaleEpochError):
            advance_with_epoch(conn, run_id, e1, RunStatus.READY, ledger_seq=1, ledger_head_hash=hex64("a1"),
                               facts_view_hash=hex64("fa"), publications=[ready_pub(run_id, hex64("fa"), b"from A")])

        stored = b.advance(RunStatus.READY, ledger_seq=1, ledger_head_hash=hex64("b1"), facts_view_hash=hex64("fb"),
                           publications=[ready_pub(run_id, hex64("fb"), b"from B")])
        assert [p.payload for p in stored] == [b"from B"]
        b.release()

    row = index.get(run_id)
    assert row is not None
    assert (row.status, row.ledger_seq, row.ledger_head_hash, row.facts_view_hash, row.lease_epoch) == (
        RunStatus.READY, 1, hex64("b1"), hex64("fb"), e2)
    assert row.plan_hash == hex64("plan")  # kept: NULL never clears it
    assert row.reason_code is None
    assert [p.payload for p in index.publications(run_id)] == [b"from B"]
    a.release()  # no-op on a lost lease
    assert advisory_locks(pg_dsn) == 0


def test_stale_epoch_on_a_live_session_drops_the_lease(leases: LeaseManager, index: RunIndex, run_id: str,
                                                       pg_dsn: str) -> None:
    lease = leases.acquire(run_id)
    with raw(pg_dsn) as conn:  # someone bumps the epoch behind our back (e.g. an operator)
        conn.execute("UPDATE sr_runs SET lease_epoch = lease_epoch + 1 WHERE run_id = %s", (run_id,))
    with pytest.raises(StaleEpochError):
        lease.touch_head(0, hex64("x"))
    assert not lease.active
    row = index.get(run_id)
    assert row is not None and row.ledger_seq == -1
    assert advisory_locks(pg_dsn) == 0  # the connection was closed, freeing the lock


def test_is_held_false_after_backend_terminated(leases: LeaseManager, run_id: str, pg_dsn: str,
                                                counter: RoundTripCounter) -> None:
    lease = leases.acquire(run_id)
    assert lease.is_held()
    with raw(pg_dsn) as conn:
        key = run_lock_key(run_id) & 0xFFFF_FFFF_FFFF_FFFF
        row = conn.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::bigint::oid "
                           "AND objid = %s::bigint::oid AND objsubid = 1", (key >> 32, key & 0xFFFF_FFFF)).fetchone()
    assert row == (lease.backend_pid,)
    terminate(pg_dsn, lease.backend_pid)
    assert lease.is_held() is False
    assert not lease.active
    with pytest.raises(LeaseLostError):
        lease.touch_head(0, hex64("x"))
    # The manager's pool replaced the dead connection: the next acquisition costs one round trip.
    counter.reset()
    with leases.acquire(run_id) as again:
        assert counter.snapshot() == 1
        assert again.is_held()


# ----------------------------------------------------------------------------- publications
def test_advance_inserts_publications_once_and_returns_original_bytes(
        leases: LeaseManager, index: RunIndex, run_id: str) -> None:
    fvh = hex64("facts")
    with leases.acquire(run_id) as lease:
        first = lease.advance(RunStatus.READY, ledger_seq=0, ledger_head_hash=hex64("h0"), facts_view_hash=fvh,
                              plan_hash=hex64("plan"), publications=[ready_pub(run_id, fvh, b"original")])
        assert [(p.pub_key, p.payload, p.published_at) for p in first] == [
            (f"{run_id}:{fvh}:READY", b"original", None)]
        index.mark_published(first[0].pub_key, 0, 7)
    # A re-drive (new lease) after a crash builds the publication again, e.g. with a new clock.
    with leases.acquire(run_id) as lease:
        status = NewPublication.status_event(run_id, 0, "WAITING", topic="sr.run-status", payload=b"s")
        again = lease.advance(RunStatus.READY, ledger_seq=0, ledger_head_hash=hex64("h0"), facts_view_hash=fvh,
                              publications=[ready_pub(run_id, fvh, b"rebuilt differently"), status])
    assert [p.payload for p in again] == [b"original", b"s"]
    assert again[0].id == first[0].id and again[0].kafka_offset == 7 and again[0].published_at is not None
    assert again[1].published_at is None
    assert len(index.publications(run_id)) == 2


def test_failed_advance_is_atomic_and_keeps_the_lease(leases: LeaseManager, index: RunIndex, run_id: str) -> None:
    good = NewPublication.status_event(run_id, 0, "WAITING", topic="sr.run-status", payload=b"ok")
    # A publication the schema rejects (its pub_key is not derived from its fact).
    bad = NewPublication(pub_key=f"{run_id}:wrong", kind="READY", topic="sr.ready", payload=b"x",
                         facts_view_hash=hex64("f"), event_type="READY")
    with leases.acquire(run_id) as lease:
        with pytest.raises(PostgresError) as info:
            lease.advance(RunStatus.WAITING, ledger_seq=0, ledger_head_hash=hex64("h0"), publications=[good, bad])
        assert not isinstance(info.value, LeaseLostError | StaleEpochError)
        row = index.get(run_id)
        assert row is not None and (row.status, row.ledger_seq) == (RunStatus.ADMITTED, -1)
        assert index.publications(run_id) == []
        assert lease.is_held()
        with pytest.raises(ValueError):
            lease.advance(RunStatus.WAITING, ledger_seq=0, ledger_head_hash=hex64("h0"), publications=[good, good])
        with pytest.raises(ValueError):
            other = NewPublication.status_event("f" * 32, 0, "WAITING", topic="t", payload=b"x")
            lease.advance(RunStatus.WAITING, ledger_seq=0, ledger_head_hash=hex64("h0"), publications=[other])
        lease.advance(RunStatus.WAITING, ledger_seq=0, ledger_head_hash=hex64("h0"), publications=[good])


def test_closing_the_manager_frees_every_lock(config: PgConfig, run_id: str, pg_dsn: str) -> None:
    mgr = LeaseManager(config)
    with mgr:
        lease = mgr.acquire(run_id)
        assert advisory_locks(pg_dsn) == 1
    with pytest.raises(LeaseLostError):
        lease.touch_head(0, hex64("x"))
    deadline = time.monotonic() + 5
    while advisory_locks(pg_dsn) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert advisory_locks(pg_dsn) == 0


def test_a_dropped_lease_does_not_pin_its_lock(leases: LeaseManager, run_id: str, pg_dsn: str) -> None:
    import gc

    lease = leases.acquire(run_id)
    assert advisory_locks(pg_dsn) == 1
    del lease
    gc.collect()
    deadline = time.monotonic() + 5
    while advisory_locks(pg_dsn) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert advisory_locks(pg_dsn) == 0
    with leases.acquire(run_id) as again:
        assert again.epoch == 2
