"""Instance binding (contract §4): a scoped gate passes only with a ``_receipt.json`` that its
flag covers and that names this run's values; on the in-memory ports, both gate methods."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.harness.app_world import BUCKET, World
from tests.harness.evidence import (
    GATE_3A_MEMBERS,
    GATE_6B_MEMBERS,
    RECEIPT_NAME,
    instance_of,
    receipt_bytes,
    upload_member_concat_gate,
)
from worker.core.canonical import canonical_json
from worker.core.evidence import MAX_RECEIPT_BYTES, GateOutcome, check_receipt
from worker.core.identity import run_id_of
from worker.core.models import RunStatus

INSTANCE: dict[str, str | int] = {"manifest_fingerprint": "a" * 64, "parameter_hash": "b" * 64,
                                  "run_id": "c" * 32, "scenario_id": "s1", "seed": 7}
SCOPE = ("scenario_id", "seed")


def judge(data: bytes | None, scope: tuple[str, ...] = SCOPE) -> tuple[GateOutcome, str]:
    outcome, detail, _ = check_receipt(data, gate_id="g", scope=scope, instance=INSTANCE)
    return outcome, detail


# --------------------------------------------------------------------------- the pure rule
def test_a_receipt_naming_the_run_passes_and_reports_the_bound_values() -> None:
    data = canonical_json({"gate_id": "g", "scenario_id": "s1", "seed": 7, "produced_by": "engine-1"})
    assert check_receipt(data, gate_id="g", scope=SCOPE, instance=INSTANCE) == (
        GateOutcome.PASS, "", {"scenario_id": "s1", "seed": 7})


@pytest.mark.parametrize(("doc", "outcome", "says"), [
    ({"gate_id": "g", "scenario_id": "s1", "seed": 8}, GateOutcome.INSTANCE_MISMATCH, "seed=8"),
    ({"gate_id": "g", "scenario_id": "s2", "seed": 7}, GateOutcome.INSTANCE_MISMATCH, 'scenario_id="s2"'),
    ({"gate_id": "other", "scenario_id": "s1", "seed": 7}, GateOutcome.INSTANCE_MISMATCH, "for gate 'other'"),
    ({"gate_id": "g", "scenario_id": "s1", "seed": "7"}, GateOutcome.INSTANCE_MISMATCH, 'seed="7"'),
    ({"gate_id": "g", "scenario_id": "s1", "seed": True}, GateOutcome.INSTANCE_MISMATCH, "seed=true"),
    ({"gate_id": "g", "scenario_id": "s1"}, GateOutcome.INSTANCE_PROOF_MISSING, "does not name seed"),
    ([{"gate_id": "g"}], GateOutcome.INSTANCE_PROOF_MISSING, "not a JSON object"),
])
def test_receipts_for_another_instance_or_incomplete_ones_fail(doc: Any, outcome: GateOutcome, says: str) -> None:
    got, detail = judge(canonical_json(doc))
    assert got is outcome and says in detail


@pytest.mark.parametrize("data", [
    b'{"gate_id": "g", "scenario_id": "s1", "seed": 7}',  # not canonical (spaces)
    b'{"seed":7,"gate_id":"g","scenario_id":"s1"}',  # not canonical (key order)
    b'{"gate_id":"g","gate_id":"g","scenario_id":"s1","seed":7}',  # duplicate key
    b'{"gate_id":"g","scenario_id":"s1","seed":7.0}',  # float
    b"\xef\xbb\xbf{}",  # BOM
    b"{" * 10 + b"}" * 10,  # too deep
    b"x" * (MAX_RECEIPT_BYTES + 1),
    b"",
])
def test_malformed_receipts_are_missing_proof(data: bytes) -> None:
    assert judge(data)[0] is GateOutcome.INSTANCE_PROOF_MISSING


def test_no_receipt_is_missing_proof() -> None:
    assert judge(None) == (GateOutcome.INSTANCE_PROOF_MISSING, f"{RECEIPT_NAME} not covered by the flag")


# --------------------------------------------------------------------------- runs (bundle-digest gate_6B)
@pytest.fixture
def world() -> World:
    return World()


def test_a_matching_receipt_is_ready_and_the_facts_view_records_what_was_proven(world: World) -> None:
    intent = world.intent("bound", seed=5)
    world.write_complete(intent)
    outcome = world.handle(world.processor(), intent)
    assert world.index.get(run_id_of(intent)).status is RunStatus.READY  # type: ignore[union-attr]
    view = json.loads(world.store.read(BUCKET, world.keys(intent).facts(outcome.detail)))
    gates = {r["gate_id"]: r for r in view["receipts"]}
    assert gates["gate_6B"]["scope"] == ["manifest_fingerprint", "parameter_hash", "scenario_id", "seed"]
    assert gates["gate_6B"]["bound"] == instance_of(intent)
    assert gates["gate_3A"]["scope"] == [] and gates["gate_3A"]["bound"] == {}  # a global gate
    assert view["outputs"] == [{"output_id": "transactions", "gates": ["gate_3A", "gate_6B"],
                                "locator": f"{intent.evidence_root}/outputs/transactions/"}]


def test_a_receipt_for_another_seed_quarantines(world: World) -> None:
    intent = world.intent("other-seed", seed=5)
    world.write_gate_3a(intent)
    world.write_gate_6b(intent, receipt=receipt_bytes("gate_6B", {**instance_of(intent), "seed": 6}))
    world.handle(world.processor(), intent)
    row = world.index.get(run_id_of(intent))
    assert row is not None and (row.status, row.reason_code) == (RunStatus.QUARANTINED, "INSTANCE_MISMATCH")
    assert "seed=6" in world.status_events()[-1].detail
    assert world.ready_events() == []


def test_a_flag_without_a_receipt_fails(world: World) -> None:
    intent = world.intent("no-receipt")
    world.write_gate_3a(intent)
    world.write_gate_6b(intent, receipt=None)
    world.handle(world.processor(), intent)
    row = world.index.get(run_id_of(intent))
    assert row is not None and (row.status, row.reason_code) == (RunStatus.FAILED, "INSTANCE_PROOF_MISSING")


def test_a_receipt_edited_after_the_flag_is_a_digest_mismatch(world: World) -> None:
    intent = world.intent("edited")
    world.write_gate_3a(intent)
    world.write_gate_6b(intent, tamper={RECEIPT_NAME: receipt_bytes("gate_6B", {**instance_of(intent), "seed": 2})})
    world.handle(world.processor(), intent)
    row = world.index.get(run_id_of(intent))
    assert row is not None and (row.status, row.reason_code) == (RunStatus.QUARANTINED, "DIGEST_MISMATCH")


def test_two_seeds_sharing_one_root_only_the_named_run_is_ready(world: World) -> None:
    shared = f"s3://{BUCKET}/evidence/t1/shared"
    named = world.intent("shared", seed=1, evidence_root=shared)
    other = world.intent("shared", seed=2, evidence_root=shared)
    world.write_complete(named)
    processor = world.processor()
    world.handle(processor, named)
    world.handle(processor, other)
    assert world.index.get(run_id_of(named)).status is RunStatus.READY  # type: ignore[union-attr]
    row = world.index.get(run_id_of(other))
    assert row is not None and (row.status, row.reason_code) == (RunStatus.QUARANTINED, "INSTANCE_MISMATCH")
    assert [e.run_id for e in world.ready_events()] == [run_id_of(named)]


def test_unscoped_gates_keep_working_on_a_shared_root(world: World) -> None:
    shared = f"s3://{BUCKET}/evidence/t1/reference"
    runs = [world.intent("ref", seed=s, outputs=("accounts",), evidence_root=shared) for s in (1, 2, 3)]
    world.write_gate_3a(runs[0])  # gate_3A is global: one bundle serves every run
    processor = world.processor()
    for intent in runs:
        world.handle(processor, intent)
    assert [world.index.get(run_id_of(i)).status for i in runs] == [RunStatus.READY] * 3  # type: ignore[union-attr]


# --------------------------------------------------------------------------- member-digest gate, scoped
SCOPED_3A = b"""
[outputs.accounts]
gates = ["gate_3A"]

