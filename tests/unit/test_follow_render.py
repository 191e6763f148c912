"""How ``sr follow`` prints each kind of record (no server: records built by hand)."""

from __future__ import annotations

import json

import pytest

from worker.adapters.avro import AvroCodec
from worker.app.ports import Record
from worker.cli.follow_render import Printer, describe
from worker.settings import load_settings

from .conftest import engine_request_dict, engine_result_dict

CODEC = AvroCodec()
SETTINGS = load_settings(None, {})  # defaults only: topic names


def record(topic: str, value: bytes, headers: tuple[tuple[str, bytes], ...] = ()) -> Record:
    return Record(topic=topic, partition=1, offset=7, key=b"k", value=value, headers=headers, timestamp_ms=None)


def test_engine_records_dlq_and_garbage_each_get_their_row(capsys: pytest.CaptureFixture[str]) -> None:
    topics = SETTINGS.topics
    request = describe(CODEC, SETTINGS, record(topics.engine_requests, CODEC.encode("EngineRequest",
                                                                                    engine_request_dict())))
    result = describe(CODEC, SETTINGS, record(topics.engine_results, CODEC.encode("EngineResult",
                                                                                  engine_result_dict())))
    assert request["_kind"] == "engine_request" and request["attempt_no"] == engine_request_dict()["attempt_no"]
    assert result["_kind"] == "engine_result" and result["status"] == engine_result_dict()["status"]
    dead = describe(CODEC, SETTINGS, record(topics.dlq, b"\x00poison", (("sr-error-class", b"DECODE_ERROR"),
                                                                       ("sr-source-topic", b"sr.run-intents"))))
    assert dead["error_class"] == "DECODE_ERROR" and dead["bytes"] == 7 and dead["source"].startswith("sr.run-intents")
    garbage = describe(CODEC, SETTINGS, record(topics.status, b"\xc3\x01" + b"\x00" * 8))
    assert garbage["_kind"] == "undecodable" and "UNKNOWN_SCHEMA" in garbage["error"]
    Printer("jsonl").emit(request)
    Printer("table").emit(result)
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[0])["_where"] == {"topic": topics.engine_requests, "partition": 1, "offset": 7}
    assert out[1].startswith("EngineResult  ")
