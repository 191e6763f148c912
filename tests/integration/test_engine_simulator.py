"""The reference engine on real servers (contract §8): requests in, evidence in S3, results out.

``sr engine simulate`` (a subprocess) answers a request and its re-delivery with byte-identical
results and evidence SR's own verifier passes for the plan's gates; a second run in the same
consumer group (in-process, failure rate 1.0) starts after the committed offsets and fails the
next request without writing a flag.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.harness.engine import engine_request_for
from tests.harness.kafka import produce_raw, read_topic
from tests.harness.paths import REPO
from tests.harness.sr_env import SREnv, make_intent
from tests.harness.workers import sr_binary
from worker.app.verifier import EvidenceVerifier
from worker.core.engine import EngineStatus
from worker.core.evidence import FLAG_NAME, GateOutcome
from worker.core.identity import run_id_of
from worker.core.plan import build_plan
from worker.engine.loop import SimulatorLoop
from worker.engine.simulator import SimulatorConfig
from worker.runtime.compose import object_store

pytestmark = pytest.mark.integration


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_the_reference_engine_answers_each_request_once_and_the_same_way(sr_env: SREnv, s3_client: Any,
                                                                       tmp_path: Path) -> None:
    settings, policy, codec = sr_env.settings, sr_env.policy, sr_env.codec
    topics = settings.topics
    group = f"sr-engine-test-{uuid.uuid4().hex[:8]}"
    ok = make_intent(sr_env, "engine-ok", outputs=("transactions",))
    doomed = make_intent(sr_env, "engine-doomed", outputs=("transactions", "accounts"))
    ok_request, doomed_request = engine_request_for(ok, policy), engine_request_for(doomed, policy)
    ok_frame = codec.encode_engine_request(ok_request)
    # The request and a re-delivery of the same bytes (SR re-sends until it is marked published).
    produce_raw(sr_env, topics.engine_requests, [(ok_request.run_id.encode(), ok_frame)] * 2)

    done = subprocess.run([sr_binary(), "engine", "simulate", "--delay", "0", "--seed", "5", "--max-requests", "2",
                           "--group-id", group], env=sr_env.env(), cwd=REPO, capture_output=True, timeout=90,
                          check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    logs = _json_lines(done.stderr.decode())
    assert [line["status"] for line in logs if line["message"] == "engine result sent"] == ["SUCCEEDED", "SUCCEEDED"]

    results = read_topic(settings.kafka_bootstrap, topics.engine_results, until=lambda rs: len(rs) >= 2, timeout=30)
    assert len(results) == 2
    assert results[0].value == results[1].value  # the re-delivery got the same bytes
    assert {r.key for r in results} == {ok_request.run_id.encode()}
    result = codec.decode_engine_result(results[0].value or b"")
    assert (result.attempt_id, result.run_id, result.status) == (
        ok_request.attempt_id, ok_request.run_id, EngineStatus.SUCCEEDED)
    assert result.finished_at == ok_request.requested_at  # requested_at + delay 0

    plan = build_plan(ok, policy, run_id=run_id_of(ok))
    with object_store(settings) as store, EvidenceVerifier(store, concurrency=2) as verifier:
        outcomes = {r.gate_id: r.outcome for r in verifier.verify_plan(plan)}
    assert outcomes == {"gate_3A": GateOutcome.PASS, "gate_6B": GateOutcome.PASS}

    # Same group, failure rate 1.0: it starts after the two committed offsets.
    produce_raw(sr_env, topics.engine_requests, [(doomed_request.run_id.encode(),
                                                  codec.encode_engine_request(doomed_request))])
    loop = SimulatorLoop(settings, policy, SimulatorConfig(delay=0, failure_rate=1.0), group_id=group,
                         max_requests=1)
    errors: list[BaseException] = []

    def _run() -> None:
        try:
            loop.run()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=_run, name="sr-test-engine", daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        loop.stop()
        thread.join(30)
    assert not errors and not thread.is_alive() and loop.answered == 1

    results = read_topic(settings.kafka_bootstrap, topics.engine_results, until=lambda rs: len(rs) >= 3,
                         timeout=30, settle=1.0)
    assert len(results) == 3  # nothing re-answered: the second run started after the committed offsets
    decoded = [codec.decode_engine_result(r.value or b"") for r in results]  # partitions interleave
    failed = [r for r in decoded if r.run_id == doomed_request.run_id]
    assert [(r.attempt_id, r.status) for r in failed] == [(doomed_request.attempt_id, EngineStatus.FAILED)]
    assert failed[0].detail.startswith("SIMULATED_FAILURE")
    listed = s3_client.list_objects_v2(Bucket=sr_env.bucket, Prefix=sr_env.evidence_prefix("engine-doomed") + "/")
    assert not [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(FLAG_NAME)]
    assert listed.get("KeyCount", 0) == 0
