"""The worker's own /healthz, /readyz and /metrics after a known workload (issue: lifecycle, 5)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.evidence import (
    GATE_3A_MEMBERS,
    GATE_6B_MEMBERS,
    EvidenceWriter,
    default_instance,
    receipt_bytes,
)
from tests.harness.kafka import produce_raw, read_topic, submit
from tests.harness.probes import wait_for
from tests.harness.sr_env import SREnv, make_intent
from tests.harness.workers import WorkerThread

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback test URL
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_worker_exposes_health_and_correct_metrics(sr_env: SREnv, write_evidence: EvidenceWriter) -> None:
    write_evidence("metrics-ok")
    ready_intent = make_intent(sr_env, "metrics-ok", outputs=("transactions",))
    waiting_intent = make_intent(sr_env, "metrics-missing")
    worker = WorkerThread(sr_env, http_port=0).start()
    try:
        health = worker.worker.health
        assert health is not None
        base = health.url
        assert _get(base + "/healthz")[0] == 200
        assert wait_for(lambda: _get(base + "/readyz")[0] == 200, timeout=30)
        _status, body = _get(base + "/readyz")
        assert set(json.loads(body)) >= {"kafka", "postgres", "s3"}

        submit(sr_env, [ready_intent, waiting_intent])
        produce_raw(sr_env, sr_env.settings.topics.intents, [(b"poison", b"not avro at all")])
        read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.ready, until=lambda rs: len(rs) >= 1)
        read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.dlq, until=lambda rs: len(rs) >= 1)
        assert wait_for(lambda: len(worker.outcomes) >= 3, timeout=30)
        metrics: dict[Any, float] = {}

        def settled() -> bool:
            nonlocal metrics
            metrics = _samples(_get(base + "/metrics")[1].decode())
            return metrics.get(("sr_runs_by_status", (("status", "WAITING"),))) == 1.0

        assert wait_for(settled, timeout=20), "runs-by-status gauge never refreshed"
    finally:
        worker.stop()

    assert metrics[("sr_runs_total", (("status", "READY"),))] == 1
    assert metrics[("sr_runs_total", (("status", "WAITING"),))] == 1
    assert metrics[("sr_ready_published_total", ())] == 1
    assert metrics[("sr_dlq_total", (("error_class", "DECODE_ERROR"),))] == 1
    assert metrics[("sr_runs_by_status", (("status", "READY"),))] == 1
    # Exactly the bytes of the verified members (both gates of the READY run; gate_6B's receipt is one).
    receipt = receipt_bytes("gate_6B", default_instance("metrics-ok"))
    member_bytes = (sum(len(v) for v in GATE_3A_MEMBERS.values()) + sum(len(v) for v in GATE_6B_MEMBERS.values())
                    + len(receipt))
    assert metrics[("sr_evidence_bytes_verified_total", ())] == member_bytes
    s3_requests = sum(v for (name, _labels), v in metrics.items() if name == "sr_s3_request_seconds_count")
    pg_queries = metrics[("sr_pg_query_seconds_count", ())]
    assert s3_requests > 0 and pg_queries > 0
    intents = sr_env.settings.topics.intents
    messages = {labels: v for (name, labels), v in metrics.items() if name == "sr_messages_total" and v}
    assert sum(messages.values()) == 3
    assert messages[(("outcome", "DLQ"), ("topic", intents))] == 1
    lag = [v for (name, _labels), v in metrics.items() if name == "sr_consumer_lag"]
    assert lag and all(v >= 0 for v in lag)
