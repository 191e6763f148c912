"""Avro codec: framing, strictness, hostile input, Confluent registry."""

from __future__ import annotations

import io
import json
import shutil
import struct
from pathlib import Path

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from tests.harness.schema_registry import FakeSchemaRegistry
from worker.adapters.avro import (
    RECORD_NAMES,
    AvroCodec,
    ConfluentSchemaRegistry,
    RegistryConfig,
    SchemaFingerprint,
    SchemaRegistry,
    default_schema_dir,
)
from worker.core.engine import EngineRequest, EngineResult
from worker.core.identity import attempt_id_for
from worker.core.models import (
    ReadyEvent,
    RunStatusEvent,
    RunTrigger,
    StatusEventStatus,
    TriggerKind,
)
from worker.errors import (
    ConfigError,
    DecodeError,
    EncodeError,
    InputError,
    IntentInvalidError,
    MessageTooLargeError,
    SchemaRegistryRejectedError,
    SchemaRegistryUnavailableError,
    UnknownSchemaError,
)

from .conftest import H1, H2, SCHEMAS, engine_request_dict, engine_result_dict, intent_dict, make_intent

RUN = "0123456789abcdef0123456789abcdef"
FINGERPRINTS = {
    "RunIntent": "aac02643562afb30",
    "RunTrigger": "b0a97431ec61f1a1",  # v2 (RETRY); v1 was d291691704416d0e
    "ReadyEvent": "8871b575c801e7ec",
    "RunStatusEvent": "b11a32c6edbcf532",
    "EngineRequest": "4f65df2d56240ead",
    "EngineResult": "44023e755c2af562",
}


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec()


def sample_trigger() -> RunTrigger:
    return RunTrigger(
        run_id=RUN, kind=TriggerKind.REEMIT, reason="ops", requested_by="alice", requested_at=1_700_000_000_000
    )


def sample_ready() -> ReadyEvent:
    return ReadyEvent.from_avro(
        {
            "event_type": "READY",
            "run_id": RUN,
            "facts_view_hash": "c" * 64,
            "facts_view_uri": f"s3://sr-dev/sr/run/{RUN}/facts/{'c' * 64}.json",
            "supersedes_facts_view_hash": None,
            "tenant_id": "t1",
            "namespace": "ns",
            "scenario_id": "scen",
            "pins": {"manifest_fingerprint": H1, "parameter_hash": H2, "seed": -5},
            "policy_rev": "d" * 64,
            "plan_hash": "e" * 64,
            "emitted_at": 1_700_000_000_000,
        }
    )


def sample_status() -> RunStatusEvent:
    return RunStatusEvent(
        run_id=RUN,
        status=StatusEventStatus.REJECTED,
        reason_code="EQUIV_KEY_COLLISION",
        detail="collision",
        tenant_id="t1",
        namespace="ns",
        scenario_id="scen",
        emitted_at=1_700_000_000_000,
    )


def sample_engine_request() -> EngineRequest:
    return EngineRequest.from_avro(engine_request_dict())


def sample_engine_result() -> EngineResult:
    return EngineResult.from_avro(engine_result_dict())


def test_default_schema_dir_is_repo_schemas() -> None:
    assert default_schema_dir().resolve() == SCHEMAS.resolve()


def test_fingerprints_pinned(codec: AvroCodec) -> None:
    for name in RECORD_NAMES:
        assert codec.fingerprint(name).hex() == FINGERPRINTS[name]
        schema = json.loads(codec.schema_json(name))
        assert schema["namespace"] == "sr.v1"


def test_fingerprint_matches_avro_spec_example() -> None:
    # Known CRC-64-AVRO of the primitive schema "int" (Avro spec / Java reference).
    pcf = fastavro.schema.to_parsing_canonical_form("int")
    assert (
        int.from_bytes(bytes.fromhex(fastavro.schema.fingerprint(pcf, "CRC-64-AVRO")), "little") == 0x7275D51A3F395C8F
    )


