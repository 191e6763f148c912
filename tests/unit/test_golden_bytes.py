"""Plan, facts view, ledger and publication bytes are exactly what SR wrote before the
application layer was restructured (fixture made by ``tests/unit/golden_scenario.py``)."""

from __future__ import annotations

import json

from tests.unit.golden_scenario import GOLDEN, run_scenario


def test_sr_writes_the_same_bytes_as_before() -> None:
    expected = json.loads(GOLDEN.read_text())
    actual = run_scenario()
    assert sorted(actual["objects"]) == sorted(expected["objects"])
    for key, text in expected["objects"].items():
        assert actual["objects"][key] == text, key
    assert actual["messages"] == expected["messages"]


def test_the_scenario_covers_every_kind_of_truth() -> None:
    expected = json.loads(GOLDEN.read_text())
    kinds = {json.loads(text).get("kind") for key, text in expected["objects"].items() if "/record/" in key}
    assert kinds == {"READY", "WAITING", "FAILED", "QUARANTINED", "TRIGGER", "SUPERSEDED", "ENGINE_REQUESTED"}
    assert any("/facts/" in key for key in expected["objects"])
    assert any(key.endswith("/plan.json") for key in expected["objects"])
    topics = {m["topic"] for m in expected["messages"]}
    assert topics == {"sr.ready", "sr.run-status", "sr.engine-requests"}
