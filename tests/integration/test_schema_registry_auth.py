"""A Schema Registry that demands credentials, reached through SR's codec (confluent-kafka's client).

The registry is :class:`~tests.harness.schema_registry.FakeSchemaRegistry`, an in-test HTTP
server implementing the Confluent REST calls the client makes (register, look up, schema by
id) and answering 401 without the expected ``Authorization`` header. The first test runs a
real worker on the session's Kafka, Postgres and S3 with the Confluent wire format; the others
need only the registry (and, for TLS, certificates made here) and run everywhere.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mypy_boto3_s3 import S3Client

from tests.harness.evidence import Boto3Sink, ExampleEvidence
from tests.harness.kafka import produce_raw, read_topic
from tests.harness.probes import wait_for
from tests.harness.schema_registry import FakeSchemaRegistry
from tests.harness.servers import Servers
from tests.harness.sr_env import build_env, make_intent
from tests.harness.workers import WorkerThread
from tests.integration.test_engine_orchestration import row
from worker.adapters.avro import AvroCodec
from worker.core.identity import run_id_of
from worker.core.models import EventType, RunTrigger, TriggerKind
from worker.core.vocabulary import value_subject
from worker.errors import ConfigError, SchemaRegistryError, SchemaRegistryRejectedError
from worker.runtime.compose import make_codec
from worker.settings import Settings

pytestmark = pytest.mark.integration

USER, PASSWORD = "sr-app", "s3cret-Pa55"
BASIC_HEADER = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode("ascii")
SUBJECT = "sr.triggers-value"
TRIGGER = RunTrigger(run_id="0123456789abcdef0123456789abcdef", kind=TriggerKind.REEMIT, reason="registry test",
                     requested_by="alice", requested_at=1_700_000_000_000)


def _codec(registry: FakeSchemaRegistry, **settings: object) -> AvroCodec:
    """SR's own codec as ``sr run`` builds it, pointed at ``registry``."""
    return make_codec(Settings(schema_registry_url=registry.url, **settings))  # type: ignore[arg-type]


@pytest.fixture
def basic_registry() -> Iterator[FakeSchemaRegistry]:
    with FakeSchemaRegistry(basic=(USER, PASSWORD)) as registry:
        yield registry


# ----------------------------------------------------------------------------- end to end
def test_a_worker_speaks_confluent_framing_through_a_basic_auth_registry(
        servers: Servers, pg_dsn: str, s3_client: S3Client, tmp_path: Path, basic_registry: FakeSchemaRegistry) -> None:
    env = build_env(servers, pg_dsn, tmp_path, schema_registry_url=basic_registry.url,
                    schema_registry_basic_auth_user_info=f"{USER}:{PASSWORD}")
    ExampleEvidence(Boto3Sink(s3_client), env.bucket, env.evidence_prefix)("registry-basic")
    intent = make_intent(env, "registry-basic")
    producer_codec = make_codec(env.settings)
    frame = producer_codec.encode_intent(intent, subject=value_subject(env.settings.topics.intents))
    assert frame[0] == 0  # Confluent framing, not single-object
    produce_raw(env, env.settings.topics.intents, [(run_id_of(intent).encode(), frame)])
    worker = WorkerThread(env).start()
    try:
        assert wait_for(lambda: row(env, intent) == ("READY", None), timeout=60), row(env, intent)
    finally:
        worker.stop()
    ready = read_topic(env.settings.kafka_bootstrap, env.settings.topics.ready, until=lambda rs: len(rs) >= 1,
                       timeout=30)
    assert len(ready) == 1 and ready[0].value is not None
    value = ready[0].value
    assert value[0] == 0
    ready_subject = value_subject(env.settings.topics.ready)
    assert struct.unpack(">I", value[1:5])[0] in basic_registry.subjects[ready_subject]
    # A fresh codec (empty caches) fetches the writer schema by id, with the credentials.
    event = make_codec(env.settings).decode_ready(value)
    assert event.event_type is EventType.READY and event.run_id == run_id_of(intent)
    assert basic_registry.requests, "the registry was never asked"
    assert {r.authorization for r in basic_registry.requests} == {BASIC_HEADER}


# ----------------------------------------------------------------------------- credentials
def test_basic_auth_roundtrip_and_wrong_credentials(basic_registry: FakeSchemaRegistry) -> None:
    good = _codec(basic_registry, schema_registry_basic_auth_user_info=f"{USER}:{PASSWORD}")
    frame = good.encode_trigger(TRIGGER, subject=SUBJECT)
    assert frame[0] == 0
    assert _codec(basic_registry, schema_registry_basic_auth_user_info=f"{USER}:{PASSWORD}").decode_trigger(frame) \
        == TRIGGER

    wrong_password = "not-the-Pa55word"
    for credentials in ({"schema_registry_basic_auth_user_info": f"{USER}:{wrong_password}"}, {}):
        bad = _codec(basic_registry, **credentials)
        before = basic_registry.calls
        with pytest.raises(SchemaRegistryRejectedError) as encode_error:
            bad.encode_trigger(TRIGGER, subject="other-value")
        with pytest.raises(SchemaRegistryRejectedError) as decode_error:
            bad.decode_trigger(frame)  # needs the writer schema: the id is new to this codec
        for error in (encode_error.value, decode_error.value):
            message = str(error)
            assert "refused the credentials (HTTP 401)" in message, message
            assert "\n" not in message and wrong_password not in message and PASSWORD not in message
            assert error.code == "SCHEMA_REGISTRY_REJECTED"
        # One request each: a 401 is not retried, and nothing was registered.
        assert basic_registry.calls - before == 2
        assert "other-value" not in basic_registry.subjects