def test_roundtrips(codec: AvroCodec) -> None:
    intent = make_intent(deadline=1_800_000_000_000)
    frame = codec.encode_intent(intent)
    assert frame[:2] == b"\xc3\x01" and frame[2:10].hex() == FINGERPRINTS["RunIntent"]
    assert codec.decode_intent(frame) == intent
    assert codec.decode(frame) == ("RunIntent", intent.to_avro())
    assert codec.decode_trigger(codec.encode_trigger(sample_trigger())) == sample_trigger()
    assert codec.decode_ready(codec.encode_ready(sample_ready())) == sample_ready()
    assert codec.decode_status(codec.encode_status(sample_status())) == sample_status()


def test_engine_roundtrips(codec: AvroCodec) -> None:
    request = codec.encode_engine_request(sample_engine_request())
    assert request[:2] == b"\xc3\x01" and request[2:10].hex() == FINGERPRINTS["EngineRequest"]
    assert codec.decode_engine_request(request) == sample_engine_request()
    assert codec.decode(request) == ("EngineRequest", engine_request_dict())
    assert codec.encode_engine_request(sample_engine_request()) == request  # a re-send is byte-identical
    result = codec.encode_engine_result(sample_engine_result())
    assert result[:2] == b"\xc3\x01" and result[2:10].hex() == FINGERPRINTS["EngineResult"]
    assert codec.decode_engine_result(result) == sample_engine_result()
    assert codec.decode(result) == ("EngineResult", engine_result_dict())
    failed = EngineResult.from_avro(engine_result_dict(status="FAILED", detail="exit 3"))
    assert codec.decode_engine_result(codec.encode_engine_result(failed)).status.value == "FAILED"


def test_engine_records_decode_only_as_themselves(codec: AvroCodec) -> None:
    request, result = codec.encode_engine_request(sample_engine_request()), codec.encode_engine_result(
        sample_engine_result())
    with pytest.raises(DecodeError, match="expected a EngineResult message, got EngineRequest"):
        codec.decode_engine_result(request)
    with pytest.raises(DecodeError, match="expected a EngineRequest message, got EngineResult"):
        codec.decode_engine_request(result)
    with pytest.raises(DecodeError):
        codec.decode_intent(result)
    with pytest.raises(DecodeError):
        codec.decode_engine_result(codec.encode_trigger(sample_trigger()))


def test_semantically_invalid_engine_records_are_decode_errors(codec: AvroCodec) -> None:
    wrong_attempt = codec.encode("EngineRequest", engine_request_dict(attempt_id=attempt_id_for(RUN, 2)))
    with pytest.raises(DecodeError, match="attempt_id does not match"):
        codec.decode_engine_request(wrong_attempt)
    for bad in ({"attempt_id": "x"}, {"run_id": "../etc"}, {"reported_by": ""}, {"finished_at": -(2**62)}):
        frame = codec.encode("EngineResult", engine_result_dict(**bad))
        with pytest.raises(DecodeError, match="invalid EngineResult"):
            codec.decode_engine_result(frame)
    with pytest.raises(EncodeError):
        codec.encode("EngineResult", engine_result_dict(status="RUNNING"))
    with pytest.raises(EncodeError):
        codec.encode("EngineRequest", engine_request_dict(attempt_no=2**31))  # an Avro int


def test_engine_frames_truncated_trailing_and_bad_enum(codec: AvroCodec) -> None:
    for frame in (codec.encode_engine_request(sample_engine_request()),
                  codec.encode_engine_result(sample_engine_result())):
        for cut in range(10, len(frame)):
            with pytest.raises(DecodeError):
                codec.decode(frame[:cut])
        with pytest.raises(DecodeError, match="trailing"):
            codec.decode(frame + b"\x00")
    header = b"\xc3\x01" + codec.fingerprint("EngineResult")
    # attempt_id and run_id (32 chars each), then enum index 2 (zigzag 4): no third symbol.
    body = b"\x40" + b"a" * 32 + b"\x40" + b"b" * 32 + b"\x04" + b"\x00" + b"\x02e" + b"\x02"
    with pytest.raises(DecodeError):
        codec.decode(header + body)


@given(st.data())
def test_engine_result_bit_flips_never_crash(data: st.DataObject) -> None:
    frame = bytearray(_SHARED.encode_engine_result(sample_engine_result()))
    position = data.draw(st.integers(0, len(frame) - 1))
    frame[position] ^= data.draw(st.integers(1, 255))
    try:
        _SHARED.decode_engine_result(bytes(frame))
    except InputError:
        pass