[gates.gate_3A]
method = "sha256_member_digest_concat"
bundle = "gates/3A"
scope = ["run_id", "seed"]
"""


@pytest.mark.parametrize(("receipt", "status", "reason"), [
    ("valid", RunStatus.READY, None),
    ("none", RunStatus.FAILED, "INSTANCE_PROOF_MISSING"),
    ("unlisted", RunStatus.FAILED, "INSTANCE_PROOF_MISSING"),  # in the bundle but not in index.json
    ("other-run", RunStatus.QUARANTINED, "INSTANCE_MISMATCH"),
    ("huge", RunStatus.FAILED, "INSTANCE_PROOF_MISSING"),
])
def test_a_scoped_member_digest_gate(receipt: str, status: RunStatus, reason: str | None) -> None:
    world = World(policy_text=SCOPED_3A)
    intent = world.intent(f"m-{receipt}", outputs=("accounts",))
    values = instance_of(intent, ("run_id", "seed"))
    proof = {"valid": receipt_bytes("gate_3A", values), "none": None, "unlisted": None,
             "other-run": receipt_bytes("gate_3A", {**values, "run_id": "f" * 32}),
             "huge": canonical_json({"gate_id": "gate_3A", **values, "pad": "x" * MAX_RECEIPT_BYTES})}[receipt]
    root = world.root_prefix(intent)
    upload_member_concat_gate(world.store, BUCKET, root, "gates/3A", GATE_3A_MEMBERS, receipt=proof)
    if receipt == "unlisted":
        world.store.put(BUCKET, f"{root}/gates/3A/{RECEIPT_NAME}", receipt_bytes("gate_3A", values))
    world.handle(world.processor(), intent)
    row = world.index.get(run_id_of(intent))
    assert row is not None and (row.status, row.reason_code) == (status, reason)


def test_an_oversized_receipt_under_a_wrong_digest_is_still_a_digest_mismatch() -> None:
    world = World(policy_text=SCOPED_3A)
    intent = world.intent("m-order", outputs=("accounts",))
    huge = canonical_json({"gate_id": "gate_3A", "pad": "x" * MAX_RECEIPT_BYTES})
    root = world.root_prefix(intent)
    upload_member_concat_gate(world.store, BUCKET, root, "gates/3A", GATE_3A_MEMBERS, receipt=huge,
                              tamper_after_flag={"accounts/part-0000.csv": b"evil"})
    world.handle(world.processor(), intent)
    row = world.index.get(run_id_of(intent))
    assert row is not None and (row.status, row.reason_code) == (RunStatus.QUARANTINED, "DIGEST_MISMATCH")


def test_bundle_gates_carry_the_receipt_as_a_member() -> None:
    assert RECEIPT_NAME not in GATE_6B_MEMBERS
