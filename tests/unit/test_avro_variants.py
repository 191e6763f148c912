"""Every known canonical-form variant of every SR schema decodes (contract §2), computed from the
schemas, checked against the libraries that produce them where they are installed here
(fastavro for the spec, the official ``avro`` package for its variant) and against the
documented behaviour of the others (goavro, hamba/avro) on a schema written for the purpose."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import avro.schema
import fastavro.schema
import pytest

from tests.harness.official_avro import (
    avro_decode,
    avro_encode,
    avro_schema,
    spec_fingerprint_with_avro,
    with_datetimes,
)
from worker.adapters.avro import RECORD_NAMES, AvroCodec, default_schema_dir
from worker.adapters.avro.canonical_forms import VARIANTS, crc64_avro, parsing_canonical_form
from worker.core.identity import run_id_of
from worker.core.models import ReadyEvent, RunIntent, RunStatusEvent, RunTrigger, StatusEventStatus, TriggerKind
from worker.errors import UnknownSchemaError

from .conftest import H1, H2, REPO, engine_request_dict, engine_result_dict, intent_dict


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec()


def schema_files() -> list[Path]:
    """Every schema version SR ships: the current files and the history."""
    directory = default_schema_dir()
    return [*(directory / f"{n}.avsc" for n in RECORD_NAMES), *sorted((directory / "history").glob("*.avsc"))]


@pytest.mark.parametrize("path", schema_files(), ids=lambda p: p.name)
def test_the_spec_variant_is_fastavros_parsing_canonical_form(path: Path) -> None:
    doc = json.loads(path.read_text())
    form = parsing_canonical_form(doc)
    assert form == fastavro.schema.to_parsing_canonical_form(doc)
    assert crc64_avro(form).hex() == fastavro.schema.fingerprint(form, "CRC-64-AVRO")


@pytest.mark.parametrize("path", schema_files(), ids=lambda p: p.name)
def test_the_wrapped_variant_is_the_official_avro_librarys(path: Path) -> None:
    doc = json.loads(path.read_text())
    theirs = avro.schema.parse(path.read_text())
    form = parsing_canonical_form(doc, logical="wrap")
    assert form == theirs.canonical_form
    assert crc64_avro(form) == theirs.fingerprint("CRC-64-AVRO")
    assert form != parsing_canonical_form(doc), "SR's schemas have logical types, so the variants differ"


SAMPLE: dict[str, Any] = {
    "type": "record", "name": "R", "namespace": "n", "doc": "dropped",
    "fields": [
        {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "dropped"},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"], "default": "A"}, "default": "A"},
        {"name": "d", "type": {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2}},
        {"name": "again", "type": ["null", "E"], "default": None},
        {"name": "m", "type": {"type": "map", "values": {"type": "array", "items": "string"}}},
        {"name": "f", "type": {"type": "fixed", "name": "F", "size": 4}},
    ],
}


def test_each_variant_on_a_schema_written_for_the_purpose() -> None:
    """The shapes each library produces (spec; avro: logical attributes dropped, object kept;
    hamba/avro: logical attributes kept, decimal precision/scale included; goavro: as avro, and a
    nested named type keeps its short name) — written out by hand from their documentation."""
    tail = '{"name":"m","type":{"type":"map","values":{"type":"array","items":"string"}}},'
    expected = {
        "spec": '{"name":"n.R","type":"record","fields":[{"name":"t","type":"long"},'
                '{"name":"e","type":{"name":"n.E","type":"enum","symbols":["A","B"]}},'
                '{"name":"d","type":"bytes"},{"name":"again","type":["null","n.E"]},' + tail +
                '{"name":"f","type":{"name":"n.F","type":"fixed","size":4}}]}',
        "logical-wrapped": '{"name":"n.R","type":"record","fields":[{"name":"t","type":{"type":"long"}},'
                           '{"name":"e","type":{"name":"n.E","type":"enum","symbols":["A","B"]}},'
                           '{"name":"d","type":{"type":"bytes"}},{"name":"again","type":["null","n.E"]},' + tail +
                           '{"name":"f","type":{"name":"n.F","type":"fixed","size":4}}]}',
        "logical-kept": '{"name":"n.R","type":"record","fields":[{"name":"t","type":{"type":"long",'
                        '"logicalType":"timestamp-millis"}},'
                        '{"name":"e","type":{"name":"n.E","type":"enum","symbols":["A","B"]}},'
                        '{"name":"d","type":{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}},'
                        '{"name":"again","type":["null","n.E"]},' + tail +
                        '{"name":"f","type":{"name":"n.F","type":"fixed","size":4}}]}',
        "goavro": '{"name":"n.R","type":"record","fields":[{"name":"t","type":{"type":"long"}},'
                  '{"name":"e","type":{"name":"E","type":"enum","symbols":["A","B"]}},'
                  '{"name":"d","type":{"type":"bytes"}},{"name":"again","type":["null","E"]},' + tail +
                  '{"name":"f","type":{"name":"F","type":"fixed","size":4}}]}',
    }
    assert [v.name for v in VARIANTS] == list(expected)
    for variant in VARIANTS:
        form = parsing_canonical_form(SAMPLE, logical=variant.logical, inherit_namespace=variant.inherit_namespace)
        assert form == expected[variant.name], variant.name
    assert expected["spec"] == fastavro.schema.to_parsing_canonical_form(SAMPLE)
    assert expected["logical-wrapped"] == avro.schema.parse(json.dumps(SAMPLE)).canonical_form


def test_crc64_avro_matches_the_specs_example() -> None:
    # The spec's own example: the fingerprint of "int" is 0x7275d51a3f395c8f.
    assert int.from_bytes(crc64_avro('"int"'), "little") == 0x7275D51A3F395C8F


def test_malformed_schema_documents_are_value_errors() -> None:
    for bad in (3, {"name": "x"}, {"type": "record", "fields": []}, {"type": "record", "name": "R", "fields": [{}]},
                {"type": "record", "name": "R"}):
        with pytest.raises(ValueError):
            parsing_canonical_form(bad)


def sample_datum(record: str) -> dict[str, Any]:
    """A valid datum of each record, in SR's ``to_avro()`` shape."""
    run = "a" * 32
    builders: dict[str, Callable[[], dict[str, Any]]] = {
        "RunIntent": lambda: RunIntent.from_avro(intent_dict()).to_avro(),
        "RunTrigger": lambda: RunTrigger(run_id=run, kind=TriggerKind.REEMIT, reason="r", requested_by="ops",
                                         requested_at=1_700_000_000_000).to_avro(),
        "ReadyEvent": lambda: ReadyEvent.from_avro({
            "event_type": "READY", "run_id": run, "facts_view_hash": "c" * 64,
            "facts_view_uri": f"s3://sr-dev/sr/run/{run}/facts/{'c' * 64}.json", "supersedes_facts_view_hash": None,
            "tenant_id": "t", "namespace": "n", "scenario_id": "s",
            "pins": {"manifest_fingerprint": H1, "parameter_hash": H2, "seed": 1},
            "policy_rev": "d" * 64, "plan_hash": "e" * 64, "emitted_at": 1_700_000_000_000}).to_avro(),
        "RunStatusEvent": lambda: RunStatusEvent(
            run_id=run, status=StatusEventStatus.WAITING, reason_code="EVIDENCE_MISSING", detail="d",
            tenant_id="t", namespace="n", scenario_id="s", emitted_at=1_700_000_000_000).to_avro(),
        "EngineRequest": engine_request_dict,
        "EngineResult": engine_result_dict,
    }
    return builders[record]()


