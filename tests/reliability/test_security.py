"""Security: tenant isolation of evidence and truth, secrets never leaked, SASL/TLS pass-through.

* An ``evidence_root`` outside the tenant's allowed prefixes (``SR_TENANT_EVIDENCE_PREFIXES``
  or the default ``evidence/<tenant>/``) is REJECTED before a single S3 request is made.
* A tenant cannot read another tenant's evidence (its roots are refused) nor write into
  another tenant's truth: keys are derived from validated segments, identical requests of two
  tenants are two runs under two prefixes, and write-once PUTs refuse every overwrite.
* Configured secrets (S3 keys, the DSN password, the SASL password) appear in no log line,
  no DLQ header or record, no event, no S3 artifact, no ``/metrics`` / ``/readyz`` body —
  including while faults make the worker log connection errors.
* ``SR_KAFKA_*`` settings reach librdkafka unchanged (SASL/TLS), and are documented.

(Replay / re-emit authorization is the operator tooling's: ``tests/integration/test_lifecycle.py``.)
"""

from __future__ import annotations

import base64
import os
import secrets
import string
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg.conninfo
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from tests.harness.evidence import EvidenceWriter
from tests.harness.faultproxy import FaultProxy
from tests.harness.kafka import produce_raw, read_topic, submit
from tests.harness.probes import list_objects
from tests.harness.probes import wait_for as poll
from tests.harness.sr_env import SREnv, make_intent, replace_intent
from tests.harness.workers import WorkerProc, log_lines, stop_all
from tests.reliability.conftest import HOSTILE, report
from worker.adapters.kafka import EventProducer, IntakeConsumer
from worker.adapters.postgres import PgConfig, connect
from worker.app.ports import Record
from worker.app.processor import Action
from worker.app.truth import TruthStore
from worker.core.identity import run_id_of
from worker.core.keys import S3Location, run_keys
from worker.core.models import Strategy
from worker.errors import ConfigError, DriftError, IntegrityError, PostgresError, UnsafeKeyError
from worker.runtime.compose import kafka_config, open_services
from worker.runtime.dispatch import dispatch
from worker.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _record(env: SREnv, value: bytes, offset: int = 0) -> Record:
    return Record(topic=env.settings.topics.intents, partition=0, offset=offset, key=None, value=value,
                  headers=(), timestamp_ms=None)


# ----------------------------------------------------------------------------- evidence roots


