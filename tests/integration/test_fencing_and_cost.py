"""Leadership, fencing of a paused lease holder, and the request cost of a run (points 5 and 8)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest

from tests.harness.evidence import EvidenceWriter
from tests.harness.kafka import read_topic
from tests.harness.sr_env import SREnv, make_intent
from worker.adapters.postgres.leases import advance_with_epoch
from worker.app.ports import Record
from worker.app.processor import Action
from worker.core.identity import run_id_of, run_lock_key
from worker.core.models import RunIntent, RunStatus
from worker.errors import LeaseLostError, StaleEpochError
from worker.runtime.compose import Services, open_services
from worker.runtime.dispatch import dispatch

pytestmark = pytest.mark.integration


def intent_record(env: SREnv, intent: RunIntent, offset: int = 0) -> Record:
    """A consumed-record stand-in for calling the processor directly."""
    return Record(topic=env.settings.topics.intents, partition=0, offset=offset, key=None,
                  value=env.codec.encode_intent(intent), headers=(), timestamp_ms=None)


class BlockingVerifier:
    """Wraps the real verifier; the first verify_plan call blocks until released."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def verify_plan(self, plan: Any) -> Any:
        self.entered.set()
        if not self.release.wait(60):
            raise RuntimeError("test never released the verifier")
        return self.real.verify_plan(plan)


@pytest.fixture
def two_workers(sr_env: SREnv) -> Iterator[tuple[Services, Services]]:
    """Two independent service stacks (own S3 client, Postgres pools, producer) = two workers."""
    with ExitStack() as stack:
        a = stack.enter_context(open_services(sr_env.settings, sr_env.policy))
        b = stack.enter_context(open_services(sr_env.settings, sr_env.policy, migrate_db=False))
        yield a, b


def _terminate_lock_holder(dsn: str, run_id: str) -> int:
    """Kill the backend holding the run's advisory lock (what a long pause + keepalive timeout does)."""
    key = run_lock_key(run_id)
    classid, objid = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = %s AND objid::bigint = %s", (classid, objid)).fetchone()
        assert row is not None, "no backend holds the run's lock"
        conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        return int(row[0])


def test_one_leader_and_a_fenced_holder_cannot_write(sr_env: SREnv, write_evidence: EvidenceWriter,
                                                     two_workers: tuple[Services, Services], s3_client: Any) -> None:
    a, b = two_workers
    write_evidence("race")
    intent = make_intent(sr_env, "race")
    run_id = run_id_of(intent)
    blocker = BlockingVerifier(a.processor.context.verifier)
    processor_a = a.processor.replace(verifier=blocker)

    result: dict[str, Any] = {}

    def run_a() -> None:
        try:
            result["a"] = dispatch(processor_a, intent_record(sr_env, intent),
                                   triggers_topic=sr_env.settings.topics.triggers)
        except BaseException as exc:
            result["a_error"] = exc

    thread = threading.Thread(target=run_a)
    thread.start()
    assert blocker.entered.wait(30), "worker A never reached verification"

    # Race: while A holds the lease, B cannot lead the run.
    assert b.processor.drive(run_id, fresh=False, wait=0.0).action is Action.BUSY
    row = b.index.get(run_id)
    assert row is not None
    epoch_a = row.lease_epoch

    # A "pauses" long enough for its session to be dropped; B takes over and completes.
    _terminate_lock_holder(sr_env.settings.pg_conninfo().get_secret_value(), run_id)
    outcome_b = b.processor.drive(run_id, fresh=False, wait=10.0)
    assert outcome_b.action is Action.READY
    row_b = b.index.get(run_id)
    assert row_b is not None and row_b.lease_epoch == epoch_a + 1

    # A resumes: every write it attempts is rejected.
    blocker.release.set()
    thread.join(60)
    assert isinstance(result.get("a_error"), LeaseLostError), result
    with psycopg.connect(sr_env.settings.pg_conninfo().get_secret_value(), autocommit=True) as conn, \
            pytest.raises(StaleEpochError):
        advance_with_epoch(conn, run_id, epoch_a, RunStatus.FAILED, ledger_seq=row_b.ledger_seq,
                           ledger_head_hash=row_b.ledger_head_hash or "", reason_code="STALE_WRITER")
    final = b.index.get(run_id)
    assert final is not None
    assert (final.status, final.facts_view_hash, final.lease_epoch) == (
        RunStatus.READY, row_b.facts_view_hash, row_b.lease_epoch)
    # One consistent history: a single READY entry, written under B's epoch; one READY event.
    keys = b.processor.context.truth.keys_for(intent.tenant_id, intent.namespace, run_id)
    ledger = b.processor.context.truth.read_ledger(keys)
    assert [(e.kind.value, e.lease_epoch) for e in ledger] == [("READY", row_b.lease_epoch)]
    ready = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.ready,
                       until=lambda rs: len(rs) >= 1, settle=1.5)
    assert len(ready) == 1


def test_request_cost_of_a_ready_run_and_a_duplicate(sr_env: SREnv, write_evidence: EvidenceWriter,
                                                     two_workers: tuple[Services, Services]) -> None:
    services, _ = two_workers
    write_evidence("cost")
    intent = make_intent(sr_env, "cost")
    services.store.counter.reset()
    services.pg_counter.reset()
    outcome = dispatch(services.processor, intent_record(sr_env, intent),
                       triggers_topic=sr_env.settings.topics.triggers)
    assert outcome.action is Action.READY
    ready_s3 = services.store.counter.snapshot()
    ready_pg = services.pg_counter.snapshot()

    services.store.counter.reset()
    services.pg_counter.reset()
    duplicate = intent.model_copy(update={"request_id": "another-request", "submitted_by": "someone-else"})
    outcome = dispatch(services.processor, intent_record(sr_env, duplicate, offset=1),
                       triggers_topic=sr_env.settings.topics.triggers)
    assert outcome.action is Action.DUPLICATE
    dup_s3 = services.store.counter.snapshot()
    dup_pg = services.pg_counter.snapshot()

    print(f"\nCOST READY run: S3 {ready_s3}, Postgres round trips {ready_pg}")
    print(f"COST duplicate: S3 {dup_s3}, Postgres round trips {dup_pg}")
    # READY run (2 gates x 4 members): plan + facts view + one ledger entry are the only writes.
    assert ready_s3["PUT"] == 3
    assert ready_s3["HEAD"] == 0 and ready_s3["DELETE"] == 0
    # 3A: flag, index.json, 4 members; 6B (scoped): flag, 4 members and its _receipt.json, read
    # for the digest like any member and judged from those bytes (no request of its own).
    assert ready_s3["GET"] == 12 and ready_s3["LIST"] == 1
    # admit, acquire (returns the row), advance (+publication), mark published, release.
    assert ready_pg <= 5
    # A duplicate costs no S3 request at all and one Postgres round trip.
    assert sum(v for k, v in dup_s3.items() if not k.startswith("bytes")) == 0
    assert dup_pg <= 2
