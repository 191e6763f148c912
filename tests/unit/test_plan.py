"""Plan building: determinism and content."""

from __future__ import annotations

import json

import pytest

from worker.core.canonical import sha256_hex
from worker.core.identity import intent_fingerprint, run_equivalence_key, run_id_of
from worker.core.plan import build_plan, parse_plan, plan_bytes, plan_hash
from worker.core.policy import Policy
from worker.errors import IntegrityError, IntentInvalidError, UnknownOutputError

from .conftest import make_intent


def test_plan_content(policy: Policy) -> None:
    intent = make_intent()
    plan = build_plan(intent, policy, run_id=run_id_of(intent))
    assert plan.run_id == run_id_of(intent)
    assert plan.run_equivalence_key == run_equivalence_key(intent)
    assert plan.intent_fingerprint == intent_fingerprint(intent)
    assert plan.output_ids == ("accounts", "transactions")
    assert plan.window_start_ms == 1_700_000_000_000
    assert [g.gate_id for g in plan.gates] == ["gate_3A", "gate_6B"]
    assert plan.gates[1].bundle_uri == "s3://sr-dev/evidence/t1/run1/gates/6B"
    assert plan.gates[1].depends_on == ("gate_3A",)
    assert [o.uri for o in plan.outputs] == [
        "s3://sr-dev/evidence/t1/run1/outputs/accounts/",
        "s3://sr-dev/evidence/t1/run1/outputs/transactions/",
    ]
    assert plan.policy_rev == policy.policy_rev
    assert plan.format_version == 1


def test_plan_bytes_canonical_and_hash(policy: Policy) -> None:
    intent = make_intent()
    plan = build_plan(intent, policy, run_id=run_id_of(intent))
    raw = plan_bytes(plan)
    assert b" " not in raw
    assert plan_hash(plan) == sha256_hex(raw)
    assert json.loads(raw)["pins"]["seed"] == 7
    assert parse_plan(raw, expected_hash=plan_hash(plan)) == plan


def test_plan_independent_of_non_fingerprint_fields(policy: Policy) -> None:
    a = make_intent()
    b = make_intent(
        request_id="other",
        submitted_at=1_800_000_000_000,
        submitted_by="x",
        deadline=1_900_000_000_000,
        output_ids=["accounts", "transactions"],
    )
    assert plan_bytes(build_plan(a, policy, run_id=run_id_of(a))) == plan_bytes(
        build_plan(b, policy, run_id=run_id_of(b))
    )


def test_plan_only_required_gates(policy: Policy) -> None:
    intent = make_intent(output_ids=["accounts"])
    plan = build_plan(intent, policy, run_id=run_id_of(intent))
    assert [g.gate_id for g in plan.gates] == ["gate_3A"]


def test_plan_rejects_wrong_run_id_and_unknown_output(policy: Policy) -> None:
    intent = make_intent()
    with pytest.raises(IntentInvalidError):
        build_plan(intent, policy, run_id="0" * 32)
    bad = make_intent(output_ids=["nope"])
    with pytest.raises(UnknownOutputError):
        build_plan(bad, policy, run_id=run_id_of(bad))


def test_parse_plan_integrity(policy: Policy) -> None:
    intent = make_intent()
    raw = plan_bytes(build_plan(intent, policy, run_id=run_id_of(intent)))
    with pytest.raises(IntegrityError):
        parse_plan(raw, expected_hash="0" * 64)
    with pytest.raises(IntegrityError):
        parse_plan(json.dumps(json.loads(raw), indent=1).encode())
    with pytest.raises(IntegrityError):
        parse_plan(raw.replace(b'"seed":7', b'"seed":7.0'))
    with pytest.raises(IntegrityError):
        parse_plan(b"garbage")
    with pytest.raises(IntegrityError):
        parse_plan(raw.replace(b'"format_version":1', b'"format_version":2'))
