"""Fault injection between the worker and each of Kafka, Postgres and S3 (``tests/harness/faultproxy.py``).

Each test runs an in-process worker whose connection to one server goes through a
:class:`~tests.harness.faultproxy.FaultProxy`, and drives it through phases — latency, connection
resets, a blackhole (a partition that later heals) — each with its own batch of intents fed
just before the fault starts, so it hits them mid-flight. After each fault heals, every
intent of the phase must be decided and its event acknowledged by Kafka within a bounded time
(the retry backoff is capped), and at the end the whole output is checked: the exact READY
set, byte-identical re-sends only, one ledger entry per run, an empty DLQ and outbox, every
offset committed, a live worker. ``test_postgres_restart_*`` restarts a private
PostgreSQL under a worker that holds a lease: the session (and its advisory lock) is gone,
the worker must notice, abandon the step, re-acquire and finish — with nothing lost.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import psycopg.conninfo
import pytest
from pydantic import SecretStr

from tests.harness.evidence import (
    GATE_3A_MEMBERS,
    GATE_6B_MEMBERS,
    EvidenceWriter,
    bundle_digest,
    flag_bytes,
    upload_member_concat_gate,
)
from tests.harness.faultproxy import FaultProxy
from tests.harness.kafka import committed_total, group_by_idempotency_key, read_topic, submit
from tests.harness.parallel import HEAVY
from tests.harness.paths import shared_evidence_policy
from tests.harness.probes import lock_holder, status_counts
from tests.harness.probes import wait_for as poll
from tests.harness.servers import Servers, unavailable
from tests.harness.sr_env import SREnv, build_env, make_intent
from tests.harness.workers import WorkerThread
from tests.reliability.conftest import report
from worker.adapters.postgres import RoundTripCounter, RunIndex
from worker.adapters.s3 import ObjectStore
from worker.app.truth import TruthStore
from worker.core.identity import run_id_of
from worker.core.keys import run_keys
from worker.core.ledger import derive_state
from worker.core.models import RunIntent, RunStatus
from worker.runtime.compose import pg_config, s3_config

# HEAVY (tests/harness/parallel.py): several worker processes under load, run one at a time.
pytestmark = [pytest.mark.integration, pytest.mark.slow, HEAVY]

#: After a fault heals, the phase's intents must all be terminal within this many seconds:
#: the worker's record retry backs off at most 5 s, the adapters' retries at most 5 s each.
RECOVERY_BOUND = 20.0
TERMINAL = {RunStatus.READY.value, RunStatus.WAITING.value}


@dataclass
class Phase:
    """One fault episode: apply ``fault``, feed intents, hold, heal, expect recovery."""

    name: str
    fault: Callable[[FaultProxy], None]
    hold: float
    complete: int = 4
    waiting: int = 1


PHASES = [
    Phase("latency", lambda p: p.latency(0.05), hold=2.0),
    Phase("reset", lambda p: p.reset(), hold=2.5),
    Phase("blackhole", lambda p: p.blackhole(), hold=3.0),
]


class _Records(logging.Handler):
    """Collects the worker's warnings (it runs in-process, on threads)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        return [str(getattr(r, "error", "")) for r in self.records]


@contextmanager
def _captured() -> Iterator[_Records]:
    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def _dsn_via(dsn: str, port: int) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params.update(host="127.0.0.1", port=str(port))
    return psycopg.conninfo.make_conninfo("", **{k: str(v) for k, v in params.items() if v is not None})


def _pg_target(dsn: str) -> tuple[str, int]:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    return str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)


def _run_phases(env: SREnv, worker: WorkerThread, proxy: FaultProxy, *,
                log: _Records) -> tuple[dict[str, str], list[str]]:
    """Drive every phase; return run_id → expected status and one summary line per phase.

    A phase's intents are fed first and the fault hits while they are being processed (for
    Kafka: while their READY/status events are produced and their offsets committed).
    """
    dsn = env.settings.pg_conninfo().get_secret_value()
    expected: dict[str, str] = {}
    lines: list[str] = []
    seed = 0
    for phase in PHASES:
        intents: list[RunIntent] = []
        for kind, count in (("complete", phase.complete), ("waiting", phase.waiting)):
            for _ in range(count):
                seed += 1
                intents.append(make_intent(env, f"{phase.name}{seed}", evidence_root=env.evidence_root(kind),
                                           seed=seed))
                expected[run_id_of(intents[-1])] = "READY" if kind == "complete" else "WAITING"
        warnings_before = len(log.records)
        submit(env, intents)
        phase.fault(proxy)
        time.sleep(phase.hold)
        proxy.pass_through()
        healed = time.monotonic()

        assert poll(partial(_all_terminal, dsn, [run_id_of(i) for i in intents]), RECOVERY_BOUND, 0.2), (
            f"{phase.name}: intents not terminal {RECOVERY_BOUND}s after the fault healed "
            f"(index {status_counts(dsn)}); worker error {worker.error!r}")
        assert worker.thread.is_alive(), f"{phase.name}: the worker died: {worker.error!r}"
        retried = len(log.records) - warnings_before
        if phase.name == "reset" and _sr_logs_its_retries(proxy, env):
            assert retried > 0, "connections were reset under the worker, yet it never saw (and retried) a fault"
        lines.append(f"{phase.name}: recovered {time.monotonic() - healed:.1f}s after healing, "
                     f"{retried} transient-fault warning(s)")
    return expected, lines


