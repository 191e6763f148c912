"""SR writes exactly the bytes of the golden fixture (plan, facts view, ledger and publication
bytes; made by ``tests/unit/golden_scenario.py``), and what it wrote before instance binding
(the frozen ``golden_v1``) still reads and re-verifies to the same bytes."""

from __future__ import annotations

import json
from typing import Any

from tests.unit.golden_scenario import GOLDEN, GOLDEN_V1, run_scenario
from worker.adapters.avro import AvroCodec
from worker.core.evidence import GateOutcome, GateResult
from worker.core.facts import build_facts_view, facts_view_bytes, parse_facts_view
from worker.core.plan import parse_plan

#: golden_v1 was written with ReadyEvent version 1 (before the REVOKED symbol, contract §2).
READY_V1 = "c301" + "dea00c0dc91b6ecb"


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


def _facts(fixture: dict[str, Any]) -> dict[str, str]:
    return {key: text for key, text in fixture["objects"].items() if "/facts/" in key}


def test_a_run_planned_before_instance_binding_keeps_its_facts_view_bytes() -> None:
    """Re-verifying a run whose plan.json predates output gates and scopes (the frozen v1
    fixture) builds a format-1 facts view byte-identical to the one SR wrote then."""
    old = json.loads(GOLDEN_V1.read_text())
    facts = _facts(old)
    assert facts
    for key, text in facts.items():
        view = parse_facts_view(text.encode())
        assert view.format_version == 1
        run_dir = key.rsplit("/facts/", 1)[0]
        plan = parse_plan(old["objects"][f"{run_dir}/plan.json"].encode(), expected_hash=view.plan_hash)
        results = [GateResult(gate_id=r.gate_id, method=r.method, bundle_uri=r.bundle_uri, outcome=GateOutcome.PASS,
                              expected_digest=r.digest, computed_digest=r.digest, member_count=r.member_count,
                              byte_count=r.byte_count) for r in view.receipts]
        rebuilt = build_facts_view(plan, view.plan_hash, results, supersedes=view.supersedes_facts_view_hash)
        assert facts_view_bytes(rebuilt) == text.encode(), key


def test_todays_facts_views_are_format_2_with_scope_and_outputs() -> None:
    for text in _facts(json.loads(GOLDEN.read_text())).values():
        doc = json.loads(text)
        assert doc["format_version"] == 2
        gates = {r["gate_id"]: r for r in doc["receipts"]}
        assert gates["gate_3A"]["scope"] == [] and gates["gate_3A"]["bound"] == {}
        assert gates.get("gate_6B", {"bound": {"seed": 1}})["bound"].get("seed") == 1
        assert all(o["locator"].endswith(f"/outputs/{o['output_id']}/") and o["gates"] for o in doc["outputs"])


def test_the_frozen_ready_messages_still_decode() -> None:
    codec = AvroCodec()
    old = json.loads(GOLDEN_V1.read_text())
    ready = [m for m in old["messages"] if m["topic"] == "sr.ready"]
    assert ready and all(m["value"].startswith(READY_V1) for m in ready)
    current = "c301" + codec.fingerprint("ReadyEvent").hex()
    for message in ready:
        frame = bytes.fromhex(message["value"])
        # The same event under ReadyEvent v2: only the fingerprint in the header differs.
        assert codec.decode_ready(frame) == codec.decode_ready(bytes.fromhex(current + message["value"][20:]))
