"""Facts view: deterministic, pass-only, content-addressed."""

from __future__ import annotations

import json

import pytest

from worker.core.canonical import sha256_hex
from worker.core.evidence import GateOutcome, GateResult
from worker.core.facts import build_facts_view, facts_view_bytes, facts_view_hash, parse_facts_view
from worker.core.identity import run_id_of
from worker.core.plan import Plan, build_plan, instance_values, plan_hash
from worker.core.policy import Policy
from worker.errors import EvidenceError, IntegrityError

from .conftest import make_intent

D = "ab" * 32


def plan_for(policy: Policy) -> Plan:
    intent = make_intent()
    return build_plan(intent, policy, run_id=run_id_of(intent))


def passing(plan: Plan) -> list[GateResult]:
    return [
        GateResult(
            gate_id=g.gate_id,
            method=g.method,
            bundle_uri=g.bundle_uri,
            outcome=GateOutcome.PASS,
            expected_digest=D,
            computed_digest=D,
            member_count=3,
            byte_count=100,
            scope=g.scope,
            bound={f: instance_values(plan)[f] for f in g.scope},
        )
        for g in plan.gates
    ]


def test_facts_view_deterministic(policy: Policy) -> None:
    plan = plan_for(policy)
    results = passing(plan)
    a = build_facts_view(plan, plan_hash(plan), results)
    b = build_facts_view(plan, plan_hash(plan), list(reversed(results)))
    assert facts_view_bytes(a) == facts_view_bytes(b)
    assert facts_view_hash(a) == sha256_hex(facts_view_bytes(a))
    doc = json.loads(facts_view_bytes(a))
    assert [r["gate_id"] for r in doc["receipts"]] == ["gate_3A", "gate_6B"]
    assert "emitted_at" not in doc and doc["supersedes_facts_view_hash"] is None
    assert parse_facts_view(facts_view_bytes(a), expected_hash=facts_view_hash(a)) == a


def test_supersedes_changes_hash(policy: Policy) -> None:
    plan = plan_for(policy)
    a = build_facts_view(plan, plan_hash(plan), passing(plan))
    b = build_facts_view(plan, plan_hash(plan), passing(plan), supersedes=facts_view_hash(a))
    assert b.supersedes_facts_view_hash == facts_view_hash(a)
    assert facts_view_hash(a) != facts_view_hash(b)


@pytest.mark.parametrize("outcome", [o for o in GateOutcome if o is not GateOutcome.PASS])
def test_non_pass_rejected(policy: Policy, outcome: GateOutcome) -> None:
    plan = plan_for(policy)
    results = passing(plan)
    results[0] = results[0].model_copy(update={"outcome": outcome})
    with pytest.raises(EvidenceError):
        build_facts_view(plan, plan_hash(plan), results)


def test_incomplete_or_inconsistent_results(policy: Policy) -> None:
    plan = plan_for(policy)
    results = passing(plan)
    with pytest.raises(EvidenceError):
        build_facts_view(plan, plan_hash(plan), results[:1])
    with pytest.raises(EvidenceError):
        build_facts_view(plan, plan_hash(plan), [*results, results[0]])
    with pytest.raises(EvidenceError):
        build_facts_view(
            plan, plan_hash(plan), [results[0].model_copy(update={"bundle_uri": "s3://sr-dev/x"}), results[1]]
        )
    with pytest.raises(EvidenceError):
        build_facts_view(
            plan, plan_hash(plan), [results[0].model_copy(update={"computed_digest": "c" * 64}), results[1]]
        )
    with pytest.raises(IntegrityError):
        build_facts_view(plan, "0" * 64, results)


def test_parse_facts_view_integrity(policy: Policy) -> None:
    plan = plan_for(policy)
    raw = facts_view_bytes(build_facts_view(plan, plan_hash(plan), passing(plan)))
    with pytest.raises(IntegrityError):
        parse_facts_view(raw, expected_hash="0" * 64)
    with pytest.raises(IntegrityError):
        parse_facts_view(raw + b"\n")
    with pytest.raises(IntegrityError):
        parse_facts_view(b"[]")