@pytest.mark.parametrize("record", RECORD_NAMES)
def test_every_variant_fingerprint_decodes_to_the_same_message(codec: AvroCodec, record: str) -> None:
    frame = codec.encode(record, sample_datum(record))
    want = codec.decode(frame)
    rows = [r for r in codec.fingerprints() if r.record == record and r.current]
    assert {r.variant for r in rows} == {v.name for v in VARIANTS}
    for row in rows:
        assert codec.decode(frame[:2] + bytes.fromhex(row.hex) + frame[10:]) == want, row.variant


def test_a_fingerprint_that_matches_nothing_is_still_unknown(codec: AvroCodec) -> None:
    doc = json.loads((default_schema_dir() / "RunTrigger.avsc").read_text())
    doc["fields"][1]["type"]["symbols"].append("NOT_A_KIND")
    frame = codec.encode_trigger(RunTrigger(run_id="a" * 32, kind=TriggerKind.REEMIT, reason="r",
                                            requested_by="ops", requested_at=1_700_000_000_000))
    for variant in VARIANTS:
        other = crc64_avro(parsing_canonical_form(doc, logical=variant.logical,
                                                  inherit_namespace=variant.inherit_namespace))
        with pytest.raises(UnknownSchemaError):
            codec.decode(frame[:2] + other + frame[10:])