def _all_terminal(dsn: str, run_ids: list[str]) -> bool:
    """Every run decided in the index *and* its event acknowledged by Kafka (marked published)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT status FROM sr_runs WHERE run_id = ANY(%s)", (run_ids,)).fetchall()
        published = conn.execute(
            "SELECT count(DISTINCT run_id) FROM sr_publications WHERE run_id = ANY(%s) AND published_at IS NOT NULL",
            (run_ids,)).fetchone()
    return (len(rows) == len(run_ids) and all(r[0] in TERMINAL for r in rows)
            and published is not None and published[0] == len(run_ids))


def _committed_at_least(env: SREnv, count: int) -> bool:
    return committed_total(env, env.settings.topics.intents) >= count


def _sr_logs_its_retries(proxy: FaultProxy, env: SREnv) -> bool:
    """SR logs its own retries of S3 and Postgres faults; librdkafka retries Kafka faults inside."""
    return proxy.address not in env.settings.kafka_bootstrap


def _check_output(env: SREnv, expected: dict[str, str], s3_client: Any) -> str:
    """The whole output after the faults: exact READY set, one history per run, nothing dead,
    every offset committed."""
    topics = env.settings.topics
    assert poll(partial(_committed_at_least, env, len(expected)), RECOVERY_BOUND), (
        f"offsets not committed: {committed_total(env, topics.intents)}/{len(expected)}")
    want_ready = {r for r, s in expected.items() if s == "READY"}
    want_waiting = {r for r, s in expected.items() if s == "WAITING"}
    ready = read_topic(env.settings.kafka_bootstrap, topics.ready,
                       until=lambda rs: {r.key for r in rs} >= {r.encode() for r in want_ready}, timeout=60,
                       settle=1.0)
    statuses = read_topic(env.settings.kafka_bootstrap, topics.status,
                          until=lambda rs: {r.key for r in rs} >= {r.encode() for r in want_waiting}, timeout=30)
    dead = read_topic(env.settings.kafka_bootstrap, topics.dlq, timeout=1.5)
    assert dead == [], f"dead-lettered under faults: {[r.headers for r in dead][:3]}"
    facts = group_by_idempotency_key(ready)
    assert all(len(v) == 1 for v in facts.values()), "two READY records for one fact differ"
    assert {r.key.decode() for r in ready if r.key} == want_ready
    assert len(facts) == len(want_ready), "a run got READY for more than one facts view"
    assert {r.key.decode() for r in statuses if r.key} == want_waiting
    with RunIndex(pg_config(env.settings), RoundTripCounter()) as index:
        rows = {row.run_id: row for row in index.list_runs(limit=1000)}
        assert index.unpublished(10) == []
    assert {r: row.status.value for r, row in rows.items()} == expected
    with ObjectStore(s3_config(env.settings)) as store, ThreadPoolExecutor(8) as pool:
        truth = TruthStore(store, env.bucket, env.settings.s3_prefix)

        def history(run_id: str) -> tuple[str, int, str | None]:
            entries = truth.read_ledger(run_keys(env.settings.s3_prefix, env.tenant, "payments", run_id))
            return derive_state(entries).status.value, len(entries), derive_state(entries).facts_view_hash

        histories = dict(zip(sorted(rows), pool.map(history, sorted(rows)), strict=True))
    for run_id, (status, length, fvh) in histories.items():
        assert (status, length) == (expected[run_id], 1), f"{run_id}: ledger {status} x{length}"
        assert fvh == rows[run_id].facts_view_hash
    return f"{len(ready)} READY records for {len(facts)} facts ({len(ready) - len(facts)} byte-identical re-sends)"


# ----------------------------------------------------------------------------- S3


@pytest.mark.shared_evidence  # phases share one evidence root per kind: gate_6B unscoped
def test_s3_latency_resets_and_blackhole_are_retried_and_recovered(
    sr_env: SREnv, write_evidence: EvidenceWriter, s3_client: Any,
) -> None:
    started = time.monotonic()
    write_evidence("complete")
    target = urlsplit(sr_env.servers.s3_endpoint or "")
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 80) as proxy, _captured() as log:
        worker = WorkerThread(sr_env, s3_endpoint=f"http://{proxy.address}").start()
        try:
            expected, lines = _run_phases(sr_env, worker, proxy, log=log)
        finally:
            worker.stop()
    assert any("S3" in e or "s3://" in e for e in log.errors()), "no S3 fault was ever observed by the worker"
    summary = _check_output(sr_env, expected, s3_client)
    report(f"fault injection S3: {'; '.join(lines)}; {summary}; {time.monotonic() - started:.1f}s")


# ----------------------------------------------------------------------------- Postgres (proxy)


@pytest.mark.shared_evidence  # phases share one evidence root per kind: gate_6B unscoped
def test_postgres_latency_resets_and_blackhole_are_retried_and_recovered(
    sr_env: SREnv, write_evidence: EvidenceWriter, s3_client: Any,
) -> None:
    started = time.monotonic()
    write_evidence("complete")
    dsn = sr_env.settings.pg_conninfo().get_secret_value()
    with FaultProxy(*_pg_target(dsn)) as proxy, _captured() as log:
        worker = WorkerThread(sr_env, pg_dsn=SecretStr(_dsn_via(dsn, proxy.port))).start()
        try:
            expected, lines = _run_phases(sr_env, worker, proxy, log=log)
        finally:
            worker.stop()
    assert any("postgres" in e.lower() or "lease" in e for e in log.errors()), "no Postgres fault observed"
    summary = _check_output(sr_env, expected, s3_client)
    report(f"fault injection Postgres: {'; '.join(lines)}; {summary}; {time.monotonic() - started:.1f}s")


# ----------------------------------------------------------------------------- Kafka


@contextmanager
def _proxied_tansu(tmp_path: Path) -> Iterator[tuple[FaultProxy, Any]]:
    """A private Tansu broker that advertises the proxy's address, so every client connection
    (bootstrap *and* the per-broker ones) goes through the proxy."""
    from worker.embedded.procs import free_port, launch, port_accepts
    from worker.embedded.stack import find_tansu
    from worker.errors import BinaryMissingError

    try:
        tansu = find_tansu()
    except BinaryMissingError as exc:
        unavailable(str(exc))
    port = free_port()
    with FaultProxy("127.0.0.1", port) as proxy:
        env = {k: v for k, v in os.environ.items() if not k.startswith((
            "CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY"))}
        broker = launch("kafka-proxied", [str(tansu), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                                          "--advertised-listener-url", f"tcp://{proxy.address}",
                                          "--storage-engine", "memory://tansu/"],
                        log_path=tmp_path / "tansu.log", env=env, stop_grace=3.0)
        try:
            assert poll(lambda: port_accepts(port), 30, 0.1), "private Tansu did not start"
            yield proxy, broker
        finally:
            broker.stop()


def test_kafka_latency_resets_and_blackhole_are_retried_and_recovered(
    servers: Servers, pg_dsn: str, s3_client: Any, tmp_path: Path,
) -> None:
    started = time.monotonic()
    with _proxied_tansu(tmp_path) as (proxy, _broker), _captured() as log:
        proxied = Servers(kafka_bootstrap=proxy.address, pg_dsn=servers.pg_dsn, s3_endpoint=servers.s3_endpoint,
                          s3_bucket=servers.s3_bucket, s3_access_key=servers.s3_access_key,
                          s3_secret_key=servers.s3_secret_key, s3_region=servers.s3_region)
        # Phases share one evidence root per kind: gate_6B unscoped (contract §4).
        env = build_env(proxied, pg_dsn, tmp_path, policy=shared_evidence_policy())
        _seed(env, s3_client, "complete")
        worker = WorkerThread(env).start()
        try:
            expected, lines = _run_phases(env, worker, proxy, log=log)
            summary = _check_output(env, expected, s3_client)
        finally:
            worker.stop()
    report(f"fault injection Kafka: {'; '.join(lines)}; {summary}; {time.monotonic() - started:.1f}s")


def _seed(env: SREnv, s3_client: Any, name: str, extra_6b: int = 0) -> None:
    """The example policy's two gates under ``name`` (``extra_6b`` more members: a slower run)."""
    root = env.evidence_prefix(name)
    upload_member_concat_gate(s3_client, env.bucket, root, "gates/3A", GATE_3A_MEMBERS)
    members = {**GATE_6B_MEMBERS, **{f"transactions/extra-{i:05d}.csv": f"tx,{i}\n".encode() for i in range(extra_6b)}}
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: s3_client.put_object(Bucket=env.bucket, Key=f"{root}/gates/6B/{kv[0]}", Body=kv[1]),
                      members.items()))
    s3_client.put_object(Bucket=env.bucket, Key=f"{root}/gates/6B/_passed.flag",
                         Body=flag_bytes(bundle_digest(members)))


