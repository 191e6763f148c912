"""The Postgres run index and migrations, against the real server (no mocks)."""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import pytest
from pydantic import SecretStr

from worker.adapters.postgres import MigrationError, PgConfig, RoundTripCounter, RunIndex, load_migrations, migrate
from worker.adapters.postgres.leases import LeaseManager, advance_with_epoch
from worker.core.identity import attempt_id_for, run_id_for
from worker.core.index import AdmissionOutcome, NewPublication, NewRun, PublicationKind
from worker.core.models import RunStatus
from worker.errors import PostgresError, PostgresUnavailableError

pytestmark = pytest.mark.integration


# ----------------------------------------------------------------------------- helpers
def hex64(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def new_run(seed: str | None = None, *, fingerprint: str = "fp-1", tenant: str = "acme",
            deadline: datetime | None = None) -> NewRun:
    seed = seed or uuid.uuid4().hex
    key = hex64(f"key|{seed}")
    return NewRun(
        run_id=run_id_for(key),
        run_equivalence_key=key,
        intent_fingerprint=hex64(fingerprint),
        tenant_id=tenant,
        namespace="ns",
        scenario_id="sc",
        intent={"tenant_id": tenant, "namespace": "ns", "scenario_id": "sc", "output_ids": ["a"], "seed": seed},
        evidence_root=f"s3://bucket/evidence/{tenant}/x",
        deadline=deadline,
    )


def dsn_for_db(server_dsn: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(server_dsn)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo("", **{k: str(v) for k, v in params.items() if v is not None})


@pytest.fixture
def empty_db(pg_server_dsn: str) -> Iterator[str]:
    """A brand-new database WITHOUT migrations; dropped afterwards."""
    name = f"sr_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield dsn_for_db(pg_server_dsn, name)
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def counter() -> RoundTripCounter:
    return RoundTripCounter()


@pytest.fixture
def index(pg_dsn: str, counter: RoundTripCounter) -> Iterator[RunIndex]:
    with RunIndex(PgConfig(dsn=SecretStr(pg_dsn), pool_size=4), counter) as idx:
        yield idx


def raw(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


# ----------------------------------------------------------------------------- migrations
def test_migrate_is_a_noop_on_a_migrated_db(pg_dsn: str) -> None:
    assert migrate(pg_dsn) == []
    assert migrate(pg_dsn) == []
    with raw(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT version, name, checksum, applied_at FROM sr_schema_migrations ORDER BY version").fetchall()
    shipped = load_migrations()
    assert [m.name for m in shipped][:3] == ["0001_init", "0002_operator_actions", "0003_engine_requests"]
    # Every shipped migration is recorded exactly once, with its checksum.
    assert [(r[0], r[1], r[2]) for r in rows] == [(m.version, m.name, m.checksum) for m in shipped]
    assert all(r[3] is not None for r in rows)


def test_concurrent_migrate_applies_once(empty_db: str) -> None:
    barrier = threading.Barrier(3)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            results.append(migrate(empty_db))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(results) == 3
    assert sorted(name for r in results for name in r) == [m.name for m in load_migrations()]
    with raw(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM sr_schema_migrations").fetchone() == (len(load_migrations()),)
        assert conn.execute("SELECT to_regclass('sr_runs') IS NOT NULL, "
                            "to_regclass('sr_publications') IS NOT NULL").fetchone() == (True, True)
    assert migrate(empty_db) == []


def test_tampered_checksum_is_detected(pg_dsn: str) -> None:
    with raw(pg_dsn) as conn:
        conn.execute("UPDATE sr_schema_migrations SET checksum = repeat('0', 64) WHERE version = 1")
    with pytest.raises(MigrationError, match="must never change"):
        migrate(pg_dsn)


def test_changed_file_new_file_and_failed_migration(empty_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t_first (id int);\n")
    (tmp_path / "queries.sql").write_text("-- name: not_a_migration\nSELECT 1;\n")
    assert migrate(empty_db, migrations=load_migrations(tmp_path)) == ["0001_first"]
    assert migrate(empty_db, migrations=load_migrations(tmp_path)) == []

    # A new file is applied, alone.
    (tmp_path / "0002_second.sql").write_text("CREATE TABLE t_second (id int);\nINSERT INTO t_second VALUES (1);\n")
    assert migrate(empty_db, migrations=load_migrations(tmp_path)) == ["0002_second"]

    # A failing migration rolls back completely and is not recorded.
    (tmp_path / "0003_broken.sql").write_text("CREATE TABLE t_third (id int);\nSELECT no_such_function();\n")
    with pytest.raises(PostgresError) as info:
        migrate(empty_db, migrations=load_migrations(tmp_path))
    assert not isinstance(info.value, MigrationError | PostgresUnavailableError)
    with raw(empty_db) as conn:
        assert conn.execute("SELECT to_regclass('t_third')").fetchone() == (None,)
        assert conn.execute("SELECT array_agg(version ORDER BY version) FROM sr_schema_migrations").fetchone() == (
            [1, 2],)
    (tmp_path / "0003_broken.sql").unlink()

    # Editing an applied file is an error; nothing else is applied.
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t_first (id bigint);\n")
    with pytest.raises(MigrationError):
        migrate(empty_db, migrations=load_migrations(tmp_path))


def test_duplicate_versions_rejected(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError):
        load_migrations(tmp_path)


# ----------------------------------------------------------------------------- admission
def test_admit_new_duplicate_collision_one_round_trip_each(index: RunIndex, counter: RoundTripCounter) -> None:
    run = new_run(deadline=datetime(2030, 1, 1, tzinfo=UTC))

    counter.reset()
    first = index.admit(run)
    assert counter.snapshot() == 1
    assert first.outcome is AdmissionOutcome.NEW
    row = first.row
    assert (row.run_id, row.status, row.ledger_seq, row.lease_epoch) == (run.run_id, RunStatus.ADMITTED, -1, 0)
    assert row.plan_hash is None and row.facts_view_hash is None and row.ledger_head_hash is None
    assert row.intent == dict(run.intent)
    assert row.deadline == datetime(2030, 1, 1, tzinfo=UTC)

    counter.reset()
    again = index.admit(run)
    assert counter.snapshot() == 1
    assert again.outcome is AdmissionOutcome.DUPLICATE
    assert again.row == row

    counter.reset()
    other = new_run(fingerprint="fp-2")
    clash = replace(run, intent_fingerprint=other.intent_fingerprint, intent={"changed": True})
    collision = index.admit(clash)
    assert counter.snapshot() == 1
    assert collision.outcome is AdmissionOutcome.COLLISION
    assert collision.row == row  # the existing run, untouched
    assert index.get(run.run_id) == row


def test_admit_same_equivalence_key_other_run_id_is_collision(index: RunIndex) -> None:
    run = new_run()
    index.admit(run)
    liar = replace(run, run_id="f" * 32)
    result = index.admit(liar)
    assert result.outcome is AdmissionOutcome.COLLISION
    assert result.row.run_id == run.run_id
    assert index.get("f" * 32) is None


def test_concurrent_admissions_exactly_one_new(index: RunIndex) -> None:
    run = new_run()
    barrier = threading.Barrier(6)
    outcomes: list[AdmissionOutcome] = []

    def worker() -> None:
        barrier.wait()
        outcomes.append(index.admit(run).outcome)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == sorted([AdmissionOutcome.NEW] + [AdmissionOutcome.DUPLICATE] * 5)


def test_new_run_validates_identifiers() -> None:
    run = new_run()
    with pytest.raises(ValueError, match="run_id"):
        replace(run, run_id="not-hex")
    with pytest.raises(ValueError, match="intent_fingerprint"):
        replace(run, intent_fingerprint="ABC")


# ----------------------------------------------------------------------------- reads
def test_get_list_and_due_for_check(index: RunIndex, pg_dsn: str, counter: RoundTripCounter) -> None:
    now = datetime.now(UTC)
    a = new_run(tenant="t1")
    b = new_run(tenant="t2", deadline=now - timedelta(seconds=60))  # deadline passed
    c = new_run(tenant="t1")
    d = new_run(tenant="t1", deadline=now + timedelta(days=1))
    for run in (a, b, c, d):
        index.admit(run)
    assert index.get("0" * 32) is None

    with raw(pg_dsn) as conn:
        # a: WAITING, re-check due; b: WAITING, deadline passed; c: ADMITTED; d: WAITING, not due.
        advance_with_epoch(conn, a.run_id, 0, RunStatus.WAITING, ledger_seq=0, ledger_head_hash=hex64("a0"),
                           reason_code="EVIDENCE_MISSING", next_check_at=now - timedelta(seconds=5))
        advance_with_epoch(conn, b.run_id, 0, RunStatus.WAITING, ledger_seq=0, ledger_head_hash=hex64("b0"),
                           next_check_at=now + timedelta(hours=1))
        advance_with_epoch(conn, d.run_id, 0, RunStatus.WAITING, ledger_seq=0, ledger_head_hash=hex64("d0"),
                           next_check_at=now + timedelta(hours=1))

    counter.reset()
    due = index.due_for_check(now, limit=10)
    assert counter.snapshot() == 1
    assert {r.run_id for r in due} == {a.run_id, b.run_id}
    assert index.due_for_check(now, limit=1)[0].run_id == b.run_id  # most overdue first

    row_a = index.get(a.run_id)
    assert row_a is not None
    assert (row_a.status, row_a.reason_code, row_a.ledger_seq) == (RunStatus.WAITING, "EVIDENCE_MISSING", 0)

    assert {r.run_id for r in index.list_runs()} == {a.run_id, b.run_id, c.run_id, d.run_id}
    assert {r.run_id for r in index.list_runs(tenant="t1")} == {a.run_id, c.run_id, d.run_id}
    assert {r.run_id for r in index.list_runs(status=RunStatus.WAITING, tenant="t1")} == {a.run_id, d.run_id}
    assert {r.run_id for r in index.list_runs(status="ADMITTED")} == {c.run_id}
    assert {r.run_id for r in index.list_runs(status=RunStatus.WAITING, reason="EVIDENCE_MISSING")} == {a.run_id}
    assert index.list_runs(reason="ENGINE_RUNNING") == []
    assert index.list_runs(since=now + timedelta(days=1)) == []
    assert len(index.list_runs(limit=2)) == 2
    with pytest.raises(ValueError):
        index.list_runs(limit=0)


# ----------------------------------------------------------------------------- publications
def test_publications_outbox_and_mark_published(index: RunIndex, pg_dsn: str, counter: RoundTripCounter) -> None:
    run = new_run()
    index.admit(run)
    fvh = hex64("facts")
    ready = NewPublication.ready(run.run_id, fvh, "READY", topic="sr.ready", payload=b"\xc3\x01ready",
                                 msg_key=run.run_id.encode(),
                                 headers={"sr-idempotency-key": f"{run.run_id}:{fvh}:READY"})
    status = NewPublication.status_event(run.run_id, 0, "WAITING", topic="sr.run-status", payload=b"waiting")
    assert ready.pub_key == f"{run.run_id}:{fvh}:READY"
    assert status.pub_key == f"{run.run_id}:status:0:WAITING"
    with raw(pg_dsn) as conn:
        stored = advance_with_epoch(conn, run.run_id, 0, RunStatus.READY, ledger_seq=1,
                                    ledger_head_hash=hex64("h1"), facts_view_hash=fvh, plan_hash=hex64("plan"),
                                    publications=[status, ready])
    assert [p.pub_key for p in stored] == [status.pub_key, ready.pub_key]
    assert stored[1].kind is PublicationKind.READY and stored[1].payload == b"\xc3\x01ready"
    assert stored[1].headers == {"sr-idempotency-key": f"{run.run_id}:{fvh}:READY"}
    assert stored[1].kafka_headers() == [("sr-idempotency-key", f"{run.run_id}:{fvh}:READY".encode())]

    counter.reset()
    pending = index.pending_publications(run.run_id)
    assert counter.snapshot() == 1
    assert [p.pub_key for p in pending] == [status.pub_key, ready.pub_key]
    assert {p.pub_key for p in index.unpublished(100)} == {status.pub_key, ready.pub_key}

    counter.reset()
    index.mark_published(ready.pub_key, 3, 42)
    assert counter.snapshot() == 1
    index.mark_published(ready.pub_key, 7, 99)  # idempotent: the first position stays
    [done] = [p for p in index.publications(run.run_id) if p.pub_key == ready.pub_key]
    assert (done.kafka_partition, done.kafka_offset) == (3, 42) and done.published_at is not None
    assert [p.pub_key for p in index.pending_publications(run.run_id)] == [status.pub_key]
    assert [p.pub_key for p in index.unpublished(100)] == [status.pub_key]

    with pytest.raises(PostgresError):
        index.mark_published(f"{run.run_id}:nope", 0, 0)


def test_engine_request_publications_through_the_lease(index: RunIndex, pg_dsn: str,
                                                      counter: RoundTripCounter) -> None:
    run = new_run()
    index.admit(run)
    first, second = attempt_id_for(run.run_id, 1), attempt_id_for(run.run_id, 2)
    request = NewPublication.engine_request(run.run_id, first, topic="sr.engine-requests", payload=b"\xc3\x01req1",
                                            msg_key=run.run_id.encode(),
                                            headers={"sr-idempotency-key": f"{run.run_id}:engine:{first}"})
    waiting = NewPublication.status_event(run.run_id, 1, "WAITING", topic="sr.run-status", payload=b"waiting")
    with LeaseManager(PgConfig(dsn=SecretStr(pg_dsn), pool_size=2), counter) as leases, \
            leases.acquire(run.run_id) as lease:
        counter.reset()
        stored = lease.advance(RunStatus.WAITING, ledger_seq=1, ledger_head_hash=hex64("e1"),
                               reason_code="ENGINE_RUNNING", plan_hash=hex64("plan"), publications=[request, waiting])
        assert counter.snapshot() == 1
        assert [(p.pub_key, p.kind) for p in stored] == [
            (f"{run.run_id}:engine:{first}", PublicationKind.ENGINE_REQUEST), (waiting.pub_key, PublicationKind.STATUS)]
        assert (stored[0].facts_view_hash, stored[0].event_type, stored[0].payload) == (None, None, b"\xc3\x01req1")
        # The same attempt again (a re-drive after a crash): the stored row and its bytes are kept.
        resent = NewPublication.engine_request(run.run_id, first, topic="sr.engine-requests", payload=b"other bytes")
        again = lease.advance(RunStatus.WAITING, ledger_seq=2, ledger_head_hash=hex64("e2"),
                              reason_code="ENGINE_RUNNING", publications=[resent])
        assert [(p.id, p.payload) for p in again] == [(stored[0].id, b"\xc3\x01req1")]
        lease.advance(RunStatus.WAITING, ledger_seq=3, ledger_head_hash=hex64("e3"), reason_code="ENGINE_RUNNING",
                      publications=[NewPublication.engine_request(run.run_id, second, topic="sr.engine-requests",
                                                                  payload=b"\xc3\x01req2")])
    assert [p.pub_key for p in index.pending_publications(run.run_id)] == [
        f"{run.run_id}:engine:{first}", waiting.pub_key, f"{run.run_id}:engine:{second}"]
    index.mark_published(f"{run.run_id}:engine:{first}", 0, 7)
    assert f"{run.run_id}:engine:{first}" not in {p.pub_key for p in index.unpublished(100)}


@pytest.mark.parametrize(("kind", "pub_key", "fvh", "event_type"), [
    ("ENGINE_REQUEST", "{run}:engine:" + "A" * 32, None, None),  # attempt id not lowercase hex
    ("ENGINE_REQUEST", "{run}:engine:" + "0" * 31, None, None),
    ("ENGINE_REQUEST", "{run}:engine:" + "0" * 32 + ":x", None, None),
    ("ENGINE_REQUEST", "{other}:engine:" + "0" * 32, None, None),  # another run's key
    ("ENGINE_REQUEST", "{run}:status:" + "0" * 32, None, None),
    ("ENGINE_REQUEST", "{run}:engine:" + "0" * 32, "f" * 64, None),  # names a facts view
    ("ENGINE_REQUEST", "{run}:engine:" + "0" * 32, None, "READY"),
    ("ENGINE", "{run}:engine:" + "0" * 32, None, None),  # unknown kind
])
def test_the_schema_enforces_the_engine_request_shape(pg_dsn: str, kind: str, pub_key: str, fvh: str | None,
                                                      event_type: str | None) -> None:
    run = new_run()
    with RunIndex(PgConfig(dsn=SecretStr(pg_dsn), pool_size=1)) as idx:
        idx.admit(run)
    insert = ("INSERT INTO sr_publications (run_id, pub_key, kind, facts_view_hash, event_type, topic, payload) "
              "VALUES (%s, %s, %s, %s, %s, 't', '\\x00')")
    with raw(pg_dsn) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(insert, (run.run_id, pub_key.format(run=run.run_id, other="f" * 32), kind, fvh, event_type))
        conn.execute(insert, (run.run_id, f"{run.run_id}:engine:{'0' * 32}", "ENGINE_REQUEST", None, None))


def test_publication_shape_is_validated() -> None:
    with pytest.raises(ValueError):
        NewPublication(pub_key="x", kind="READY", topic="t", payload=b"p")  # no facts_view_hash
    with pytest.raises(ValueError):
        NewPublication(pub_key="x", kind="STATUS", topic="t", payload=b"p", event_type="READY")
    with pytest.raises(ValueError):
        NewPublication(pub_key="x", kind="BOGUS", topic="t", payload=b"p")


# ----------------------------------------------------------------------------- connections
def test_dead_pooled_connection_is_replaced(index: RunIndex, pg_dsn: str, counter: RoundTripCounter) -> None:
    run = new_run()
    index.admit(run)
    with raw(pg_dsn) as conn:
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'scenario-runner'"
        ).fetchall()]
        assert pids
        for pid in pids:
            assert conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone() == (True,)
    counter.reset()
    for _ in range(20):
        row = index.get(run.run_id)
        assert row is not None and row.run_id == run.run_id
    # The pool noticed the dropped sessions without a round trip: no failed attempt at all.
    assert counter.snapshot() == 20


def test_unreachable_server_is_retryable_and_init_does_no_io() -> None:
    config = PgConfig(dsn=SecretStr("host=127.0.0.1 port=1 dbname=x user=x connect_timeout=1"),
                      connect_timeout=1, max_attempts=2, backoff_max=0.1)
    idx = RunIndex(config)  # no I/O here
    with pytest.raises(PostgresUnavailableError), idx:
        pass


def test_config_hides_the_dsn() -> None:
    config = PgConfig(dsn=SecretStr("postgresql://u:hunter2@h/db"))
    assert "hunter2" not in repr(config) and "hunter2" not in str(config)
    assert config.statement_timeout == 30 and config.pool_size == 8
    with pytest.raises(ValueError):
        PgConfig(dsn=SecretStr("x"), pool_size=0)