def test_encoding_is_deterministic(codec: AvroCodec) -> None:
    assert codec.encode_ready(sample_ready()) == codec.encode_ready(sample_ready())


def test_samples_encode(codec: AvroCodec) -> None:
    for name in ("complete", "waiting", "tampered", "collision", "invoke"):
        data = json.loads((SCHEMAS / "samples" / f"{name}.json").read_text())
        assert codec.decode(codec.encode("RunIntent", data), expected="RunIntent")[1] == data


def test_expected_mismatch(codec: AvroCodec) -> None:
    frame = codec.encode_trigger(sample_trigger())
    with pytest.raises(DecodeError, match="expected a RunIntent"):
        codec.decode(frame, expected="RunIntent")
    with pytest.raises(DecodeError):
        codec.decode_intent(frame)
    with pytest.raises(DecodeError):
        codec.decode(frame, expected="Nope")


def test_semantically_invalid_intent(codec: AvroCodec) -> None:
    frame = codec.encode("RunIntent", intent_dict(tenant_id="../etc"))
    with pytest.raises(IntentInvalidError):
        codec.decode_intent(frame)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc3",
        b"\xc3\x01",
        b"\xc3\x01\xaa\xc0\x26\x43\x56\x2a\xfb",  # truncated fingerprint
        b"\xc3\x02" + bytes(8),
        b"\x01garbage",
        b"{json}",
    ],
)
def test_bad_frames(codec: AvroCodec, data: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.decode(data)


def test_unknown_fingerprint(codec: AvroCodec) -> None:
    with pytest.raises(UnknownSchemaError):
        codec.decode(b"\xc3\x01" + bytes(8) + b"\x00")
    with pytest.raises(UnknownSchemaError):
        codec.decode(b"\x00\x00\x00\x00\x01\x00")  # Confluent frame without a registry


def test_truncated_and_trailing(codec: AvroCodec) -> None:
    frame = codec.encode_intent(make_intent())
    for cut in range(10, len(frame)):
        with pytest.raises(DecodeError):
            codec.decode(frame[:cut])
    with pytest.raises(DecodeError, match="trailing"):
        codec.decode(frame + b"\x00")


def test_bad_utf8_and_enum_index(codec: AvroCodec) -> None:
    header = b"\xc3\x01" + codec.fingerprint("RunTrigger")
    body = b"\x40" + b"a" * 32 + b"\x00" + b"\x04\xff\xfe" + b"\x02a" + b"\x02"
    with pytest.raises(DecodeError):
        codec.decode(header + body)  # invalid UTF-8 in reason
    bad_enum = b"\x40" + b"a" * 32 + b"\x7e" + b"\x00\x02a\x02"
    with pytest.raises(DecodeError):
        codec.decode(header + bad_enum)


def test_huge_array_count(codec: AvroCodec) -> None:
    writer = io.BytesIO()
    fastavro.schemaless_writer(writer, fastavro.parse_schema({"type": "long"}), 2**60)
    header = b"\xc3\x01" + codec.fingerprint("RunIntent")
    # request_id null, three short strings, pins, two timestamps, then a 2^60-item array.
    body = b"\x00" + b"\x02a" * 3 + b"\x80\x01" + b"a" * 64 + b"\x80\x01" + b"b" * 64 + b"\x02" + b"\x02\x04"
    with pytest.raises(DecodeError):
        codec.decode(header + body + writer.getvalue() + b"\x02a")


def test_oversize_before_parsing() -> None:
    small = AvroCodec(max_message_bytes=64)
    with pytest.raises(MessageTooLargeError):
        small.decode(b"\xc3\x01" + bytes(100))
    with pytest.raises(MessageTooLargeError):
        small.encode_intent(make_intent())
    with pytest.raises(ConfigError):
        AvroCodec(max_message_bytes=1)


def test_non_bytes(codec: AvroCodec) -> None:
    with pytest.raises(DecodeError):
        codec.decode("text")  # type: ignore[arg-type]
    # A bytearray is outside the declared type but accepted: that is what this line checks.
    assert codec.decode(bytearray(codec.encode_trigger(sample_trigger())))[0] == "RunTrigger"  # type: ignore[arg-type]


def test_encode_rejects_bad_datum(codec: AvroCodec) -> None:
    with pytest.raises(EncodeError):
        codec.encode("RunIntent", {"tenant_id": "x"})
    with pytest.raises(EncodeError):
        codec.encode("RunIntent", intent_dict(window_start="yesterday"))
    with pytest.raises(EncodeError):
        codec.encode("Nope", {})


def test_bad_schema_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        AvroCodec(tmp_path)
    for name in RECORD_NAMES:
        shutil.copy(SCHEMAS / f"{name}.avsc", tmp_path)
    (tmp_path / "RunTrigger.avsc").write_text("{not json")
    with pytest.raises(ConfigError):
        AvroCodec(tmp_path)
    (tmp_path / "RunTrigger.avsc").write_text(json.dumps({"type": "record", "name": "Other", "fields": []}))
    with pytest.raises(ConfigError):
        AvroCodec(tmp_path)


@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    codec = _SHARED
    try:
        codec.decode(data)
    except InputError:
        pass


@given(st.binary(max_size=200), st.sampled_from(RECORD_NAMES))
def test_random_bodies_with_valid_header(body: bytes, record: str) -> None:
    codec = _SHARED
    try:
        name, datum = codec.decode(b"\xc3\x01" + codec.fingerprint(record) + body)
    except InputError:
        return
    assert name == record and isinstance(datum, dict)


@given(st.binary(max_size=200), st.sampled_from([f for f in AvroCodec().fingerprints() if not f.current]))
def test_random_bodies_under_an_older_version_resolve_or_fail_typed(body: bytes, old: SchemaFingerprint) -> None:
    # Schema resolution (an older writer into the current reader) is a second parser path.
    try:
        name, datum = _SHARED.decode(b"\xc3\x01" + bytes.fromhex(old.hex) + body)
    except InputError:
        return
    assert name == old.record and isinstance(datum, dict)


@given(st.data())
def test_bit_flips_never_crash(data: st.DataObject) -> None:
    frame = bytearray(_SHARED.encode_intent(make_intent()))
    position = data.draw(st.integers(0, len(frame) - 1))
    frame[position] ^= data.draw(st.integers(1, 255))
    try:
        _SHARED.decode_intent(bytes(frame))
    except InputError:
        pass


_SHARED = AvroCodec()


# ----------------------------------------------------------------------- Confluent registry
def test_registry_protocol(registry: tuple[ConfluentSchemaRegistry, FakeSchemaRegistry]) -> None:
    assert isinstance(registry[0], SchemaRegistry)


def test_confluent_roundtrip(registry: tuple[ConfluentSchemaRegistry, FakeSchemaRegistry]) -> None:
    client, state = registry
    producer = AvroCodec(registry=client)
    frame = producer.encode_ready(sample_ready(), subject="sr.ready-value")
    assert frame[0] == 0
    schema_id = struct.unpack(">I", frame[1:5])[0]
    assert state.subjects == {"sr.ready-value": [schema_id]}
    calls = state.calls
    producer.encode_ready(sample_ready(), subject="sr.ready-value")
    assert state.calls == calls  # id cached
    consumer = AvroCodec(registry=client)  # fresh cache: must fetch the schema by id
    assert consumer.decode_ready(frame) == sample_ready()
    assert consumer.decode_ready(frame) == sample_ready()
    # Single-object frames are still accepted by a registry-configured codec.
    assert consumer.decode_ready(_SHARED.encode_ready(sample_ready())) == sample_ready()
    with pytest.raises(DecodeError):
        consumer.decode(frame, expected="RunIntent")
    with pytest.raises(DecodeError):
        consumer.decode(frame[:3])
    with pytest.raises(DecodeError):
        consumer.decode(frame + b"\x01")


def test_confluent_engine_roundtrip(registry: tuple[ConfluentSchemaRegistry, FakeSchemaRegistry]) -> None:
    client, state = registry
    producer = AvroCodec(registry=client)
    request = producer.encode_engine_request(sample_engine_request(), subject="sr.engine-requests-value")
    result = producer.encode_engine_result(sample_engine_result(), subject="sr.engine-results-value")
    assert request[0] == 0 and result[0] == 0
    assert set(state.subjects) == {"sr.engine-requests-value", "sr.engine-results-value"}
    consumer = AvroCodec(registry=client)  # fresh cache: fetches both schemas by id
    assert consumer.decode_engine_request(request) == sample_engine_request()
    assert consumer.decode_engine_result(result) == sample_engine_result()
    assert consumer.decode_engine_result(_SHARED.encode_engine_result(sample_engine_result())) == sample_engine_result()
    with pytest.raises(DecodeError):
        consumer.decode_engine_result(request)
    with pytest.raises(DecodeError):
        consumer.decode(result[:4])
    with pytest.raises(DecodeError):
        consumer.decode(result + b"\x01")
    with pytest.raises(ConfigError):
        producer.encode_engine_request(sample_engine_request())  # no subject


def test_confluent_evolved_engine_result(registry: tuple[ConfluentSchemaRegistry, FakeSchemaRegistry]) -> None:
    client, state = registry
    # A newer engine added an optional field: SR resolves it into its own reader schema.
    evolved = json.loads((SCHEMAS / "EngineResult.avsc").read_text())
    evolved["fields"].append({"name": "log_uri", "type": ["null", "string"], "default": None})
    schema_id = state.register("sr.engine-results-value", json.dumps(evolved))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(evolved),
                               {**sample_engine_result().to_avro(), "log_uri": "s3://logs/1"})
    frame = b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()
    assert AvroCodec(registry=client).decode_engine_result(frame) == sample_engine_result()


