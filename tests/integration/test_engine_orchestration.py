"""SR orchestrates engine attempts on real servers (contract §8): the worker requests attempts
through the outbox, the reference engine (in-process, the loop behind ``sr engine simulate``)
writes evidence and reports, and SR records results under the lease."""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import pytest

from tests.harness.engine import EngineThread
from tests.harness.evidence import EvidenceWriter
from tests.harness.kafka import produce_raw, read_topic, submit
from tests.harness.probes import wait_for
from tests.harness.sr_env import SREnv, make_intent
from tests.harness.workers import WorkerThread, sr_binary
from worker.adapters.postgres import RoundTripCounter, RunIndex
from worker.app.publisher import error_headers
from worker.app.truth import TruthStore
from worker.core.engine import EngineRequest, EngineResult, EngineStatus
from worker.core.identity import attempt_id_for, run_id_of
from worker.core.models import RunIntent, Strategy
from worker.engine.simulator import SimulatorConfig
from worker.runtime.compose import object_store, pg_config

pytestmark = pytest.mark.integration

#: Attempts of 1 s, 0.2 s backoff, 3 attempts, swept every 0.2 s: a whole budget in seconds.
FAST_ENGINE: dict[str, Any] = {"engine_attempt_timeout": 1.0, "engine_retry_backoff": 0.2,
                               "engine_max_attempts": 3, "sweep_interval": 0.2}


