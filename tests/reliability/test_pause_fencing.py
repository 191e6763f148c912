"""Pause fencing with real processes: SIGSTOP a lease holder, let another worker take the run, SIGCONT.

A stopped process on a live kernel keeps its TCP sessions (the kernel still answers
keepalives), so the pause is completed the way a frozen VM or a partition ends it: the
holder's Postgres session is terminated (``pg_terminate_backend``), which frees the advisory
lock. A second worker then takes the run (epoch + 1) and commits it. When the stale holder
resumes, every write it attempts must be rejected — the ledger PUT by ``If-None-Match``, the
index advance by its dead session / the epoch check — and the run must show one history.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest

from tests.harness.evidence import (
    GATE_3A_MEMBERS,
    GATE_6B_MEMBERS,
    RECEIPT_NAME,
    bundle_digest,
    default_instance,
    flag_bytes,
    receipt_bytes,
    upload_member_concat_gate,
)
from tests.harness.kafka import read_topic, submit
from tests.harness.parallel import HEAVY
from tests.harness.probes import list_objects, lock_holder, terminate_backend
from tests.harness.probes import wait_for as poll
from tests.harness.sr_env import SREnv, make_intent
from tests.harness.workers import WorkerProc, assigned_partitions, log_lines, stop_all, unclean_exits
from tests.reliability.conftest import report
from worker.adapters.postgres import RoundTripCounter, RunIndex
from worker.adapters.postgres.leases import advance_with_epoch, touch_head_with_epoch
from worker.adapters.s3 import ObjectStore
from worker.app.truth import AppendStatus, TruthStore
from worker.core.identity import run_id_of, run_lock_key
from worker.core.keys import run_keys
from worker.core.ledger import LedgerKind, derive_state, entry_bytes, next_entry
from worker.core.models import RunStatus
from worker.errors import StaleEpochError
from worker.runtime.compose import pg_config, s3_config
from worker.runtime.dispatch import dispatch

# HEAVY (tests/harness/parallel.py): several worker processes under load, run one at a time.
pytestmark = [pytest.mark.integration, HEAVY]

#: Members added to gate 6B so verifying the run keeps its lease held for a second or more (obstore
#: reads ~1,000 small members/s here; boto3 read 400 in ~2 s).
SLOW_MEMBERS = 1600
#: Seconds between seeing the lease taken and freezing its holder (the lease is held ~1.5-2 s).
FREEZE_AFTER = 0.4


def _seed_slow_evidence(env: SREnv, s3_client: Any, name: str) -> None:
    root = env.evidence_prefix(name)
    upload_member_concat_gate(s3_client, env.bucket, root, "gates/3A", GATE_3A_MEMBERS)
    members = {**GATE_6B_MEMBERS, **{f"transactions/extra-{i:05d}.csv": f"tx,{i}\n".encode()
                                     for i in range(SLOW_MEMBERS)},
               RECEIPT_NAME: receipt_bytes("gate_6B", default_instance(name))}  # gate_6B is scoped
    prefix = f"{root}/gates/6B"
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: s3_client.put_object(Bucket=env.bucket, Key=f"{prefix}/{item[0]}",
                                                        Body=item[1]), members.items()))
    s3_client.put_object(Bucket=env.bucket, Key=f"{prefix}/_passed.flag", Body=flag_bytes(bundle_digest(members)))


def _catch_lease_holder(dsn: str, run_id: str, timeout: float) -> int:
    """Spin on pg_locks until some backend holds the run's advisory lock; its pid."""
    key = run_lock_key(run_id) & 0xFFFF_FFFF_FFFF_FFFF
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
                (key >> 32, key & 0xFFFF_FFFF)).fetchone()
            if row is not None:
                return int(row[0])
    raise AssertionError(f"no worker took the lease on run {run_id} within {timeout}s")


