"""The engine path under load and under SIGKILL (contract §8), on real servers.

Two ``sr run`` processes share the group; the reference engine (the loop behind ``sr engine
simulate``, in-process) fails a seeded 20 % of attempts. Which attempts fail is a pure
function of the seed and the attempt id (:func:`worker.engine.simulator.fails`), so every
run's outcome is known in advance: READY after its first successful attempt, or FAILED
``ENGINE_FAILED`` after three failed ones. The attempt timeout is far longer than the test,
so an attempt that was lost (never requested, or its request never sent) shows up as a run
that never ends — it cannot be hidden by a retry.

* the load test: 200 INVOKE intents, no kill;
* the kill matrix: worker A SIGKILLs itself at a crash point of the engine path (after
  ENGINE_REQUESTED is in the ledger, after a request was produced but before it is marked
  published, after a result was recorded), is restarted, and the pair drains.

Both check the whole output: every run's end state against its known attempts (index and
ledger), one request per attempt (re-sends byte-identical), one READY fact per READY run
(re-sends byte-identical), no dead letters, an empty outbox, every offset committed.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness.engine import EngineThread
from tests.harness.kafka import committed_total, group_by_idempotency_key, produce_raw, read_topic
from tests.harness.parallel import HEAVY
from tests.harness.probes import status_counts, unpublished_count
from tests.harness.probes import wait_for as poll
from tests.harness.sr_env import SREnv, make_intent
from tests.harness.workers import WorkerProc, stop_all, unclean_exits, wait_group_split
from tests.reliability.conftest import report
from worker.adapters.postgres import RoundTripCounter, RunIndex
from worker.adapters.s3 import ObjectStore
from worker.app.crashpoints import CrashPoint
from worker.app.ports import Record
from worker.app.truth import TruthStore
from worker.core.engine import EngineStatus
from worker.core.identity import attempt_id_for, run_id_of
from worker.core.keys import run_keys
from worker.core.ledger import LedgerKind, derive_state
from worker.core.models import RunIntent, Strategy
from worker.engine.simulator import SimulatorConfig, fails
from worker.runtime.compose import pg_config, s3_config

# HEAVY (tests/harness/parallel.py): several worker processes under load, run one at a time.
pytestmark = [pytest.mark.integration, pytest.mark.slow, HEAVY]

PARTITIONS = 4
MAX_ATTEMPTS = 3
ENGINE = SimulatorConfig(delay=0.0, failure_rate=0.2, seed=20261201)
#: Attempts never time out during a test; retries follow a FAILED result after 0.2 s.
WORKER_ENV = {"SR_ENGINE_ATTEMPT_TIMEOUT": "3600", "SR_ENGINE_RETRY_BACKOFF": "0.2",
              "SR_ENGINE_MAX_ATTEMPTS": str(MAX_ATTEMPTS), "SR_SWEEP_INTERVAL": "0.3"}
#: (crash point, which hit kills the process): early enough that work is in flight.
CRASH_AFTER: dict[CrashPoint, int] = {
    CrashPoint.AFTER_ENGINE_REQUESTED: 10,
    CrashPoint.AFTER_PRODUCE_BEFORE_MARK: 20,
    CrashPoint.AFTER_ENGINE_RESULT: 10,
}


def expected_attempts(run_id: str) -> tuple[int, bool]:
    """(attempts the run takes, whether it ends READY) under :data:`ENGINE`."""
    for n in range(1, MAX_ATTEMPTS + 1):
        if not fails(ENGINE, attempt_id_for(run_id, n)):
            return n, True
    return MAX_ATTEMPTS, False


def workload(env: SREnv, count: int, tag: str) -> list[RunIntent]:
    """``count`` INVOKE intents, each with its own (empty) evidence root."""
    return [make_intent(env, f"{tag}{n}", strategy=Strategy.INVOKE, seed=n) for n in range(count)]


@dataclass
class Drained:
    """What came out of a drained world."""

    requests: list[Record] = field(default_factory=list)
    ready: list[Record] = field(default_factory=list)
    dead: list[Record] = field(default_factory=list)


def drain_and_read(env: SREnv, intents: list[RunIntent], *, timeout: float) -> Drained:
    """Wait until every run ended as expected, the outbox is empty and every intent offset is
    committed; then read the output topics."""
    dsn = env.settings.pg_conninfo().get_secret_value()
    topics = env.settings.topics
    outcomes = [expected_attempts(run_id_of(i)) for i in intents]
    want = {"READY": sum(ok for _, ok in outcomes), "FAILED": sum(not ok for _, ok in outcomes)}
    want = {k: v for k, v in want.items() if v}

    def drained() -> bool:
        return (status_counts(dsn) == want and unpublished_count(dsn) == 0
                and committed_total(env, topics.intents) == len(intents))

    assert poll(drained, timeout=timeout, interval=1.0), (
        f"not drained: index {status_counts(dsn)} (want {want}), unpublished {unpublished_count(dsn)}, "
        f"committed {committed_total(env, topics.intents)}/{len(intents)}")
    bootstrap = env.settings.kafka_bootstrap
    attempts = sum(n for n, _ in outcomes)
    with ThreadPoolExecutor(3) as pool:  # the settle windows overlap
        requests = pool.submit(read_topic, bootstrap, topics.engine_requests, until=lambda rs: len(rs) >= attempts,
                               timeout=60, settle=1.0)
        ready = pool.submit(read_topic, bootstrap, topics.ready, until=lambda rs: len(rs) >= want.get("READY", 0),
                            timeout=60, settle=1.0)
        dead = pool.submit(read_topic, bootstrap, topics.dlq, timeout=1.0)
        return Drained(requests=requests.result(), ready=ready.result(), dead=dead.result())


def check_output(env: SREnv, intents: Iterable[RunIntent], out: Drained) -> dict[str, int]:
    """Every run against its known attempts; returns figures for the report."""
    codec = env.codec
    assert out.dead == [], f"{len(out.dead)} dead letter(s): {[r.headers for r in out.dead][:3]}"
    by_key = group_by_idempotency_key(out.requests)
    assert all(len(v) == 1 for v in by_key.values()), "two requests for one attempt differ in bytes"
    requested: dict[str, list[int]] = defaultdict(list)
    for key in by_key:
        request = codec.decode_engine_request(next(iter(by_key[key]))[1])
        requested[request.run_id].append(request.attempt_no)
    facts = group_by_idempotency_key(out.ready)
    assert all(len(v) == 1 for v in facts.values()), "two READY records for one fact differ in bytes"
    ready_runs = [codec.decode_ready(r.value or b"").run_id for r in out.ready]
    assert len(set(ready_runs)) == len(facts), "a run got READY for two different facts"

    runs = {run_id_of(i): i for i in intents}
    with RunIndex(pg_config(env.settings), RoundTripCounter()) as index:
        rows = {run_id: index.get(run_id) for run_id in runs}

    def check(run_id: str) -> str | None:
        attempts, ok = expected_attempts(run_id)
        if sorted(requested[run_id]) != list(range(1, attempts + 1)):
            return f"{run_id}: requests for attempts {sorted(requested[run_id])}, expected 1..{attempts}"
        row = rows[run_id]
        if row is None or (row.status.value, row.reason_code) != (("READY", None) if ok else ("FAILED",
                                                                                             "ENGINE_FAILED")):
            return f"{run_id}: index {row and (row.status.value, row.reason_code)}, expected ok={ok}"
        entries = truth.read_ledger(run_keys(env.settings.s3_prefix, env.tenant, "payments", run_id))
        state = derive_state(entries)
        results = [a.status for a in state.attempts]
        expected = [EngineStatus.FAILED] * (attempts - 1) + [EngineStatus.SUCCEEDED if ok else EngineStatus.FAILED]
        if len(state.attempts) != attempts or results != expected:
            return f"{run_id}: ledger attempts {[(a.attempt_no, a.status) for a in state.attempts]}"
        if state.status is not row.status or sum(e.kind is LedgerKind.READY for e in entries) != int(ok):
            return f"{run_id}: ledger {[e.kind.value for e in entries]} vs index {row.status}"
        return None

    with ObjectStore(s3_config(env.settings)) as store, ThreadPoolExecutor(8) as pool:
        truth = TruthStore(store, env.bucket, env.settings.s3_prefix)
        problems = [p for p in pool.map(check, sorted(runs)) if p]
    assert problems == [], problems[:5]
    assert set(requested) == set(runs)
    return {"runs": len(runs), "ready": len(facts), "failed": len(runs) - len(facts),
            "attempts": len(by_key), "request_records": len(out.requests), "ready_records": len(out.ready)}


def test_two_workers_200_invoke_intents_against_a_failing_engine(sr_env: SREnv, tmp_path: Path) -> None:
    started = time.monotonic()
    intents = workload(sr_env, 200, "load")
    engine = EngineThread(sr_env.settings, sr_env.policy, ENGINE, group_id=f"eng-{uuid.uuid4().hex[:8]}")
    workers = [WorkerProc(sr_env, tmp_path / f"w{n}.log", extra_env=WORKER_ENV) for n in (1, 2)]
    try:
        engine.start()
        for w in workers:
            w.start()
        wait_group_split([w.log for w in workers], sr_env.settings.topics.intents, PARTITIONS)
        produce_raw(sr_env, sr_env.settings.topics.intents,
                    [(run_id_of(i).encode(), sr_env.codec.encode_intent(i)) for i in intents])
        fed = time.monotonic()
        out = drain_and_read(sr_env, intents, timeout=240)
        took = time.monotonic() - fed
    finally:
        codes = stop_all(workers)
        engine.stop()
    assert codes == [0, 0], f"exit codes {codes}\n{unclean_exits(workers, codes)}"
    figures = check_output(sr_env, intents, out)
    report(f"engine load: {figures['runs']} INVOKE runs over 2 workers, engine failure rate 0.2: "
           f"{figures['ready']} READY, {figures['failed']} FAILED ENGINE_FAILED, {figures['attempts']} attempts "
           f"({figures['request_records']} request records, 0 differing), {figures['ready_records']} READY records "
           f"for {figures['ready']} facts (0 differing); drained {took:.1f}s after the feed; "
           f"{time.monotonic() - started:.1f}s")


@pytest.mark.parametrize("point", list(CRASH_AFTER), ids=lambda p: p.value)
def test_kill_on_the_engine_path_loses_and_doubles_no_attempt(point: CrashPoint, sr_env: SREnv,
                                                              tmp_path: Path) -> None:
    started = time.monotonic()
    intents = workload(sr_env, 48, "kill")
    armed = {**WORKER_ENV, "SR_TEST_CRASH_POINT": point.value, "SR_TEST_CRASH_AFTER": str(CRASH_AFTER[point])}
    victim = WorkerProc(sr_env, tmp_path / "a.log", extra_env=armed)
    survivor = WorkerProc(sr_env, tmp_path / "b.log", extra_env=WORKER_ENV)
    restarted = WorkerProc(sr_env, tmp_path / "a2.log", extra_env=WORKER_ENV)
    workers = [victim, survivor, restarted]
    engine = EngineThread(sr_env.settings, sr_env.policy, ENGINE, group_id=f"eng-{uuid.uuid4().hex[:8]}")
    try:
        engine.start()
        victim.start()
        survivor.start()
        wait_group_split([victim.log, survivor.log], sr_env.settings.topics.intents, PARTITIONS)
        produce_raw(sr_env, sr_env.settings.topics.intents,
                    [(run_id_of(i).encode(), sr_env.codec.encode_intent(i)) for i in intents])
        code = victim.wait_exit(120)
        assert code == -signal.SIGKILL, f"worker A did not die at {point.value} (exit {code})"
        killed_at = time.monotonic() - started
        restarted.start()
        restarted.wait_started()
        out = drain_and_read(sr_env, intents, timeout=180)
    finally:
        codes = stop_all(workers)
        engine.stop()
    assert codes[1:] == [0, 0], f"survivor/restarted exit codes {codes[1:]}\n{unclean_exits(workers[1:], codes[1:])}"
    figures = check_output(sr_env, intents, out)
    resends = figures["request_records"] - figures["attempts"]
    report(f"engine kill {point.value}: killed at {killed_at:.1f}s; {figures['runs']} runs, {figures['ready']} READY, "
           f"{figures['failed']} FAILED; {figures['attempts']} attempts, {resends} byte-identical request re-sends; "
           f"{figures['ready_records']} READY records for {figures['ready']} facts; "
           f"{time.monotonic() - started:.1f}s")
