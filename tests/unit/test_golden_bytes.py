"""Plan, facts view, ledger and publication bytes are exactly what SR wrote before the
application layer was restructured (fixture made by ``tests/unit/golden_scenario.py``)."""

from __future__ import annotations

import json
from typing import Any

from tests.unit.golden_scenario import GOLDEN, run_scenario
from worker.adapters.avro import AvroCodec

#: The fixture was written with ReadyEvent version 1; version 2 added the REVOKED symbol
#: (contract §2 and §11), which changes the fingerprint in the header of every sr.ready
#: message and nothing else. Any other difference fails the test.
READY_V1 = "c301" + "dea00c0dc91b6ecb"


def _as_written_today(message: dict[str, Any]) -> dict[str, Any]:
    value = message["value"]
    if message["topic"] == "sr.ready" and value.startswith(READY_V1):
        current = "c301" + AvroCodec().fingerprint("ReadyEvent").hex()
        return {**message, "value": current + value[len(READY_V1):]}
    return message


def test_sr_writes_the_same_bytes_as_before() -> None:
    expected = json.loads(GOLDEN.read_text())
    actual = run_scenario()
    assert sorted(actual["objects"]) == sorted(expected["objects"])
    for key, text in expected["objects"].items():
        assert actual["objects"][key] == text, key
    ready = [m for m in expected["messages"] if m["topic"] == "sr.ready"]
    assert ready and all(m["value"].startswith(READY_V1) for m in ready)
    assert actual["messages"] == [_as_written_today(m) for m in expected["messages"]]


def test_the_frozen_ready_messages_still_decode() -> None:
    codec = AvroCodec()
    expected = json.loads(GOLDEN.read_text())
    for message in expected["messages"]:
        if message["topic"] == "sr.ready":
            old = codec.decode_ready(bytes.fromhex(message["value"]))
            assert codec.decode_ready(bytes.fromhex(_as_written_today(message)["value"])) == old


def test_the_scenario_covers_every_kind_of_truth() -> None:
    expected = json.loads(GOLDEN.read_text())
    kinds = {json.loads(text).get("kind") for key, text in expected["objects"].items() if "/record/" in key}
    assert kinds == {"READY", "WAITING", "FAILED", "QUARANTINED", "TRIGGER", "SUPERSEDED", "ENGINE_REQUESTED"}
    assert any("/facts/" in key for key in expected["objects"])
    assert any(key.endswith("/plan.json") for key in expected["objects"])
    topics = {m["topic"] for m in expected["messages"]}
    assert topics == {"sr.ready", "sr.run-status", "sr.engine-requests"}