def test_evidence_roots_outside_the_tenants_allowed_prefixes_are_rejected_before_any_read(
    sr_env: SREnv, write_evidence: EvidenceWriter, s3_client: Any,
) -> None:
    bucket = sr_env.bucket
    alice, bob = f"{sr_env.tenant}a", f"{sr_env.tenant}b"
    prefixes = {alice: [f"s3://{bucket}/shared/{alice}/"], bob: [f"s3://{bucket}/shared/{bob}/", f"s3://{bucket}/x/"]}
    settings = sr_env.settings.model_copy(update={"tenant_evidence_prefixes": prefixes})
    # Alice's real evidence lives in her configured prefix.
    from tests.harness.evidence import (
        GATE_3A_MEMBERS,
        GATE_6B_MEMBERS,
        instance_of,
        receipt_bytes,
        upload_bundle_gate,
        upload_member_concat_gate,
    )

    allowed = make_intent(sr_env, "ok", tenant=alice, evidence_root=f"s3://{bucket}/shared/{alice}/ok")
    upload_member_concat_gate(s3_client, bucket, f"shared/{alice}/ok", "gates/3A", GATE_3A_MEMBERS)
    upload_bundle_gate(s3_client, bucket, f"shared/{alice}/ok", "gates/6B", GATE_6B_MEMBERS,
                       receipt=receipt_bytes("gate_6B", instance_of(allowed)))
    forbidden = {
        "bob-reads-alice": make_intent(sr_env, "r1", tenant=bob, evidence_root=f"s3://{bucket}/shared/{alice}/ok"),
        "alice-reads-bob": make_intent(sr_env, "r2", tenant=alice, evidence_root=f"s3://{bucket}/shared/{bob}/ok"),
        "string-prefix-trick": make_intent(sr_env, "r3", tenant=alice,
                                           evidence_root=f"s3://{bucket}/shared/{alice}-evil/ok"),
        "default-prefix-overridden": make_intent(sr_env, "r4", tenant=alice,
                                                 evidence_root=f"s3://{bucket}/evidence/{alice}/ok"),
        "parent-of-prefix": make_intent(sr_env, "r5", tenant=alice, evidence_root=f"s3://{bucket}/shared"),
        "other-bucket": make_intent(sr_env, "r6", tenant=alice, evidence_root=f"s3://not-{bucket}/shared/{alice}/ok"),
        "unlisted-tenant-outside-default": make_intent(sr_env, "r7", tenant=f"{sr_env.tenant}c",
                                                       evidence_root=f"s3://{bucket}/shared/{alice}/ok"),
    }
    with open_services(settings, sr_env.policy) as services:
        processor = services.processor
        for offset, (name, intent) in enumerate(forbidden.items()):
            services.store.counter.reset()
            outcome = dispatch(processor, _record(sr_env, sr_env.codec.encode_intent(intent), offset),
                               triggers_topic=sr_env.settings.topics.triggers)
            assert (outcome.action, outcome.detail) == (Action.REJECTED, "EVIDENCE_ROOT_FORBIDDEN"), name
            assert services.store.counter.requests == 0, f"{name}: S3 was touched: {services.store.counter.snapshot()}"
            assert services.index.get(run_id_of(intent)) is None, f"{name}: a run was created"
        assert dispatch(processor, _record(sr_env, sr_env.codec.encode_intent(allowed), 99),
                        triggers_topic=sr_env.settings.topics.triggers).action is Action.READY
    # Nothing was written for any rejected intent; the allowed one has its three objects.
    truth = list_objects(s3_client, bucket, sr_env.settings.s3_prefix + "/")
    assert {k.split("/run/")[1].split("/")[0] for k in truth} == {run_id_of(allowed)}
    statuses = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.status,
                          until=lambda rs: len(rs) >= len(forbidden), timeout=30)
    got = {sr_env.codec.decode_status(r.value or b"").run_id for r in statuses}
    assert got == {run_id_of(i) for i in forbidden.values()}


# ----------------------------------------------------------------------------- truth isolation


def test_a_tenant_cannot_read_or_overwrite_another_tenants_truth(
    sr_env: SREnv, write_evidence: EvidenceWriter, s3_client: Any,
) -> None:
    write_evidence("same")
    alice = make_intent(sr_env, "same")
    # Bob asks for *exactly* the same thing, under his own tenant and his own evidence copy.
    bob_tenant = f"{sr_env.tenant}b"
    prefixes = {bob_tenant: [sr_env.evidence_root("same")], sr_env.tenant: [sr_env.evidence_root("same")]}
    bob = replace_intent(alice, tenant_id=bob_tenant)
    settings = sr_env.settings.model_copy(update={"tenant_evidence_prefixes": prefixes})
    assert run_id_of(alice) != run_id_of(bob), "the tenant is part of the run identity"
    with open_services(settings, sr_env.policy) as services:
        p = services.processor
        assert dispatch(p, _record(sr_env, sr_env.codec.encode_intent(alice), 0),
                        triggers_topic=sr_env.settings.topics.triggers).action is Action.READY
        # Bob's identical request is neither a duplicate nor a collision of Alice's run.
        assert dispatch(p, _record(sr_env, sr_env.codec.encode_intent(bob), 1),
                        triggers_topic=sr_env.settings.topics.triggers).action is Action.READY
        truth = TruthStore(services.store, sr_env.bucket, sr_env.settings.s3_prefix)
        a_keys = truth.keys_for(alice.tenant_id, alice.namespace, run_id_of(alice))
        b_keys = truth.keys_for(bob.tenant_id, bob.namespace, run_id_of(bob))
        before = list_objects(s3_client, sr_env.bucket, sr_env.settings.s3_prefix + "/")
        assert {k for k in before if not k.startswith((a_keys.root + "/", b_keys.root + "/"))} == set()
        assert all(f"/tenant/{alice.tenant_id}/" in k for k in before if k.startswith(a_keys.root))
        # Writing Alice's plan under Bob's keys is refused before any I/O...
        a_plan = s3_client.get_object(Bucket=sr_env.bucket, Key=a_keys.plan)["Body"].read()
        with pytest.raises(IntegrityError):
            truth.write_plan(b_keys, a_plan)
        # ...and nobody can overwrite Alice's objects: write-once PUTs refuse different bytes.
        with pytest.raises(DriftError):
            services.store.put_write_once(sr_env.bucket, a_keys.plan, a_plan + b" ")
        assert truth.append(a_keys, truth.read_ledger(b_keys)[0].model_copy(
            update={"run_id": run_id_of(alice)})).ok is False
        # A tenant id that tries to walk into another tenant's prefix never becomes a key.
        for hostile in (f"{bob_tenant}/../{alice.tenant_id}", "..", f"{alice.tenant_id}/", f"{alice.tenant_id}\x00"):
            with pytest.raises(UnsafeKeyError):
                truth.keys_for(hostile, alice.namespace, run_id_of(alice))
    assert list_objects(s3_client, sr_env.bucket, sr_env.settings.s3_prefix + "/") == before