# ----------------------------------------------------------------------------- Postgres restart


@contextmanager
def _private_postgres(tmp_path: Path) -> Iterator[Any]:
    from worker.embedded.stack import EmbeddedStack, StackConfig
    from worker.errors import StackError

    stack = EmbeddedStack(StackConfig(state_dir=tmp_path / "pg", kafka=False, s3=False, topics=()))
    try:
        stack.start()
    except StackError as exc:
        unavailable(f"private postgres: {exc}")
    try:
        yield stack
    finally:
        stack.stop()


def _restart_postgres(stack: Any) -> float:
    """Fast-shutdown the private server (every session, and advisory lock, ends) and start it again."""
    from worker.embedded.procs import launch
    from worker.embedded.stack import _postgres_os_user, _postgres_ready

    old = stack.processes[0]
    began = time.monotonic()
    old.stop()  # SIGINT = fast shutdown: disconnects every client
    new = launch(old.name, list(old.popen.args), log_path=old.log_path, user=_postgres_os_user(),
                 stop_signal=signal.SIGINT, stop_grace=10.0)
    stack.processes[0] = new
    assert poll(lambda: _postgres_ready(stack.endpoints.pg_dsn), 30, 0.1), "postgres did not come back"
    return time.monotonic() - began


def test_postgres_restart_under_a_held_lease_is_noticed_and_nothing_is_lost(
    servers: Servers, kafka_bootstrap: str, s3_client: Any, tmp_path: Path,
) -> None:
    started = time.monotonic()
    with _private_postgres(tmp_path) as stack, _captured() as log:
        dsn = stack.endpoints.pg_dsn
        env = build_env(servers, dsn, tmp_path, policy=shared_evidence_policy())  # shared roots, as above
        _seed(env, s3_client, "slow", extra_6b=1600)
        _seed(env, s3_client, "complete")
        slow = make_intent(env, "slow")
        others = [make_intent(env, f"o{i}", evidence_root=env.evidence_root("complete"), seed=i) for i in range(6)]
        slow_id = run_id_of(slow)
        worker = WorkerThread(env).start()
        try:
            submit(env, [slow, *others[:3]])
            assert poll(lambda: lock_holder(dsn, slow_id) is not None, 60, 0.005), "the slow run was never leased"
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute("SELECT lease_epoch, status FROM sr_runs WHERE run_id = %s", (slow_id,)).fetchone()
            assert row is not None and row[1] == "ADMITTED"
            first_epoch = int(row[0])
            time.sleep(0.3)  # into verification (1,600 members: well past the restart even with obstore)
            downtime = _restart_postgres(stack)
            submit(env, others[3:])

            def settled() -> bool:
                counts = status_counts(dsn)
                return counts == {"READY": 7}

            assert poll(settled, 90, 0.5), f"not recovered after the restart: {status_counts(dsn)}"
            assert worker.thread.is_alive(), f"the worker died: {worker.error!r}"
        finally:
            worker.stop()
        lost = [e for e in log.errors() if f"lease on run {slow_id} lost" in e]
        assert lost, f"the worker never noticed it lost the lease on {slow_id}: {log.errors()[:10]}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            epoch, status = conn.execute("SELECT lease_epoch, status FROM sr_runs WHERE run_id = %s",
                                         (slow_id,)).fetchone() or (None, None)
            pubs = conn.execute("SELECT count(*), count(published_at) FROM sr_publications WHERE run_id = %s",
                                (slow_id,)).fetchone()
        assert status == "READY" and epoch is not None and epoch > first_epoch, (status, epoch, first_epoch)
        assert pubs == (1, 1), f"publication rows of the run: {pubs}"
        expected = {run_id_of(i): "READY" for i in [slow, *others]}
        summary = _check_output(env, expected, s3_client)
    report(f"postgres restart: down {downtime:.1f}s under a held lease (epoch {first_epoch} -> {epoch}); "
           f"{len(lost)} lease-loss warning(s); {summary}; {time.monotonic() - started:.1f}s")
