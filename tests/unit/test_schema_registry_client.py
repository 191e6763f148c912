"""SR's Schema Registry adapter on confluent-kafka's client: configuration, error translation,
retries, auto-register off, settings — against the in-process stand-in registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.harness.schema_registry import FakeSchemaRegistry
from worker.adapters.avro import AvroCodec, ConfluentSchemaRegistry, RegistryConfig, SchemaRegistry
from worker.adapters.avro.registry import client_config
from worker.core.models import RunTrigger, TriggerKind
from worker.errors import (
    ConfigError,
    PermanentError,
    RetryableError,
    SchemaRegistryRejectedError,
    SchemaRegistryUnavailableError,
    UnknownSchemaError,
)
from worker.runtime.compose import make_codec
from worker.settings import Settings, load_settings

SECRET = "hunter2-Secret"
SCHEMA = '{"type": "record", "name": "sr.v1.Probe", "fields": [{"name": "a", "type": "long"}]}'


@pytest.fixture
def fake() -> Iterator[FakeSchemaRegistry]:
    with FakeSchemaRegistry() as registry:
        yield registry


def _client(fake: FakeSchemaRegistry, **changes: Any) -> ConfluentSchemaRegistry:
    """No retries unless asked, millisecond waits: the tests count requests."""
    options: dict[str, Any] = {"max_retries": 0, "retry_wait": 0.001, "retry_max_wait": 0.002, "timeout": 5.0}
    options.update(changes)
    return ConfluentSchemaRegistry(RegistryConfig(fake.url, **options))


# ----------------------------------------------------------------------------- configuration
def test_client_config_carries_every_setting(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "client.pem", "client.key"))
    for path in (ca, cert, key):
        path.write_text("-")
    conf = client_config(RegistryConfig(
        "https://a.example:8081, https://b.example:8081/", basic_auth_user_info=SecretStr(f"app:{SECRET}"),
        ca_location=ca, certificate_location=cert, key_location=key, key_password=SecretStr(SECRET),
        timeout=2.5, max_retries=4, retry_wait=0.25, retry_max_wait=3.0))
    assert conf == {
        "url": "https://a.example:8081,https://b.example:8081/",
        "basic.auth.user.info": f"app:{SECRET}",
        "ssl.ca.location": str(ca), "ssl.certificate.location": str(cert), "ssl.key.location": str(key),
        "ssl.key.password": SECRET, "timeout": 2.5, "max.retries": 4, "retries.wait.ms": 250,
        "retries.max.wait.ms": 3000,
    }
    bearer = client_config(RegistryConfig("http://r:8081", bearer_token=SecretStr("tok"),
                                          bearer_logical_cluster="lsrc-123"))
    assert {k: v for k, v in bearer.items() if k.startswith("bearer.")} == {
        "bearer.auth.credentials.source": "STATIC_TOKEN", "bearer.auth.token": "tok",
        "bearer.auth.logical.cluster": "lsrc-123"}
    assert "basic.auth.user.info" not in bearer


@pytest.mark.parametrize(("changes", "expected"), [
    ({"url": f"http://app:{SECRET}@registry:8081"}, "must not carry credentials"),
    ({"url": "registry:8081"}, "must be http(s)://"),
    ({"url": "http://ok:8081,ftp://x"}, "must be http(s)://"),
    ({"basic_auth_user_info": SecretStr(f"app:{SECRET}"), "bearer_token": SecretStr(SECRET)}, "choose one"),
    ({"basic_auth_user_info": SecretStr(SECRET)}, "must be <user>:<password>"),
    ({"bearer_token": SecretStr("  ")}, "BEARER_TOKEN is empty"),
    ({"bearer_logical_cluster": "lsrc-1"}, "needs SR_SCHEMA_REGISTRY_BEARER_TOKEN"),
    ({"key_password": SecretStr(SECRET)}, "need SR_SCHEMA_REGISTRY_CERTIFICATE_LOCATION"),
    ({"ca_location": Path("/nonexistent/ca.pem")}, "SR_SCHEMA_REGISTRY_CA_LOCATION: /nonexistent/ca.pem"),
    ({"timeout": 0.0}, "SR_SCHEMA_REGISTRY_TIMEOUT"),
    ({"max_retries": -1}, "must be >= 0"),
])
def test_contradictory_settings_are_config_errors(changes: dict[str, Any], expected: str) -> None:
    config: dict[str, Any] = {"url": "http://registry:8081", **changes}
    with pytest.raises(ConfigError) as info:
        ConfluentSchemaRegistry(RegistryConfig(**config))
    message = str(info.value)
    assert expected in message and SECRET not in message and "\n" not in message, message


def test_a_bad_pem_file_is_a_config_error(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as info:
        ConfluentSchemaRegistry(RegistryConfig("https://registry:8081", certificate_location=cert,
                                               key_password=SecretStr(SECRET)))
    assert "TLS files cannot be loaded" in str(info.value) and SECRET not in str(info.value)


def test_construction_sends_nothing_and_hides_credentials(fake: FakeSchemaRegistry) -> None:
    client = _client(fake, basic_auth_user_info=SecretStr(f"app:{SECRET}"))
    codec = make_codec(Settings(schema_registry_url=fake.url, schema_registry_bearer_token=SecretStr(SECRET)))
    assert fake.calls == 0
    assert isinstance(client, SchemaRegistry)
    assert repr(client) == "ConfluentSchemaRegistry(hosts=['127.0.0.1'], auth='basic', auto_register=True)"
    assert SECRET not in repr(client) and SECRET not in repr(codec)
    client.close()
    client.close()  # idempotent


# ----------------------------------------------------------------------------- settings
def test_registry_settings_from_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{SECRET}\n")
    settings = load_settings(None, {
        "SR_SCHEMA_REGISTRY_URL": "https://registry:8081",
        "SR_SCHEMA_REGISTRY_BEARER_TOKEN_FILE": str(token_file),
        "SR_SCHEMA_REGISTRY_TIMEOUT": "2.5",
        "SR_SCHEMA_REGISTRY_AUTO_REGISTER": "false",
    })
    assert settings.schema_registry_bearer_token is not None
    assert settings.schema_registry_bearer_token.get_secret_value() == SECRET
    assert settings.schema_registry_timeout == 2.5 and settings.schema_registry_auto_register is False
    assert SECRET not in repr(settings)
    assert Settings().schema_registry_auto_register is True  # the dev stack registers its own schemas


def test_registry_credentials_without_a_url_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"SR_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": f"app:{SECRET}"})
    message = str(info.value)
    assert "SR_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO set but SR_SCHEMA_REGISTRY_URL is not" in message
    assert SECRET not in message


# ----------------------------------------------------------------------------- error translation
def test_a_503_is_retried_by_the_client_then_succeeds(fake: FakeSchemaRegistry) -> None:
    fake.fail_next = 1
    assert _client(fake, max_retries=1).schema_id_for("s-value", SCHEMA) == 1
    assert fake.calls == 2


@pytest.mark.parametrize("status", [503, 500, 429, 408])
def test_server_trouble_is_retryable(fake: FakeSchemaRegistry, status: int) -> None:
    fake.raw_next = [(status, b'{"error_code": 1, "message": "busy"}')] * 2
    with pytest.raises(SchemaRegistryUnavailableError) as info:
        _client(fake, max_retries=1).get_schema(7)
    assert isinstance(info.value, RetryableError) and f"HTTP {status}" in str(info.value)
    assert fake.calls == 2  # the first try and one retry


def test_an_unreachable_registry_is_retryable() -> None:
    with FakeSchemaRegistry() as gone:
        url = gone.url
    client = ConfluentSchemaRegistry(RegistryConfig(url, basic_auth_user_info=SecretStr(f"app:{SECRET}"),
                                                    max_retries=0, timeout=2))
    with pytest.raises(SchemaRegistryUnavailableError) as info:
        client.schema_id_for("s-value", SCHEMA)
    assert "unreachable" in str(info.value) and SECRET not in str(info.value)


def test_an_incompatible_schema_is_permanent_with_the_registry_reason(fake: FakeSchemaRegistry) -> None:
    with pytest.raises(SchemaRegistryRejectedError) as info:
        _client(fake, max_retries=3).schema_id_for("s-value", '{"type": "string", "doc": "Incompatible"}')
    assert isinstance(info.value, PermanentError)
    assert "HTTP 409, registry code 409: Schema being registered is incompatible" in str(info.value)
    assert fake.calls == 1  # a 4xx is not retried


@pytest.mark.parametrize(("answer", "call"), [
    ((200, b"not json"), "get"),
    ((200, b"[1, 2]"), "get"),
    ((200, b'{"schema": 5}'), "get"),
    ((200, b'{"id": "seven"}'), "register"),
    ((200, b'{"id": -1}'), "register"),
    ((200, b"{}"), "register"),
    ((404, b'{"error_code": 404, "message": "no such path"}'), "register"),
])
def test_unusable_answers_are_permanent(fake: FakeSchemaRegistry, answer: tuple[int, bytes], call: str) -> None:
    fake.raw_next = [answer]
    client = _client(fake)
    with pytest.raises(SchemaRegistryRejectedError):
        if call == "get":
            client.get_schema(3)
        else:
            client.schema_id_for("s-value", SCHEMA)


def test_unknown_and_non_avro_ids_are_unknown_schemas(fake: FakeSchemaRegistry) -> None:
    client = _client(fake)
    with pytest.raises(UnknownSchemaError, match="does not know schema id 41"):
        client.get_schema(41)
    proto = fake.register("p-value", 'syntax = "proto3"; message M {}')
    fake.types[proto] = "PROTOBUF"
    with pytest.raises(UnknownSchemaError, match="is a PROTOBUF schema, not Avro"):
        client.get_schema(proto)


def test_schemas_by_id_are_cached_by_the_client(fake: FakeSchemaRegistry) -> None:
    schema_id = fake.register("s-value", SCHEMA)
    client = _client(fake)
    assert client.get_schema(schema_id) == SCHEMA
    assert client.get_schema(schema_id) == SCHEMA
    assert fake.calls == 1


# ----------------------------------------------------------------------------- auto-register off
def test_lookup_only_finds_registered_schemas_and_never_registers(fake: FakeSchemaRegistry) -> None:
    client = _client(fake, auto_register=False)
    assert client.auto_register is False
    with pytest.raises(ConfigError, match="not registered under subject 's-value'"):
        client.schema_id_for("s-value", SCHEMA)  # no such subject (40401)
    other = fake.register("s-value", '"string"')
    with pytest.raises(ConfigError, match="SR_SCHEMA_REGISTRY_AUTO_REGISTER is false"):
        client.schema_id_for("s-value", SCHEMA)  # subject without this schema (40403)
    wanted = fake.register("s-value", SCHEMA)
    assert wanted != other
    # The registry may hold the text re-spaced: the lookup compares schemas, not bytes.
    assert client.schema_id_for("s-value", json.dumps(json.loads(SCHEMA), indent=2)) == wanted
    assert fake.seen("POST", "/subjects/s-value/versions") == []
    assert len(fake.seen("POST", "/subjects/s-value")) == 3


def test_a_codec_with_lookup_only_encodes_once_an_admin_registered(fake: FakeSchemaRegistry) -> None:
    codec = AvroCodec(registry=_client(fake, auto_register=False))
    trigger = RunTrigger(run_id="0" * 32, kind=TriggerKind.REEMIT, reason="r", requested_by="alice",
                         requested_at=1_700_000_000_000)
    with pytest.raises(ConfigError, match=r"'sr\.triggers-value'"):
        codec.encode_trigger(trigger, subject="sr.triggers-value")
    schema_id = fake.register("sr.triggers-value", codec.schema_json("RunTrigger"))
    frame = codec.encode_trigger(trigger, subject="sr.triggers-value")
    assert frame[:5] == b"\x00" + schema_id.to_bytes(4, "big")
    assert AvroCodec(registry=_client(fake)).decode_trigger(frame) == trigger
    assert fake.seen("POST", "/subjects/sr.triggers-value/versions") == []