def sr_cli(env: SREnv, *args: str) -> str:
    """Run ``sr ARGS`` against the env; its stdout (it must exit 0)."""
    done = subprocess.run([sr_binary(), *args], env=env.env(), capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def row(env: SREnv, intent: RunIntent) -> tuple[str, str | None] | None:
    with RunIndex(pg_config(env.settings), RoundTripCounter()) as index:
        found = index.get(run_id_of(intent))
    return None if found is None else (found.status.value, found.reason_code)


def ledger_kinds(env: SREnv, intent: RunIntent) -> list[str]:
    with object_store(env.settings) as store:
        truth = TruthStore(store, env.bucket, env.settings.s3_prefix)
        keys = truth.keys_for(intent.tenant_id, intent.namespace, run_id_of(intent))
        return [e.kind.value for e in truth.read_ledger(keys)]


def requests_for(env: SREnv, want: int, *, settle: float = 1.0, timeout: float = 60.0) -> list[EngineRequest]:
    records = read_topic(env.settings.kafka_bootstrap, env.settings.topics.engine_requests,
                         until=lambda rs: len(rs) >= want, timeout=timeout, settle=settle)
    return [env.codec.decode_engine_request(r.value or b"") for r in records]


def test_invoke_auto_and_reuse_against_the_reference_engine(sr_env: SREnv, write_evidence: EvidenceWriter) -> None:
    settings = sr_env.settings
    invoke = make_intent(sr_env, "eng-invoke", strategy=Strategy.INVOKE)
    auto = make_intent(sr_env, "eng-auto", strategy=Strategy.AUTO)
    reuse = make_intent(sr_env, "eng-reuse", strategy=Strategy.REUSE)
    write_evidence("eng-auto")
    engine = EngineThread(settings, sr_env.policy, SimulatorConfig(delay=0.2), group_id=f"eng-{uuid.uuid4().hex[:8]}")
    worker = WorkerThread(sr_env, sweep_interval=0.5).start()
    try:
        engine.start()
        submit(sr_env, [invoke, auto, reuse])
        assert wait_for(lambda: row(sr_env, invoke) == ("READY", None) and row(sr_env, auto) == ("READY", None)
                        and row(sr_env, reuse) == ("WAITING", "EVIDENCE_MISSING"), timeout=60), (
            row(sr_env, invoke), row(sr_env, auto), row(sr_env, reuse))
        results = read_topic(settings.kafka_bootstrap, settings.topics.engine_results, until=lambda rs: len(rs) >= 1,
                             timeout=30)
        # The engine's result delivered a second time changes nothing.
        produce_raw(sr_env, settings.topics.engine_results, [(r.key, r.value or b"") for r in results])
        requests = requests_for(sr_env, 1, settle=2.0)
        ready = read_topic(settings.kafka_bootstrap, settings.topics.ready, until=lambda rs: len(rs) >= 2,
                           timeout=30, settle=2.0)
    finally:
        worker.stop()
        engine.stop()
    run_id = run_id_of(invoke)
    assert [(r.run_id, r.attempt_no, r.attempt_id) for r in requests] == [(run_id, 1, attempt_id_for(run_id, 1))]
    assert requests[0].evidence_root == invoke.evidence_root and requests[0].output_ids == invoke.output_ids
    assert sorted(r.key or b"" for r in ready) == sorted([run_id.encode(), run_id_of(auto).encode()])
    assert ledger_kinds(sr_env, invoke) == ["WAITING", "ENGINE_REQUESTED", "ENGINE_RESULT", "READY"]
    assert ledger_kinds(sr_env, auto) == ["READY"]
    assert ledger_kinds(sr_env, reuse) == ["WAITING"]
    # Operators see the attempt.
    status = json.loads(sr_cli(sr_env, "status", run_id, "--json"))
    assert status["strategy"] == "INVOKE"
    assert [(a["attempt_no"], a["attempt_id"], a["result"]) for a in status["engine_attempts"]] == [
        (1, attempt_id_for(run_id, 1), "SUCCEEDED")]


def test_failing_and_silent_engines_spend_the_budget_then_fail(sr_env: SREnv) -> None:
    settings = sr_env.settings
    failing = make_intent(sr_env, "eng-failing", strategy=Strategy.INVOKE)
    silent = make_intent(sr_env, "eng-silent", strategy=Strategy.AUTO)
    engine = EngineThread(settings, sr_env.policy, SimulatorConfig(delay=0, failure_rate=1.0),
                          group_id=f"eng-{uuid.uuid4().hex[:8]}")
    worker = WorkerThread(sr_env, **FAST_ENGINE).start()
    try:
        engine.start()
        submit(sr_env, [failing])
        assert wait_for(lambda: row(sr_env, failing) == ("FAILED", "ENGINE_FAILED"), timeout=60), row(sr_env, failing)
        engine.stop()  # nobody answers from here on
        submit(sr_env, [silent])
        assert wait_for(lambda: row(sr_env, silent) == ("FAILED", "ENGINE_TIMEOUT"), timeout=60), row(sr_env, silent)
        requests = requests_for(sr_env, 6)
        silent_id = run_id_of(silent)
        # A late result for the ended run is recorded and changes nothing; a result for an
        # attempt that was never requested, or for a run SR never admitted, is dead-lettered.
        late = EngineResult(attempt_id=attempt_id_for(silent_id, 3), run_id=silent_id, status=EngineStatus.SUCCEEDED,
                            detail="", reported_by="late-engine", finished_at=requests[-1].requested_at)
        unknown_attempt = late.model_copy(update={"attempt_id": attempt_id_for(silent_id, 9)})
        stale = late.model_copy(update={"attempt_id": attempt_id_for(silent_id, 1)})  # superseded by attempt 2
        unknown_run = late.model_copy(update={"run_id": "d" * 32, "attempt_id": attempt_id_for("d" * 32, 1)})
        codec = sr_env.codec
        produce_raw(sr_env, settings.topics.engine_results, [
            (silent_id.encode(), codec.encode_engine_result(late)),
            (silent_id.encode(), codec.encode_engine_result(stale)),
            (silent_id.encode(), codec.encode_engine_result(unknown_attempt)),
            (b"d" * 32, codec.encode_engine_result(unknown_run)),
            (silent_id.encode(), b"not an engine result"),
        ])
        dead = read_topic(settings.kafka_bootstrap, settings.topics.dlq, until=lambda rs: len(rs) >= 3, timeout=60,
                          settle=1.0)
        assert wait_for(lambda: ledger_kinds(sr_env, silent)[-2:] == ["ENGINE_RESULT"] * 2, timeout=30)
        metrics = worker.worker.metrics.render().decode()
    finally:
        worker.stop()
        engine.stop()
    by_run: dict[str, list[int]] = {}
    for request in requests:
        by_run.setdefault(request.run_id, []).append(request.attempt_no)
    assert by_run == {run_id_of(failing): [1, 2, 3], silent_id: [1, 2, 3]}
    assert ledger_kinds(sr_env, failing).count("ENGINE_RESULT") == 3
    assert row(sr_env, silent) == ("FAILED", "ENGINE_TIMEOUT")
    listed = [json.loads(line)["run_id"] for line in
              sr_cli(sr_env, "runs", "--status", "FAILED", "--reason", "ENGINE_TIMEOUT", "--json").splitlines()]
    assert listed == [silent_id]
    classes = sorted(error_headers(r.headers)["sr-error-class"] for r in dead)
    assert classes == ["DECODE_ERROR", "RUN_NOT_FOUND", "UNKNOWN_ATTEMPT"]
    assert {error_headers(r.headers)["sr-source-topic"] for r in dead} == {settings.topics.engine_results}
    # 6 attempts started; the failing run's 3 failed; the silent run's 3 timed out (the two late
    # results for its attempts 3 and 1 are recorded, and counted, after the run ended).
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
               if line.startswith("sr_engine_attempt")}
    assert samples['sr_engine_attempts_total{event="started"}'] == 6
    assert samples['sr_engine_attempts_total{event="failed"}'] == 3
    assert samples['sr_engine_attempts_total{event="timed_out"}'] == 3
    assert samples['sr_engine_attempts_total{event="succeeded"}'] == 2
    assert samples["sr_engine_attempt_duration_seconds_count"] == 5