def test_sigstopped_lease_holder_is_fenced_and_the_run_keeps_one_history(
    sr_env: SREnv, s3_client: Any, tmp_path: Path,
) -> None:
    started = time.monotonic()
    _seed_slow_evidence(sr_env, s3_client, "paused")
    intent = make_intent(sr_env, "paused")
    run_id = run_id_of(intent)
    dsn = sr_env.settings.pg_conninfo().get_secret_value()
    keys = run_keys(sr_env.settings.s3_prefix, intent.tenant_id, intent.namespace, run_id)
    stale = WorkerProc(sr_env, tmp_path / "stale.log")
    taker = WorkerProc(sr_env, tmp_path / "taker.log")
    try:
        stale.start()
        assert poll(lambda: bool(assigned_partitions(stale.log, sr_env.settings.topics.intents)), 60)
        submit(sr_env, [intent])

        # 1. Freeze the worker while it holds the run's lease (mid-verification).
        holder = _catch_lease_holder(dsn, run_id, timeout=60)
        time.sleep(FREEZE_AFTER)  # past the lease's own statements, into the ~2 s of verification
        stale.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        with RunIndex(pg_config(sr_env.settings), RoundTripCounter()) as index:
            frozen = index.get(run_id)
        assert frozen is not None
        assert frozen.status is RunStatus.ADMITTED and lock_holder(dsn, run_id) == holder, (
            "the worker finished the run before it could be frozen; make the evidence slower")
        stale_epoch = frozen.lease_epoch

        # 2. The pause outlives the session: the lock is freed, another worker takes over.
        assert terminate_backend(dsn, holder)
        taker.start()
        with RunIndex(pg_config(sr_env.settings), RoundTripCounter()) as index:
            assert poll(lambda: getattr(index.get(run_id), "status", None) is RunStatus.READY, 90), (
                "the second worker never committed the run")
            taken = index.get(run_id)
        assert taken is not None and taken.lease_epoch == stale_epoch + 1
        objects_before = list_objects(s3_client, sr_env.bucket, keys.root + "/")

        # 3. The stale holder resumes and runs into the fence.
        stale.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        lost = f"lease on run {run_id} lost during advance"
        assert poll(lambda: any(lost in str(line.get("error", "")) for line in log_lines(stale.log)), 60), (
            "the resumed holder never attempted (and failed) its epoch-checked index write")
        ready = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.ready,
                           until=lambda rs: len(rs) >= 1, timeout=30, settle=3.0)
        dead = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.dlq, timeout=1.5)
    finally:
        codes = stop_all([stale, taker])
    assert codes == [0, 0], (f"exit codes (stale, taker): {codes}: the evicted worker must rejoin, not die\n"
                             f"{unclean_exits([stale, taker], codes)}")

    # The stale holder's writes all bounced: no second READY, no object rewritten, no DLQ.
    assert len(ready) == 1, f"{len(ready)} READY records (expected exactly one)"
    assert dead == []
    objects_after = list_objects(s3_client, sr_env.bucket, keys.root + "/")
    assert objects_after == objects_before
    assert sorted(k[len(keys.root) + 1:] for k in objects_after) == [
        f"facts/{sr_env.codec.decode_ready(ready[0].value or b'').facts_view_hash}.json", "plan.json",
        "record/000000000000.json"]
    with RunIndex(pg_config(sr_env.settings), RoundTripCounter()) as index:
        final = index.get(run_id)
    assert final is not None and (final.status, final.lease_epoch, final.facts_view_hash) == (
        RunStatus.READY, taken.lease_epoch, taken.facts_view_hash)

    # One consistent history: a single READY entry written under the taker's epoch.
    with ObjectStore(s3_config(sr_env.settings)) as store:
        truth = TruthStore(store, sr_env.bucket, sr_env.settings.s3_prefix)
        ledger = truth.read_ledger(keys)
        state = derive_state(ledger)
        assert [(e.kind, e.lease_epoch) for e in ledger] == [(LedgerKind.READY, taken.lease_epoch)]
        assert (state.status, state.facts_view_hash, state.fenced_seqs) == (
            RunStatus.READY, taken.facts_view_hash, ())
        # What the stale holder tried at seq 0 is refused by If-None-Match, whatever its bytes.
        stale_entry = next_entry(run_id, None, kind=LedgerKind.READY, at_ms=ledger[0].at_ms + 1,
                                 lease_epoch=stale_epoch, body=dict(ledger[0].body))
        outcome = truth.append(keys, stale_entry)
        assert outcome.status is AppendStatus.CONFLICT and entry_bytes(outcome.entry) == entry_bytes(ledger[0])
    assert list_objects(s3_client, sr_env.bucket, keys.root + "/") == objects_before

    # And the index refuses the stale epoch even on a fresh connection (a reconnected holder).
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(StaleEpochError):
            advance_with_epoch(conn, run_id, stale_epoch, RunStatus.FAILED, ledger_seq=0,
                               ledger_head_hash=final.ledger_head_hash, reason_code="STALE_WRITER")
        with pytest.raises(StaleEpochError):
            touch_head_with_epoch(conn, run_id, stale_epoch, 1, hashlib.sha256(b"stale").hexdigest())
    with RunIndex(pg_config(sr_env.settings), RoundTripCounter()) as index:
        unchanged = index.get(run_id)
    assert unchanged is not None and (unchanged.status, unchanged.ledger_seq, unchanged.lease_epoch) == (
        RunStatus.READY, final.ledger_seq, final.lease_epoch)
    stale_stats = [line for line in log_lines(stale.log) if line.get("message") == "worker stopped"]
    # After resuming it PUT the facts view and its seq-0 entry; neither changed a byte above:
    # both were refused by If-None-Match (the facts view, being identical, was merely adopted).
    assert stale_stats and stale_stats[-1]["s3_requests"]["PUT"] >= 2, stale_stats
    report(f"pause fencing: stale epoch {stale_epoch} fenced by epoch {taken.lease_epoch}; stale worker exit "
           f"{codes[0]}, its S3 requests {stale_stats[-1]['s3_requests']}; "
           f"{time.monotonic() - started:.1f}s")