@HOSTILE
@given(st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}\Z"), st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}\Z"),
       st.from_regex(r"\A[0-9a-f]{32}\Z"))
def test_distinct_tenants_truth_prefixes_never_nest(t1: str, t2: str, run_id: str) -> None:
    if t1 == t2:
        return
    a, b = (S3Location("bkt", run_keys("sr", t, "ns", run_id).root) for t in (t1, t2))
    assert not a.is_within(b) and not b.is_within(a)
    assert not a.prefix.startswith(b.prefix + "/") and not b.prefix.startswith(a.prefix + "/")


# ----------------------------------------------------------------------------- secrets


def _secret(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _needles(values: Iterable[str]) -> dict[str, bytes]:
    """Every form a leaked secret could take: raw, base64 (e.g. inside basic auth), hex."""
    found: dict[str, bytes] = {}
    for value in values:
        raw = value.encode()
        found[f"raw:{value[:4]}"] = raw
        found[f"b64:{value[:4]}"] = base64.b64encode(raw)[:-4]
        found[f"hex:{value[:4]}"] = raw.hex().encode()
    return found


def _leaks(blob: bytes, needles: dict[str, bytes]) -> list[str]:
    return [name for name, needle in needles.items() if needle in blob]


@pytest.mark.shared_evidence  # the fault episodes add runs of other seeds on the "complete" root
def test_secrets_never_reach_logs_dlq_events_artifacts_or_metrics(
    sr_env: SREnv, write_evidence: EvidenceWriter, s3_client: Any, tmp_path: Path,
) -> None:
    started = time.monotonic()
    write_evidence("complete")
    access_key, secret_key = "AKIA" + _secret(16, string.ascii_uppercase + string.digits), _secret(40)
    pg_password, sasl_password = "pgSecret" + _secret(24), "saslSecret" + _secret(24)
    needles = _needles([access_key, secret_key, pg_password, sasl_password])
    assert _leaks(b"x" + pg_password.encode() + b"x", needles), "the scanner itself must find a planted secret"

    dsn = sr_env.settings.pg_conninfo().get_secret_value()
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    s3 = urlsplit(sr_env.servers.s3_endpoint or "")
    with FaultProxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)) as pg_proxy, \
            FaultProxy(s3.hostname or "127.0.0.1", s3.port or 80) as s3_proxy:
        params.update(host="127.0.0.1", port=str(pg_proxy.port), password=pg_password)
        secret_env = {
            "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,  # the S3 gateway accepts any
            "SR_PG_DSN": psycopg.conninfo.make_conninfo("", **{k: str(v) for k, v in params.items() if v}),
            "SR_S3_ENDPOINT": f"http://{s3_proxy.address}",
            "SR_KAFKA_SASL_USERNAME": "sr-worker", "SR_KAFKA_SASL_PASSWORD": sasl_password,
            "SR_HTTP_PORT": "0", "SR_SWEEP_INTERVAL": "1",
        }
        worker = WorkerProc(sr_env, tmp_path / "worker.log", extra_env=secret_env).start()
        bodies: list[bytes] = []
        try:
            assert poll(lambda: any(line.get("message") == "worker started" for line in log_lines(worker.log)), 60)
            url = next(line["url"] for line in log_lines(worker.log) if line.get("message") == "http endpoints up")
            good = make_intent(sr_env, "complete")
            waiting = make_intent(sr_env, "nothing", seed=2)
            forbidden = make_intent(sr_env, "fb", evidence_root=f"s3://{sr_env.bucket}/evidence/other/x")
            colliding = replace_intent(good, strategy=Strategy.AUTO)
            submit(sr_env, [good, waiting, forbidden])
            assert poll(lambda: _status_of(dsn, run_id_of(good)) == "READY", 60)
            # Faults make the worker log connection errors of both servers (the likeliest leak path).
            for proxy in (pg_proxy, s3_proxy):
                proxy.reset()
                submit(sr_env, [make_intent(sr_env, "complete", seed=100 + len(bodies))])
                bodies.append(_fetch(url + "/readyz"))
                time.sleep(2.0)
                proxy.pass_through()
            submit(sr_env, [colliding])
            produce_raw(sr_env, sr_env.settings.topics.intents, [(b"k", b"\xc3\x01poison"), (b"k", b"")])
            produce_raw(sr_env, sr_env.settings.topics.triggers, [(b"k", b"not a trigger")])
            dead = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.dlq,
                              until=lambda rs: len(rs) >= 5, timeout=60, settle=1.0)
            assert poll(lambda: _status_count(dsn, "READY") == 3, 60), "the fault episodes lost an intent"
            bodies += [_fetch(url + "/metrics"), _fetch(url + "/healthz"), _fetch(url + "/readyz")]
        finally:
            codes = stop_all([worker])
    assert codes == [0]
    topics = sr_env.settings.topics
    events = [r for t in (topics.ready, topics.status) for r in read_topic(sr_env.settings.kafka_bootstrap, t,
                                                                          timeout=2.0)]
    log_blob = worker.log.read_bytes()
    assert b"transient fault" in log_blob and b"dead-lettering" in log_blob, "the error paths were not exercised"
    assert b"sr_" in bodies[-3], "no metrics were scraped"
    artifacts = {k: s3_client.get_object(Bucket=sr_env.bucket, Key=k)["Body"].read()
                 for k in list_objects(s3_client, sr_env.bucket, sr_env.settings.s3_prefix + "/")}
    assert len(artifacts) >= 8
    places: dict[str, bytes] = {
        "worker log": log_blob,
        "dlq": b"\n".join(repr((r.key, r.value, r.headers)).encode() for r in dead),
        "events": b"\n".join(repr((r.key, r.value, r.headers)).encode() for r in events),
        "s3 artifacts": b"\n".join(artifacts.values()),
        "http bodies": b"\n".join(bodies),
    }
    leaked = {where: _leaks(blob, needles) for where, blob in places.items() if _leaks(blob, needles)}
    assert leaked == {}, f"secrets leaked: {leaked}"
    report(f"secrets scan: {len(log_blob)} log bytes, {len(dead)} DLQ records, {len(events)} events, "
           f"{len(artifacts)} S3 artifacts, {sum(map(len, bodies))} HTTP body bytes: no leak; "
           f"{time.monotonic() - started:.1f}s")


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - a loopback test endpoint
            return bytes(response.read())
    except urllib.error.HTTPError as exc:  # /readyz answers 503 while a server is down: keep the body
        return bytes(exc.read())


