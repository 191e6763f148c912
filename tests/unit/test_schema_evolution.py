"""Schema evolution (contract §2): earlier versions in ``schemas/history/`` decode into the current
schema in both framings, every version is BACKWARD compatible with the one before it (the rule
Schema Registry's BACKWARD mode applies, checked with the official ``avro`` package's checker),
and the codec refuses a history it could not use."""

from __future__ import annotations

import io
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from tests.harness.official_avro import avro_encode, avro_schema, with_datetimes
from tests.harness.schema_registry import FakeSchemaRegistry
from worker.adapters.avro import RECORD_NAMES, AvroCodec, ConfluentSchemaRegistry, default_schema_dir
from worker.adapters.avro.codec import HISTORY_DIR
from worker.core.identity import run_id_of
from worker.core.models import EventType, ReadyEvent, RunIntent, Strategy
from worker.errors import ConfigError

from .conftest import H1, H2, intent_dict

HISTORY = default_schema_dir() / HISTORY_DIR


def versions(record: str) -> list[Path]:
    """Every version of ``record``, oldest first, the current file last."""
    return [*sorted(HISTORY.glob(f"{record}.v*.avsc")), default_schema_dir() / f"{record}.avsc"]


def backward_compatible(new: str, old: str) -> bool:
    """Can a reader with schema ``new`` read data written with ``old``?"""
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(avro.schema.parse(new), avro.schema.parse(old))
    return result.compatibility is SchemaCompatibilityType.compatible