def test_worker_survives_a_commit_refused_because_the_group_moved_on(
    sr_env: SREnv, s3_client: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (found here, fixed in 6fc57bc): a commit refused with "Local: Group partition
    assignment lost" — what the SIGCONT'd worker above meets — used to end ``sr run``."""
    from confluent_kafka import Consumer, KafkaError, KafkaException

    from tests.harness.workers import WorkerThread
    from worker.adapters.kafka import IntakeConsumer

    upload_member_concat_gate(s3_client, sr_env.bucket, sr_env.evidence_prefix("moved"), "gates/3A",
                              GATE_3A_MEMBERS)
    real_commit = IntakeConsumer._commit
    refused: list[int] = []

    def commit_once_refused(consumer: Any) -> None:
        if not refused:
            refused.append(1)
            real_commit(cast(Consumer, _Refusing(KafkaException(KafkaError(KafkaError._ASSIGNMENT_LOST)))))
        real_commit(consumer)

    monkeypatch.setattr(IntakeConsumer, "_commit", staticmethod(commit_once_refused))
    first = make_intent(sr_env, "moved", outputs=("accounts",), seed=1)
    second = make_intent(sr_env, "moved", outputs=("accounts",), seed=2)
    worker = WorkerThread(sr_env).start()
    try:
        submit(sr_env, [first])
        assert poll(lambda: bool(refused), 60)
        submit(sr_env, [second])
        ready = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.ready,
                           until=lambda rs: len({r.key for r in rs}) >= 2 or not worker.thread.is_alive(),
                           timeout=40)
        alive = worker.thread.is_alive()
    finally:
        worker.worker.stop()
        worker.thread.join(60)
    assert alive, f"the worker loop died: {worker.error!r}"
    assert {r.key for r in ready} == {run_id_of(first).encode(), run_id_of(second).encode()}


class _Refusing:
    """A consumer whose commit fails the way librdkafka fails it after an eviction."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def commit(self, asynchronous: bool = False) -> None:
        raise self.exc


class _GatedVerifier:
    """Wraps the real verifier; ``verify_plan`` waits until the test opens the gate."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def verify_plan(self, plan: Any) -> Any:
        self.entered.set()
        if not self.gate.wait(60):
            raise RuntimeError("the test never opened the gate")
        return self.real.verify_plan(plan)


def test_fenced_holder_with_a_different_decision_is_re_driven_not_dead_lettered(
    sr_env: SREnv, s3_client: Any,
) -> None:
    """Regression (found here, fixed in 6fc57bc): evidence lands between the new holder's
    verification (WAITING) and the stale holder's (COMPLETE); the stale holder's ledger append
    used to raise IntegrityError, a PermanentError, and the worker dead-lettered a valid intent."""
    from tests.integration.test_fencing_and_cost import intent_record
    from worker.app.processor import Action
    from worker.errors import LeaseLostError, RetryableError
    from worker.runtime.compose import open_services

    intent = make_intent(sr_env, "late-evidence", outputs=("accounts",))
    run_id = run_id_of(intent)
    dsn = sr_env.settings.pg_conninfo().get_secret_value()
    with open_services(sr_env.settings, sr_env.policy) as a, \
            open_services(sr_env.settings, sr_env.policy, migrate_db=False) as b:
        gated = _GatedVerifier(a.processor.context.verifier)
        processor_a = a.processor.replace(verifier=gated)
        result: dict[str, Any] = {}

        def stale_holder() -> None:
            try:
                result["outcome"] = dispatch(processor_a, intent_record(sr_env, intent),
                                             triggers_topic=sr_env.settings.topics.triggers)
            except Exception as exc:
                result["error"] = exc

        thread = threading.Thread(target=stale_holder)
        thread.start()
        assert gated.entered.wait(30)
        holder = lock_holder(dsn, run_id)
        assert holder is not None and terminate_backend(dsn, holder)
        # The new holder sees no evidence yet: WAITING at ledger seq 0.
        assert b.processor.drive(run_id, fresh=False, wait=10.0).action is Action.WAITING
        # The evidence lands; the stale holder resumes, verifies COMPLETE, and meets seq 0.
        upload_member_concat_gate(s3_client, sr_env.bucket, sr_env.evidence_prefix("late-evidence"), "gates/3A",
                                  GATE_3A_MEMBERS)
        gated.gate.set()
        thread.join(60)
        row = b.index.get(run_id)
    assert row is not None and row.status is RunStatus.WAITING  # the new holder's history stands
    error = result.get("error")
    assert isinstance(error, RetryableError | LeaseLostError | StaleEpochError), (
        f"the fenced holder ended with {error!r}: the worker would dead-letter the intent")