def test_a_bearer_token_reaches_the_registry() -> None:
    with FakeSchemaRegistry(bearer="tok-3f9a") as registry:
        codec = _codec(registry, schema_registry_bearer_token="tok-3f9a")
        frame = codec.encode_trigger(TRIGGER, subject=SUBJECT)
        assert _codec(registry, schema_registry_bearer_token="tok-3f9a").decode_trigger(frame) == TRIGGER
        assert [r.authorization for r in registry.requests] == ["Bearer tok-3f9a", "Bearer tok-3f9a"]
        with pytest.raises(SchemaRegistryRejectedError) as info:
            _codec(registry, schema_registry_bearer_token="tok-wrong").encode_trigger(TRIGGER, subject="x-value")
        assert "HTTP 401" in str(info.value) and "tok-wrong" not in str(info.value)


# ----------------------------------------------------------------------------- auto-register off
def test_without_auto_register_only_registered_schemas_are_used(basic_registry: FakeSchemaRegistry) -> None:
    settings: dict[str, object] = {"schema_registry_basic_auth_user_info": f"{USER}:{PASSWORD}",
                                   "schema_registry_auto_register": False}
    codec = _codec(basic_registry, **settings)
    with pytest.raises(ConfigError) as info:
        codec.encode_trigger(TRIGGER, subject=SUBJECT)
    message = str(info.value)
    assert f"not registered under subject {SUBJECT!r}" in message and "SR_SCHEMA_REGISTRY_AUTO_REGISTER" in message
    assert "\n" not in message
    # It only asked (the read-only lookup); no registering POST reached the server.
    assert basic_registry.seen("POST", f"/subjects/{SUBJECT}/versions") == []
    assert len(basic_registry.seen("POST", f"/subjects/{SUBJECT}")) == 1
    assert basic_registry.subjects == {}

    # Another schema under the subject is not ours either.
    basic_registry.register(SUBJECT, '{"type": "record", "name": "Other", "fields": []}')
    with pytest.raises(ConfigError):
        codec.encode_trigger(TRIGGER, subject=SUBJECT)

    # Once an administrator registers SR's schema, the same codec finds and uses its id.
    schema_id = basic_registry.register(SUBJECT, codec.schema_json("RunTrigger"))
    frame = codec.encode_trigger(TRIGGER, subject=SUBJECT)
    assert struct.unpack(">I", frame[1:5])[0] == schema_id
    assert basic_registry.seen("POST", f"/subjects/{SUBJECT}/versions") == []
    assert _codec(basic_registry, **settings).decode_trigger(frame) == TRIGGER


# ----------------------------------------------------------------------------- TLS
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.subject if issuer is not None else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


def test_a_private_ca_and_a_client_certificate(tmp_path: Path) -> None:
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca = _cert("sr-test-ca", ca_key, None, ca_key, ca=True)
    ca_pem = _write(tmp_path / "ca.pem", ca)
    server_pem = _write(tmp_path / "server.pem", _cert("registry", server_key, ca, ca_key), server_key)
    client_pem = _write(tmp_path / "client.pem", _cert("sr-worker", client_key, ca, ca_key), client_key)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(server_pem, server_pem.with_suffix(".key"))
    server_tls.load_verify_locations(ca_pem)
    server_tls.verify_mode = ssl.CERT_REQUIRED  # mTLS: no client certificate, no request
    with FakeSchemaRegistry(tls=server_tls) as registry:
        assert registry.url.startswith("https://")
        tls = {"schema_registry_ca_location": ca_pem, "schema_registry_certificate_location": client_pem,
               "schema_registry_key_location": client_pem.with_suffix(".key")}
        frame = _codec(registry, **tls).encode_trigger(TRIGGER, subject=SUBJECT)
        assert _codec(registry, **tls).decode_trigger(frame) == TRIGGER
        assert registry.calls == 2

        # Without SR's CA the server's certificate does not verify: permanent, and it says where to look.
        with pytest.raises(SchemaRegistryRejectedError) as info:
            make_codec(Settings(schema_registry_url=registry.url)).encode_trigger(TRIGGER, subject="x-value")
        assert "TLS certificate verification failed" in str(info.value)
        assert "SR_SCHEMA_REGISTRY_CA_LOCATION" in str(info.value)
        # Without a client certificate the server ends the handshake: a typed registry error.
        with pytest.raises(SchemaRegistryError):
            _codec(registry, schema_registry_ca_location=ca_pem, schema_registry_timeout=5).encode_trigger(
                TRIGGER, subject="x-value")
        assert registry.calls == 2  # neither reached the HTTP layer

    # A certificate file that does not exist is a configuration error at start-up, naming the file.
    with pytest.raises(ConfigError) as missing:
        make_codec(Settings(schema_registry_url="https://127.0.0.1:9",
                            schema_registry_certificate_location=tmp_path / "absent.pem"))
    assert "absent.pem" in str(missing.value)
