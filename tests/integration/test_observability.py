"""Metrics, /healthz, /readyz and the readiness checks, on the real servers (no mocks).

Outages are made with tests/harness/faultproxy.py in front of the session's real SeaweedFS/MinIO
and PostgreSQL: the checks point at the proxy, the proxy goes down / black-holes, /readyz
must turn 503 within 10 s and 200 again within 10 s of the proxy coming back.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg.conninfo
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.harness.faultproxy import FaultProxy
from tests.harness.servers import Servers, s3_config_for
from tests.integration.test_postgres_index import hex64, new_run, raw
from worker.adapters.kafka import KafkaConfig
from worker.adapters.kafka.health import consumer_lag, kafka_check
from worker.adapters.postgres import PgConfig, RoundTripCounter, RunIndex
from worker.adapters.postgres.health import postgres_check
from worker.adapters.postgres.leases import advance_with_epoch
from worker.adapters.s3 import ObjectStore
from worker.adapters.s3.health import s3_check
from worker.app.ports import Record
from worker.core.index import NewPublication, OutboxStats
from worker.core.models import RunStatus
from worker.errors import KafkaFatalError, KafkaUnavailableError, PostgresUnavailableError, S3AccessError
from worker.runtime.gauges import refresh_consumer_lag, refresh_outbox, refresh_runs_by_status
from worker.runtime.health import HealthServer
from worker.runtime.metrics import METRIC_NAMES, RUNTIME_FAMILY_PREFIXES, Metrics

pytestmark = pytest.mark.integration

FAKE_PG_PASSWORD = "pw-" + uuid.uuid4().hex  # only sent if the server asks (trust auth: never)


# ----------------------------------------------------------------------------- helpers
def http_get(url: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """(status, content-type, body) of a GET, 4xx/5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback test server
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers.get("Content-Type", ""), err.read().decode()


def wait_ready(server: HealthServer, want: int, timeout: float = 10.0) -> tuple[dict[str, str], float]:
    """Poll /readyz until it answers ``want``; returns (body, seconds it took)."""
    started = time.monotonic()
    last: tuple[int, str] = (0, "")
    while time.monotonic() - started < timeout:
        status, ctype, body = http_get(f"{server.url}/readyz")
        assert ctype == "application/json"
        last = (status, body)
        if status == want:
            return json.loads(body), time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"/readyz did not answer {want} within {timeout}s; last: {last}")


def dsn_via(dsn: str, host: str, port: int, *, add_password: bool) -> tuple[str, str]:
    """``dsn`` re-pointed at host:port; returns (dsn, the password a leak test must not find)."""
    params = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items() if v is not None}
    params.update(host=host, port=str(port))
    if add_password and not params.get("password"):
        params["password"] = FAKE_PG_PASSWORD
    return psycopg.conninfo.make_conninfo("", **params), params.get("password", FAKE_PG_PASSWORD)


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], family: str, name: str, **labels: str) -> float:
    """The value of the one sample ``name`` of ``family`` with exactly these labels."""
    found = [s.value for s in fams[family].samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (family, name, labels, fams[family].samples)
    return float(found[0])


def hist_count(fams: dict[str, Any], family: str, **labels: str) -> int:
    return int(sample(fams, family, f"{family}_count", **labels))


@pytest.fixture
def kafka_cfg(kafka_bootstrap: str) -> KafkaConfig:
    return KafkaConfig(bootstrap=kafka_bootstrap)


@pytest.fixture
def s3_target(servers: Servers, s3_client: Any) -> tuple[str, int]:
    parts = urlsplit(servers.s3_endpoint or "")
    return parts.hostname or "127.0.0.1", parts.port or 80


@pytest.fixture
def pg_target(pg_dsn: str) -> tuple[str, int]:
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    return str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)