def test_frames_made_by_the_official_avro_library_decode(codec: AvroCodec) -> None:
    intent = RunIntent.from_avro(intent_dict())
    frame = avro_encode(avro_schema("RunIntent"), with_datetimes(intent.to_avro()))
    assert frame[2:10].hex() == "1e59576db85613ce", "the avro package's own fingerprint of RunIntent"
    decoded = codec.decode_intent(frame)
    assert decoded == intent and run_id_of(decoded) == run_id_of(intent)
    trigger = RunTrigger(run_id=run_id_of(intent), kind=TriggerKind.EVIDENCE_ARRIVED, reason="upload done",
                         requested_by="loader", requested_at=1_700_000_000_000)
    assert codec.decode_trigger(avro_encode(avro_schema("RunTrigger"), with_datetimes(trigger.to_avro()))) == trigger


def test_the_official_avro_library_reads_srs_frames(codec: AvroCodec) -> None:
    status = RunStatusEvent(run_id="a" * 32, status=StatusEventStatus.FAILED, reason_code="ENGINE_FAILED",
                            detail="d", tenant_id="t", namespace="n", scenario_id="s", emitted_at=1_700_000_000_123)
    frame = codec.encode_status(status)
    accepted = {bytes.fromhex(r.hex) for r in codec.fingerprints() if r.record == "RunStatusEvent"}
    datum = avro_decode(avro_schema("RunStatusEvent"), frame, accepted)
    assert datum["reason_code"] == "ENGINE_FAILED"
    assert int(datum["emitted_at"].timestamp() * 1000) == 1_700_000_000_123
    # The decode recipe of docs/consumers.md: with the avro package alone, fingerprint the
    # schema without its logicalType attributes to get the fingerprint SR writes.
    for record in RECORD_NAMES:
        assert spec_fingerprint_with_avro(record) == codec.fingerprint(record), record


def test_the_contract_lists_every_fingerprint_sr_accepts(codec: AvroCodec) -> None:
    text = (REPO / "docs" / "contract.md").read_text()
    table: dict[tuple[str, int], list[str]] = {}
    writes: dict[str, tuple[int, str]] = {}
    for line in text.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in RECORD_NAMES:
            table[(cells[0], int(cells[1].split()[0]))] = cells[2:]
        elif len(cells) == 3 and cells[0] in RECORD_NAMES and cells[1].isdigit():
            writes[cells[0]] = (int(cells[1]), cells[2])
    computed: dict[tuple[str, int], list[str]] = {}
    for row in codec.fingerprints():
        computed.setdefault((row.record, row.version), []).append(row.hex)
    assert table == computed
    assert writes == {r.record: (r.version, r.hex) for r in codec.fingerprints() if r.current and r.variant == "spec"}


def test_the_python_recipes_in_consumers_md_decode_srs_frames(codec: AvroCodec) -> None:
    text = (REPO / "docs" / "consumers.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert len(blocks) == 2  # fastavro, avro
    frame = codec.encode("ReadyEvent", sample_datum("ReadyEvent"))
    for block in blocks:
        scope: dict[str, Any] = {"frame": frame, "schemas_dir": default_schema_dir()}
        exec(compile(block, "consumers.md", "exec"), scope)  # noqa: S102 - our own documentation
        event = scope["event"]
        assert event["event_type"] == "READY" and event["run_id"] == "a" * 32
        assert event["emitted_at"].timestamp() == 1_700_000_000
        stale = dict(scope, frame=frame[:2] + codec.fingerprint("RunStatusEvent") + frame[10:])
        with pytest.raises(ValueError, match="not a ReadyEvent"):
            exec(compile(block, "consumers.md", "exec"), stale)  # noqa: S102