def v1_body(record: str, datum: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    parsed = fastavro.parse_schema(json.loads((HISTORY / f"{record}.v1.avsc").read_text()))
    fastavro.schemaless_writer(out, parsed, datum)
    return out.getvalue()


def v1_intent_datum() -> dict[str, Any]:
    datum = RunIntent.from_avro(intent_dict()).to_avro()
    del datum["strategy"]
    return datum


def ready_datum(event_type: str = "READY") -> dict[str, Any]:
    run = "a" * 32
    return {"event_type": event_type, "run_id": run, "facts_view_hash": "c" * 64,
            "facts_view_uri": f"s3://sr-dev/sr/run/{run}/facts/{'c' * 64}.json", "supersedes_facts_view_hash": None,
            "tenant_id": "t", "namespace": "n", "scenario_id": "s",
            "pins": {"manifest_fingerprint": H1, "parameter_hash": H2, "seed": 1},
            "policy_rev": "d" * 64, "plan_hash": "e" * 64, "emitted_at": 1_700_000_000_000}


def test_the_history_holds_the_evolutions_so_far() -> None:
    codec = AvroCodec()
    current = {r.record: r.version for r in codec.fingerprints() if r.current}
    assert current == {"RunIntent": 2, "RunTrigger": 2, "ReadyEvent": 2, "RunStatusEvent": 1,
                       "EngineRequest": 1, "EngineResult": 1}
    for record in RECORD_NAMES:
        assert len(versions(record)) == current[record]


@pytest.mark.parametrize("record", RECORD_NAMES)
def test_every_version_is_backward_compatible_with_the_one_before(record: str) -> None:
    texts = [p.read_text() for p in versions(record)]
    for older, newer in itertools.pairwise(texts):
        assert backward_compatible(newer, older)


def test_the_compatibility_check_can_fail() -> None:
    base = json.loads((default_schema_dir() / "ReadyEvent.avsc").read_text())
    dropped = json.loads(json.dumps(base))
    dropped["fields"][0]["type"]["symbols"].remove("REVOKED")
    required = json.loads(json.dumps(base))
    required["fields"].append({"name": "ticket", "type": "string"})
    retyped = json.loads(json.dumps(base))
    retyped["fields"][1]["type"] = "long"
    assert not backward_compatible(json.dumps(dropped), json.dumps(base))  # a writer symbol the reader lacks
    assert not backward_compatible(json.dumps(required), json.dumps(base))  # a new field with no default
    assert not backward_compatible(json.dumps(retyped), json.dumps(base))
    assert backward_compatible(json.dumps(base), json.dumps(dropped))


def test_an_intent_of_the_previous_version_is_the_same_run() -> None:
    codec = AvroCodec()
    v1 = next(r for r in codec.fingerprints() if r.record == "RunIntent" and r.version == 1 and r.variant == "spec")
    frame = b"\xc3\x01" + bytes.fromhex(v1.hex) + v1_body("RunIntent", v1_intent_datum())
    decoded = codec.decode_intent(frame)
    current = RunIntent.from_avro(intent_dict(strategy="AUTO"))
    assert decoded.strategy is Strategy.AUTO
    assert decoded == current and run_id_of(decoded) == run_id_of(current)
    # The official avro library writing version 1 (its own fingerprint variant of it) is accepted too.
    theirs = avro_encode(avro_schema("RunIntent", HISTORY / "RunIntent.v1.avsc"), with_datetimes(v1_intent_datum()))
    assert theirs[2:10] != frame[2:10]
    assert codec.decode_intent(theirs) == current


def test_srs_encoder_writes_the_current_schema() -> None:
    codec = AvroCodec()
    ready = ReadyEvent.from_avro(ready_datum())
    frame = codec.encode_ready(ready)
    spec_current = {r.hex for r in codec.fingerprints()
                    if r.record == "ReadyEvent" and r.current and r.variant == "spec"}
    assert {frame[2:10].hex()} == spec_current
    assert codec.decode_ready(frame) == ready
    revoked = ReadyEvent.from_avro(ready_datum("REVOKED"))
    assert codec.decode_ready(codec.encode_ready(revoked)).event_type is EventType.REVOKED


def test_a_ready_event_of_version_1_decodes_and_an_old_reader_refuses_revoked() -> None:
    codec = AvroCodec()
    v1 = next(r for r in codec.fingerprints() if r.record == "ReadyEvent" and r.version == 1 and r.variant == "spec")
    frame = b"\xc3\x01" + bytes.fromhex(v1.hex) + v1_body("ReadyEvent", ready_datum())
    assert codec.decode_ready(frame) == ReadyEvent.from_avro(ready_datum())
    # A consumer still on version 1 that resolves SR's version-2 frames reads READY unchanged,
    # and fails on REVOKED rather than reading it as something else (no enum default).
    old_reader = fastavro.parse_schema(json.loads((HISTORY / "ReadyEvent.v1.avsc").read_text()))
    current = fastavro.parse_schema(json.loads((default_schema_dir() / "ReadyEvent.avsc").read_text()))
    for event_type, readable in (("READY", True), ("SUPERSEDE", True), ("REVOKED", False)):
        datum = ready_datum(event_type)
        if event_type == "SUPERSEDE":
            datum["supersedes_facts_view_hash"] = "f" * 64
        body = codec.encode("ReadyEvent", ReadyEvent.from_avro(datum).to_avro())[10:]
        if readable:
            got = fastavro.schemaless_reader(io.BytesIO(body), current, old_reader)
            assert isinstance(got, dict) and got["event_type"] == event_type
        else:
            with pytest.raises(fastavro.read.SchemaResolutionError):
                fastavro.schemaless_reader(io.BytesIO(body), current, old_reader)


def test_a_previous_version_in_confluent_framing(registry: tuple[ConfluentSchemaRegistry, FakeSchemaRegistry]) -> None:
    client, state = registry
    schema_id = state.register("sr.run-intents-value", (HISTORY / "RunIntent.v1.avsc").read_text())
    frame = b"\x00" + schema_id.to_bytes(4, "big") + v1_body("RunIntent", v1_intent_datum())
    decoded = AvroCodec(registry=client).decode_intent(frame)
    assert decoded == RunIntent.from_avro(intent_dict(strategy="AUTO"))


def _copy_schemas(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(default_schema_dir(), target, ignore=shutil.ignore_patterns("samples", "*.toml", "*.md"))
    return target


@pytest.mark.parametrize("damage", ["gap", "bad-name", "same-as-current", "other-record"])
def test_a_history_the_codec_cannot_use_is_a_config_error(tmp_path: Path, damage: str) -> None:
    directory = _copy_schemas(tmp_path)
    history = directory / HISTORY_DIR
    if damage == "gap":
        (history / "RunIntent.v1.avsc").rename(history / "RunIntent.v2.avsc")
    elif damage == "bad-name":
        (history / "RunIntent.vX.avsc").write_text((history / "RunIntent.v1.avsc").read_text())
    elif damage == "same-as-current":
        shutil.copy(directory / "RunTrigger.avsc", history / "RunTrigger.v1.avsc")
    else:
        doc = json.loads((directory / "RunTrigger.avsc").read_text())
        doc["namespace"] = "other"
        doc["fields"].pop()
        (history / "RunTrigger.v1.avsc").write_text(json.dumps(doc))
    AvroCodec(default_schema_dir())  # the shipped history is fine
    with pytest.raises(ConfigError):
        AvroCodec(directory)


def test_a_retry_trigger_is_run_trigger_version_2_and_a_version_1_frame_still_decodes() -> None:
    from datetime import UTC, datetime

    from worker.core.models import RunTrigger, TriggerKind

    codec = AvroCodec()
    at = datetime(2026, 12, 2, tzinfo=UTC)
    retry = RunTrigger(run_id="0" * 32, kind=TriggerKind.RETRY, reason="fixed", requested_by="ops", requested_at=at)
    assert codec.decode_trigger(codec.encode_trigger(retry)) == retry
    # A producer still on version 1 (no RETRY symbol) is read into the current schema.
    v1 = next(r for r in codec.fingerprints() if r.record == "RunTrigger" and r.version == 1 and r.variant == "spec")
    datum = {"run_id": "0" * 32, "kind": "REEMIT", "reason": "r", "requested_by": "ops",
             "requested_at": 1_796_169_600_000}
    frame = b"\xc3\x01" + bytes.fromhex(v1.hex) + v1_body("RunTrigger", datum)
    assert codec.decode_trigger(frame).kind is TriggerKind.REEMIT