@pytest.fixture
def s3_proxy(s3_target: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(*s3_target) as proxy:
        yield proxy


@pytest.fixture
def pg_proxy(pg_target: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(*pg_target) as proxy:
        yield proxy


# ----------------------------------------------------------------------------- plain HTTP
def test_healthz_404_and_empty_readiness() -> None:
    metrics = Metrics()
    server = HealthServer("127.0.0.1", 0, metrics=metrics, checks={})
    assert server.port == 0  # nothing bound before start()
    with server:
        assert server.port > 0
        assert http_get(f"{server.url}/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
        assert http_get(f"{server.url}/readyz") == (200, "application/json", "{}")
        status, ctype, _ = http_get(f"{server.url}/nope")
        assert (status, ctype) == (404, "text/plain; charset=utf-8")
        assert http_get(f"{server.url}/healthz/extra")[0] == 404
        status, ctype, body = http_get(f"{server.url}/metrics?x=1")
        assert status == 200
        assert ctype == metrics.content_type
        assert ctype.startswith("text/plain; version=")
        assert "sr_runs_total" in body
        request = urllib.request.Request(f"{server.url}/healthz", method="HEAD")  # noqa: S310
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
            assert resp.status == 200
            assert resp.read() == b""
        port = server.port
    # Stopped: nothing listens any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    with pytest.raises(ValueError, match="check name"):
        HealthServer("127.0.0.1", 0, metrics=metrics, checks={"Bad Name": lambda: None})


def test_a_hanging_check_is_bounded_and_not_duplicated() -> None:
    import threading

    release = threading.Event()
    calls: list[float] = []

    def hangs() -> None:
        calls.append(time.monotonic())
        release.wait(10)

    with HealthServer("127.0.0.1", 0, metrics=Metrics(), checks={"slow": hangs, "fast": lambda: None},
                      check_timeout=0.3, cache_seconds=0.0) as server:
        status, _, body = http_get(f"{server.url}/readyz")  # answers although "slow" never returns
        assert status == 503
        assert json.loads(body) == {"fast": "ok", "slow": "timed out after 0.3 s"}
        for _ in range(3):
            assert http_get(f"{server.url}/readyz")[0] == 503
        assert len(calls) == 1  # later probes wait on the same execution instead of piling up
        release.set()
        wait_ready(server, 200, timeout=5)


# ----------------------------------------------------------------------------- outages
@pytest.mark.parametrize("fault", ["down", "blackhole"])
def test_readyz_follows_s3_and_postgres_outages(  # noqa: PLR0917 - fixtures
    fault: str, servers: Servers, kafka_cfg: KafkaConfig, pg_dsn: str, s3_proxy: FaultProxy,
    pg_proxy: FaultProxy,
) -> None:
    proxied_pg, pg_password = dsn_via(pg_dsn, "127.0.0.1", pg_proxy.port, add_password=True)
    s3_cfg = s3_config_for(servers, endpoint_url=f"http://{s3_proxy.address}")
    secrets = [pg_password, servers.s3_secret_key, proxied_pg]
    checks = {
        "kafka": kafka_check(kafka_cfg),
        "postgres": postgres_check(SecretStr(proxied_pg), timeout=1.0),
        "s3": s3_check(s3_cfg, servers.s3_bucket, timeout=0.5),
    }
    metrics = Metrics()
    bodies: list[str] = []
    with HealthServer("127.0.0.1", 0, metrics=metrics, checks=checks, check_timeout=1.0,
                      cache_seconds=0.2) as server:
        body, _ = wait_ready(server, 200, timeout=15)
        assert body == {"kafka": "ok", "postgres": "ok", "s3": "ok"}

        for name, proxy in (("s3", s3_proxy), ("postgres", pg_proxy)):
            getattr(proxy, fault)()
            body, _took = wait_ready(server, 503)
            bodies.append(json.dumps(body))
            assert body[name] != "ok", body
            assert all(v == "ok" for k, v in body.items() if k != name), body
            proxy.up()
            body, _took = wait_ready(server, 200)
            assert body == {"kafka": "ok", "postgres": "ok", "s3": "ok"}

        bodies.append(http_get(f"{server.url}/metrics")[2])
    # Failures are named with a short, typed reason...
    assert any("S3_UNAVAILABLE" in b or "timed out" in b for b in bodies[:1]), bodies
    assert any("POSTGRES_UNAVAILABLE" in b or "timed out" in b for b in bodies[1:2]), bodies
    assert all(len(v) <= 200 for b in bodies[:2] for v in json.loads(b).values())
    # ...and never carry a secret.
    for text in bodies:
        for secret in secrets:
            assert secret not in text


def test_checks_raise_typed_errors(servers: Servers, kafka_cfg: KafkaConfig, s3_client: Any,
                                   topic_factory: Any) -> None:
    with socket.socket() as tmp:
        tmp.bind(("127.0.0.1", 0))
        dead = tmp.getsockname()[1]
    kafka_check(kafka_cfg)()
    topic = topic_factory("obs")
    kafka_check(kafka_cfg, topics=[topic])()
    with pytest.raises(KafkaFatalError, match="missing topics: no-such-topic"):
        kafka_check(kafka_cfg, topics=[topic, "no-such-topic"])()
    with pytest.raises(KafkaUnavailableError):
        kafka_check(KafkaConfig(bootstrap=f"127.0.0.1:{dead}"), timeout=0.5)()
    with pytest.raises(PostgresUnavailableError) as pg_err:
        postgres_check(f"postgresql://sr:{FAKE_PG_PASSWORD}@127.0.0.1:{dead}/x", timeout=1.0)()
    assert FAKE_PG_PASSWORD not in str(pg_err.value)
    with pytest.raises(S3AccessError, match="does not exist"):
        s3_check(s3_config_for(servers), "sr-no-such-bucket-" + uuid.uuid4().hex[:8])()


# ----------------------------------------------------------------------------- metrics
def test_metrics_expose_every_series_with_exact_values(
    servers: Servers, s3_client: Any, s3_prefix: str, pg_dsn: str,
) -> None:
    metrics = Metrics()
    bucket = servers.s3_bucket

    # S3: a known mix of request attempts, each observed through the ObjectStore hook.
    with ObjectStore(s3_config_for(servers), on_request=metrics.observe_s3) as store:
        for i in range(3):
            store.put(bucket, f"{s3_prefix}/o{i}", b"x" * (i + 1))          # PUT ok x3
        assert store.create(bucket, f"{s3_prefix}/o0", b"again") is False  # PUT 412 -> error x1
        assert store.get(bucket, f"{s3_prefix}/o1", max_bytes=10) == b"xx"  # GET ok x2
        assert store.get(bucket, f"{s3_prefix}/o2", max_bytes=10) == b"xxx"
        assert store.head(bucket, f"{s3_prefix}/o0") is not None           # HEAD ok x3
        assert store.head(bucket, f"{s3_prefix}/o1") is not None
        assert store.bucket_exists(bucket) is True
        assert store.head(bucket, f"{s3_prefix}/missing") is None          # HEAD 404 -> error x1
        assert len(list(store.list(bucket, f"{s3_prefix}/"))) == 3          # LIST ok x1
        store.delete(bucket, f"{s3_prefix}/o2")                             # DELETE ok x1
        s3_counts = store.counter.snapshot()

    # Postgres: runs in known statuses through a RunIndex whose counter observes every statement.
    counter = RoundTripCounter(on_query=metrics.observe_pg)
    statuses = [RunStatus.ADMITTED] * 3 + [RunStatus.WAITING] * 2 + [RunStatus.REJECTED]
    with RunIndex(PgConfig(dsn=SecretStr(pg_dsn)), counter) as index:
        for run_status in statuses:
            base = new_run()
            index.admit(type(base)(**{**{f: getattr(base, f) for f in base.__dataclass_fields__},
                                      "status": run_status}))
        assert index.list_runs(limit=10)
        counts = refresh_runs_by_status(index, metrics)
    assert counts == {"ADMITTED": 3, "WAITING": 2, "REJECTED": 1}
    pg_round_trips = counter.snapshot()
    assert pg_round_trips >= len(statuses) + 2

    # Event hooks.
    metrics.run_transition("READY")
    metrics.run_transition(RunStatus.READY)
    metrics.run_transition(RunStatus.WAITING)
    metrics.run_transition("QUARANTINED")
    metrics.run_transition("nonsense")  # unknown -> OTHER, never an unbounded label
    metrics.ready_published()
    metrics.ready_published(2)
    metrics.dead_lettered("DECODE_ERROR")
    metrics.dead_lettered("DECODE_ERROR")
    metrics.dead_lettered("UNKNOWN_SCHEMA")
    metrics.dead_lettered("bad label with spaces")
    metrics.evidence_bytes(1000)
    metrics.evidence_bytes(24)
    metrics.evidence_bytes(-5)
    for _ in range(3):
        metrics.message("sr.run-intents", "processed")
    metrics.message("sr.triggers", "dead_lettered")
    metrics.set_lag("sr.run-intents", 0, 5)
    metrics.set_lags({("sr.run-intents", 1): 7, ("sr.triggers", 0): 0})  # partition 0 of intents dropped

    with HealthServer("127.0.0.1", 0, metrics=metrics, checks={}) as server:
        status, _, text = http_get(f"{server.url}/metrics")
    assert status == 200
    fams = families(text)
    # Every SR family and nothing else under sr_; the runtime collectors' families beside them.
    assert {f for f in fams if f.startswith("sr_")} == {name.removesuffix("_total") for name in METRIC_NAMES}
    assert {f for f in fams if not f.startswith("sr_")} == {f for f in fams if f.startswith(RUNTIME_FAMILY_PREFIXES)}
    assert "python_info" in fams
    assert not [s for f in fams.values() for s in f.samples if s.name.endswith("_created")]

    # S3 histogram: per verb and outcome, equal to the adapter's own attempt counter.
    expected_s3 = {("PUT", "ok"): 3, ("PUT", "error"): 1, ("GET", "ok"): 2, ("HEAD", "ok"): 3,
                   ("HEAD", "error"): 1, ("LIST", "ok"): 1, ("DELETE", "ok"): 1}
    for verb in ("PUT", "GET", "HEAD", "LIST", "DELETE"):
        ok = hist_count(fams, "sr_s3_request_duration_seconds", verb=verb, outcome="ok")
        err = hist_count(fams, "sr_s3_request_duration_seconds", verb=verb, outcome="error")
        assert (ok, err) == (expected_s3.get((verb, "ok"), 0), expected_s3.get((verb, "error"), 0)), verb
        assert ok + err == s3_counts[verb]
    assert sample(fams, "sr_s3_request_duration_seconds", "sr_s3_request_duration_seconds_bucket",
                  verb="PUT", outcome="ok", le="+Inf") == 3
    assert sample(fams, "sr_s3_request_duration_seconds", "sr_s3_request_duration_seconds_sum",
                  verb="PUT", outcome="ok") > 0

    # Postgres histogram: one observation per round trip.
    assert hist_count(fams, "sr_pg_query_duration_seconds") == pg_round_trips
    assert sample(fams, "sr_pg_query_duration_seconds", "sr_pg_query_duration_seconds_sum") > 0

    for st, n in {"READY": 2, "WAITING": 1, "FAILED": 0, "QUARANTINED": 1, "REJECTED": 0, "OTHER": 1}.items():
        assert sample(fams, "sr_runs", "sr_runs_total", status=st) == n
    for st, n in {"ADMITTED": 3, "WAITING": 2, "READY": 0, "FAILED": 0, "QUARANTINED": 0, "REJECTED": 1}.items():
        assert sample(fams, "sr_runs_by_status", "sr_runs_by_status", status=st) == n
    assert sample(fams, "sr_ready_published", "sr_ready_published_total") == 3
    assert sample(fams, "sr_dlq", "sr_dlq_total", error_class="DECODE_ERROR") == 2
    assert sample(fams, "sr_dlq", "sr_dlq_total", error_class="UNKNOWN_SCHEMA") == 1
    assert sample(fams, "sr_dlq", "sr_dlq_total", error_class="OTHER") == 1
    assert sample(fams, "sr_evidence_verified_bytes", "sr_evidence_verified_bytes_total") == 1024
    assert sample(fams, "sr_messages", "sr_messages_total", topic="sr.run-intents", outcome="processed") == 3
    assert sample(fams, "sr_messages", "sr_messages_total", topic="sr.triggers", outcome="dead_lettered") == 1
    lag = {(s.labels["topic"], s.labels["partition"]): s.value for s in fams["sr_consumer_lag"].samples}
    assert lag == {("sr.run-intents", "1"): 7, ("sr.triggers", "0"): 0}
    # No credential of any kind in the exposition.
    assert servers.s3_secret_key not in text
    assert servers.s3_access_key not in text


def test_count_by_status_is_one_round_trip_and_empty_on_an_empty_index(pg_dsn: str) -> None:
    counter = RoundTripCounter()
    with RunIndex(PgConfig(dsn=SecretStr(pg_dsn)), counter) as index:
        before = counter.snapshot()
        assert index.count_by_status() == {}
        assert counter.snapshot() == before + 1


def test_outbox_gauges_count_unpublished_rows_and_age_the_oldest_in_one_round_trip(pg_dsn: str) -> None:
    counter = RoundTripCounter()
    metrics = Metrics()
    run = new_run()
    fvh = hex64("outbox-facts")
    ready = NewPublication.ready(run.run_id, fvh, "READY", topic="sr.ready", payload=b"ready")
    status = NewPublication.status_event(run.run_id, 0, "WAITING", topic="sr.run-status", payload=b"waiting")
    with RunIndex(PgConfig(dsn=SecretStr(pg_dsn)), counter) as index:
        before = counter.snapshot()
        assert refresh_outbox(index, metrics) == OutboxStats(backlog=0, oldest_age_seconds=0.0)
        assert counter.snapshot() == before + 1

        index.admit(run)
        with raw(pg_dsn) as conn:
            advance_with_epoch(conn, run.run_id, 0, RunStatus.READY, ledger_seq=1, ledger_head_hash=hex64("h1"),
                               facts_view_hash=fvh, plan_hash=hex64("plan"), publications=[status, ready])
            # The status row waited 90 s (a broker outage), the READY row is new.
            conn.execute("UPDATE sr_publications SET created_at = now() - interval '90 seconds' WHERE pub_key = %s",
                         (status.pub_key,))
        stats = refresh_outbox(index, metrics)
        assert stats.backlog == 2
        assert 90 <= stats.oldest_age_seconds < 90 + 60
        fams = families(metrics.render().decode())
        assert sample(fams, "sr_outbox_backlog", "sr_outbox_backlog") == 2
        assert sample(fams, "sr_outbox_oldest_age_seconds", "sr_outbox_oldest_age_seconds") == stats.oldest_age_seconds

        index.mark_published(status.pub_key, 0, 1)  # the old row goes out: the age is the new row's
        stats = refresh_outbox(index, metrics)
        assert stats.backlog == 1 and stats.oldest_age_seconds < 60
        index.mark_published(ready.pub_key, 0, 2)
        assert refresh_outbox(index, metrics) == OutboxStats(backlog=0, oldest_age_seconds=0.0)
    fams = families(metrics.render().decode())
    assert sample(fams, "sr_outbox_backlog", "sr_outbox_backlog") == 0
    assert sample(fams, "sr_outbox_oldest_age_seconds", "sr_outbox_oldest_age_seconds") == 0


def test_consumer_lag_from_committed_offsets(kafka_bootstrap: str, topic_factory: Any, group_id: str) -> None:
    topic = topic_factory("lag", partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
    # One record per produce request: Tansu's watermark is only right for single-record batches.
    for i in range(10):
        producer.produce(topic, value=b"v%d" % i, partition=0)
        producer.flush(10)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group_id,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        assert consumer_lag(consumer, [topic]) == {(topic, 0): 10, (topic, 1): 0}
        assert consumer_lag(consumer, ["other-topic"]) == {}
        consumer.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)
        metrics = Metrics()
        assert refresh_consumer_lag(consumer, None, metrics) == {(topic, 0): 6, (topic, 1): 0}
        fams = families(metrics.render().decode())
        assert sample(fams, "sr_consumer_lag", "sr_consumer_lag", topic=topic, partition="0") == 6
    finally:
        consumer.close()


def test_consumer_lag_of_the_worker_intake_consumer(kafka_bootstrap: str, topic_factory: Any,
                                                    group_id: str) -> None:
    from worker.adapters.kafka import IntakeConsumer

    topic = topic_factory("lagi")
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
    for i in range(3):
        producer.produce(topic, value=b"v%d" % i)
        producer.flush(10)
    config = KafkaConfig(bootstrap=kafka_bootstrap, session_timeout=6.0)
    with IntakeConsumer(config, group_id=group_id, topics=[topic]) as consumer:
        records: list[Record] = []
        deadline = time.monotonic() + 20
        while len(records) < 3 and time.monotonic() < deadline:
            records += consumer.poll_batch(10, 0.2)
        assert len(records) == 3
        assert consumer_lag(consumer, [topic]) == {(topic, 0): 3}  # nothing committed yet
        assert consumer_lag(consumer, [topic], use_committed=False) == {(topic, 0): 0}  # all fetched
        consumer.store(topic, 0, 2)
        consumer.commit()
        assert consumer_lag(consumer, [topic]) == {(topic, 0): 1}
        assert consumer_lag(consumer, [topic], cached=True) == {(topic, 0): 1}