def _status_of(dsn: str, run_id: str) -> str | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT status FROM sr_runs WHERE run_id = %s", (run_id,)).fetchone()
    return None if row is None else str(row[0])


def _status_count(dsn: str, status: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM sr_runs WHERE status = %s", (status,)).fetchone()
    return int(row[0]) if row else 0


def test_configuration_and_connection_errors_do_not_echo_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    password = "pwSecret" + _secret(20)
    monkeypatch.setenv("SR_PG_DSN", f"postgresql://sr:{password}@db/sr")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")  # keys come in pairs
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", password)
    monkeypatch.setenv("SR_BATCH_SIZE", "many")
    with pytest.raises(ConfigError) as bad_value:
        load_settings(None, {**os.environ, "SR_KAFKA_SASL_PASSWORD": password})
    assert password not in str(bad_value.value) and "batch_size" in str(bad_value.value)
    monkeypatch.delenv("SR_BATCH_SIZE")
    settings = load_settings(None, {**os.environ, "SR_KAFKA_SASL_PASSWORD": password})
    assert settings.pg_conninfo().get_secret_value().endswith("@db/sr")  # the secrets really are configured
    assert settings.kafka_client_config()["sasl.password"] == password
    assert password not in repr(settings) and password not in str(settings.model_dump())
    with pytest.raises(PostgresError) as bad_dsn:
        connect(PgConfig(dsn=SecretStr(f"postgresql://sr:{password}@127.0.0.1:notaport/sr")))
    with pytest.raises(PostgresError) as unreachable:
        connect(PgConfig(dsn=SecretStr(f"postgresql://sr:{password}@127.0.0.1:1/sr"), connect_timeout=1))
    for exc in (bad_dsn.value, unreachable.value):
        chain = []
        cur: BaseException | None = exc
        while cur is not None:
            chain.append(f"{type(cur).__name__}: {cur}")
            cur = cur.__cause__ or cur.__context__
        assert password not in " | ".join(chain)


# ----------------------------------------------------------------------------- SASL / TLS pass-through

SASL_ENV = {
    "SR_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    "SR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "SR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "SR_KAFKA_SASL_USERNAME": "sr-worker",
    "SR_KAFKA_SASL_PASSWORD": "sasl-password-value",
    "SR_KAFKA_SSL_CA_LOCATION": "/etc/ssl/certs/ca-certificates.crt",
    "SR_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "https",
}
EXPECTED_PROPS = {
    "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "sr-worker",
    "sasl.password": "sasl-password-value", "ssl.ca.location": "/etc/ssl/certs/ca-certificates.crt",
    "ssl.endpoint.identification.algorithm": "https",
}


def test_sasl_and_tls_settings_pass_through_to_librdkafka(monkeypatch: pytest.MonkeyPatch) -> None:
    import confluent_kafka

    import worker.adapters.kafka as kafka_adapter

    for name, value in SASL_ENV.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(None, SASL_ENV)
    cfg = kafka_config(settings)
    assert settings.kafka_bootstrap == "127.0.0.1:1" and "bootstrap" not in cfg.client_extra
    assert {k: v for k, v in cfg.base().items() if k in EXPECTED_PROPS} == EXPECTED_PROPS
    assert "sasl-password-value" not in repr(settings)

    seen: list[dict[str, Any]] = []

    class Capture:
        def __init__(self, conf: dict[str, Any]) -> None:
            seen.append(dict(conf))

        def subscribe(self, *args: Any, **kwargs: Any) -> None:
            return None

        def poll(self, timeout: float = 0) -> int:
            return 0

        def flush(self, timeout: float = 0) -> int:
            return 0

        def close(self) -> None:
            return None

    monkeypatch.setattr(kafka_adapter.producer, "Producer", Capture)
    monkeypatch.setattr(kafka_adapter.consumer, "Consumer", Capture)
    with EventProducer(cfg), IntakeConsumer(cfg, group_id="g", topics=["t"]):
        pass
    assert len(seen) == 2
    for conf in seen:  # the worker's own defaults never override the operator's security settings
        assert {k: v for k, v in conf.items() if k in EXPECTED_PROPS} == EXPECTED_PROPS
    monkeypatch.undo()
    # And librdkafka itself accepts exactly these properties (a real client, nothing listening).
    if Path(EXPECTED_PROPS["ssl.ca.location"]).exists():
        confluent_kafka.Producer(seen[0]).flush(0.1)


def test_sasl_and_tls_pass_through_is_documented() -> None:
    readme = (REPO / "README.md").read_text()
    reliability = (REPO / "docs" / "reliability.md").read_text()
    for name in ("SR_KAFKA_SECURITY_PROTOCOL", "SR_KAFKA_SASL_MECHANISM", "SR_KAFKA_SASL_USERNAME",
                 "SR_KAFKA_SASL_PASSWORD", "SR_KAFKA_SSL_CA_LOCATION"):
        assert name in readme or name in reliability, f"{name} is not documented"
    assert "security.protocol" in readme and "SASL_SSL" in reliability