def test_confluent_needs_subject(registry: tuple[ConfluentSchemaRegistry, FakeSchemaRegistry]) -> None:
    with pytest.raises(ConfigError):
        AvroCodec(registry=registry[0]).encode_status(sample_status())


def test_confluent_unknown_id(registry: tuple[ConfluentSchemaRegistry, FakeSchemaRegistry]) -> None:
    codec = AvroCodec(registry=registry[0])
    with pytest.raises(UnknownSchemaError):
        codec.decode(b"\x00\x00\x00\x30\x39\x00")


def test_confluent_foreign_schema(registry: tuple[ConfluentSchemaRegistry, FakeSchemaRegistry]) -> None:
    client, state = registry
    foreign = state.register("other-value", json.dumps({"type": "record", "name": "Foo", "fields": []}))
    broken = state.register("x-value", '{"type": "record", "name": "sr.v1.RunIntent", "fields": [{"name": "a"}]}')
    codec = AvroCodec(registry=client)
    for schema_id in (foreign, broken):
        with pytest.raises(UnknownSchemaError):
            codec.decode(b"\x00" + schema_id.to_bytes(4, "big") + b"\x00")
    assert state.schemas


def test_confluent_evolved_writer_schema(registry: tuple[ConfluentSchemaRegistry, FakeSchemaRegistry]) -> None:
    client, state = registry
    # A newer producer added an optional field: we resolve it into our reader schema.
    evolved = json.loads((SCHEMAS / "RunTrigger.avsc").read_text())
    evolved["fields"].append({"name": "ticket", "type": ["null", "string"], "default": None})
    schema_id = state.register("sr.triggers-value", json.dumps(evolved))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(evolved), {**sample_trigger().to_avro(), "ticket": "T-1"})
    frame = b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()
    assert AvroCodec(registry=client).decode_trigger(frame) == sample_trigger()


def test_registry_errors(registry: tuple[ConfluentSchemaRegistry, FakeSchemaRegistry]) -> None:
    client, state = registry
    state.fail_next = 1
    with pytest.raises(SchemaRegistryUnavailableError):
        client.schema_id_for("s-value", '"string"')
    with pytest.raises(SchemaRegistryRejectedError):
        client.schema_id_for("s-value", '{"type": "string", "doc": "Incompatible"}')
    with pytest.raises(UnknownSchemaError):
        client.get_schema(999)
    assert client.schema_id_for("s-value", '"string"') == client.schema_id_for("t-value", '"string"')


def test_registry_unreachable_and_config() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ConfluentSchemaRegistry(RegistryConfig(f"http://127.0.0.1:{port}", timeout=2, max_retries=0,
                                                    basic_auth_user_info=SecretStr("user:secret")))
    assert "secret" not in repr(client)
    with pytest.raises(SchemaRegistryUnavailableError) as info:
        client.get_schema(1)
    assert "secret" not in str(info.value)
    for bad in ("file:///etc/passwd", "ftp://x", "http://", "registry:8081"):
        with pytest.raises(ConfigError):
            ConfluentSchemaRegistry(RegistryConfig(bad))
