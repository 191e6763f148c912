"""The worker's own /healthz, /readyz and /metrics after a known workload (issues 5 and 15)."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

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
from tests.integration.test_postgres_index import hex64, new_run
from worker.adapters.postgres import PgConfig, RunIndex
from worker.adapters.postgres.leases import advance_with_epoch
from worker.core.index import NewPublication
from worker.core.models import RunStatus
from worker.runtime import worker as worker_module
from worker.runtime.metrics import sr_version

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


def _strand_publication(pg_dsn: str, age_seconds: int) -> None:
    """An unpublished status row ``age_seconds`` old, of a FAILED run (the sweep never drives
    it), as a broker outage would leave it."""
    run = new_run()
    stuck = NewPublication.status_event(run.run_id, 1, "FAILED", topic="sr.unused-status", payload=b"stuck")
    with RunIndex(PgConfig(dsn=SecretStr(pg_dsn))) as index:
        index.admit(run)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        advance_with_epoch(conn, run.run_id, 0, RunStatus.FAILED, ledger_seq=1, ledger_head_hash=hex64("stuck"),
                           reason_code="TEST", publications=[stuck])
        conn.execute("UPDATE sr_publications SET created_at = now() - make_interval(secs => %s) WHERE pub_key = %s",
                     (age_seconds, stuck.pub_key))


def test_worker_exposes_health_and_correct_metrics(sr_env: SREnv, write_evidence: EvidenceWriter, pg_dsn: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # No periodic outbox flush during the test (the one before consuming still runs): a row
    # stranded below stays unpublished, so the outbox gauges must report it.
    monkeypatch.setattr(worker_module, "OUTBOX_INTERVAL", 3600.0)
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

        submitted_at = time.time()
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
        assert wait_for(lambda: _samples(_get(base + "/metrics")[1].decode()).get(("sr_outbox_backlog", ())) == 0,
                        timeout=20), "the workload's publications never left the outbox"
        elapsed = time.time() - submitted_at

        # A publication stranded for an hour: the worker's gauge refresh reports it.
        _strand_publication(pg_dsn, 3600)
        outbox: dict[Any, float] = {}

        def stranded() -> bool:
            nonlocal outbox
            outbox = _samples(_get(base + "/metrics")[1].decode())
            return outbox.get(("sr_outbox_backlog", ())) == 1.0

        assert wait_for(stranded, timeout=20), "outbox gauges never refreshed"
    finally:
        worker.stop()

    assert 3600 <= outbox[("sr_outbox_oldest_age_seconds", ())] < 3600 + 120

    assert metrics[("sr_runs_total", (("status", "READY"),))] == 1
    assert metrics[("sr_runs_total", (("status", "WAITING"),))] == 1
    assert metrics[("sr_ready_published_total", ())] == 1
    # The one READY, timed from its intent record's timestamp to the broker's ack: positive and
    # no longer than submit -> the metrics showing it.
    assert metrics[("sr_ready_latency_seconds_count", ())] == 1
    assert 0 < metrics[("sr_ready_latency_seconds_sum", ())] <= elapsed + 1
    assert metrics[("sr_lease_lost_total", (("reason", "lost"),))] == 0
    assert metrics[("sr_lease_lost_total", (("reason", "fenced"),))] == 0
    [build] = [labels for (name, labels), v in metrics.items() if name == "sr_build_info" and v == 1]
    assert dict(build)["version"] == sr_version()
    # The runtime collectors' series, on the worker's own registry.
    assert metrics[("process_cpu_seconds_total", ())] > 0
    assert metrics[("process_resident_memory_bytes", ())] > 0
    assert any(name == "python_info" for name, _labels in metrics)
    assert metrics[("sr_dlq_total", (("error_class", "DECODE_ERROR"),))] == 1
    assert metrics[("sr_runs_by_status", (("status", "READY"),))] == 1
    # Exactly the bytes of the verified members (both gates of the READY run; gate_6B's receipt is one).
    receipt = receipt_bytes("gate_6B", default_instance("metrics-ok"))
    member_bytes = (sum(len(v) for v in GATE_3A_MEMBERS.values()) + sum(len(v) for v in GATE_6B_MEMBERS.values())
                    + len(receipt))
    assert metrics[("sr_evidence_verified_bytes_total", ())] == member_bytes
    s3_requests = sum(v for (name, _labels), v in metrics.items() if name == "sr_s3_request_duration_seconds_count")
    pg_queries = metrics[("sr_pg_query_duration_seconds_count", ())]
    assert s3_requests > 0 and pg_queries > 0
    intents = sr_env.settings.topics.intents
    messages = {labels: v for (name, labels), v in metrics.items() if name == "sr_messages_total" and v}
    assert sum(messages.values()) == 3
    assert messages[(("outcome", "DLQ"), ("topic", intents))] == 1
    lag = [v for (name, _labels), v in metrics.items() if name == "sr_consumer_lag"]
    assert lag and all(v >= 0 for v in lag)
