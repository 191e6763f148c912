"""Typed ledger bodies: the same stored dicts as before, and fail-closed parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.core.engine import EngineStatus
from worker.core.identity import attempt_id_for
from worker.core.ledger import LedgerEntry, LedgerKind, next_entry
from worker.core.ledger_bodies import (
    TYPED_KINDS,
    EngineRequestedBody,
    EngineResultBody,
    ReadyBody,
    StatusBody,
    SupersededBody,
    TriggerBody,
    body_of,
    parse_body,
)
from worker.errors import IntegrityError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RUN = "0" * 32
H1, H2 = "a" * 64, "b" * 64
A1 = attempt_id_for(RUN, 1)


def _stored_entries() -> list[LedgerEntry]:
    golden = json.loads((FIXTURES / "golden_v1" / "objects.json").read_text())["objects"]
    texts = [t for k, t in golden.items() if "/record/" in k]
    texts += [p.read_text() for p in sorted((FIXTURES / "runpack_v1" / "ledger").glob("*.json"))]
    return [LedgerEntry.model_validate(json.loads(t)) for t in texts]


@pytest.mark.parametrize("entry", _stored_entries(), ids=lambda e: f"{e.run_id[:6]}-{e.seq}-{e.kind.value}")
def test_every_stored_body_round_trips_through_its_type(entry: LedgerEntry) -> None:
    assert body_of(parse_body(entry)) == entry.body


def test_status_bodies_keep_a_null_plan_hash_and_drop_other_nulls() -> None:
    assert StatusBody(plan_hash=None, reason_code="X", detail="d").to_dict() == {
        "plan_hash": None, "reason_code": "X", "detail": "d"}
    ready = ReadyBody(plan_hash=H1, facts_view_hash=H2, facts_view_uri="s3://b/k", policy_rev="r")
    assert "supersedes_facts_view_hash" not in ready.to_dict() and "intent" not in ready.to_dict()
    assert body_of(ready, intent={"tenant_id": "t"})["intent"] == {"tenant_id": "t"}


@pytest.mark.parametrize(("kind", "body"), [
    (LedgerKind.READY, {"plan_hash": H1, "facts_view_uri": "s3://b/k", "policy_rev": "r"}),  # no facts hash
    (LedgerKind.READY, {"plan_hash": "short", "facts_view_hash": H2, "facts_view_uri": "u", "policy_rev": "r"}),
    (LedgerKind.WAITING, {"reason_code": "X", "detail": "d", "plan_hash": None, "surprise": 1}),
    (LedgerKind.SUPERSEDED, {"new_facts_view_hash": H2}),
    (LedgerKind.TRIGGER, {"kind": "REEMIT", "reason": "r", "requested_by": "o", "requested_at": "yesterday"}),
    (LedgerKind.PUBLISHED, {"facts_view_hash": H1, "event_type": "READY"}),  # SR writes no such body
    (LedgerKind.ENGINE_REQUESTED, {"attempt_id": A1, "attempt_no": 0, "attempt_deadline": 5}),
    (LedgerKind.ENGINE_REQUESTED, {"attempt_id": A1, "attempt_no": 1, "attempt_deadline": "soon"}),
    (LedgerKind.ENGINE_REQUESTED, {"attempt_id": A1[:31], "attempt_no": 1, "attempt_deadline": 5}),
    (LedgerKind.ENGINE_REQUESTED, {"attempt_id": A1, "attempt_no": 1, "attempt_deadline": 5, "plan_hash": H1}),
    (LedgerKind.ENGINE_REQUESTED, {"attempt_id": A1, "attempt_no": 1, "attempt_deadline": 5, "plan_hash": H1,
                                   "policy_rev": "r"}),
    (LedgerKind.ENGINE_RESULT, {"attempt_id": A1, "status": "RUNNING", "detail": "d"}),
    (LedgerKind.ENGINE_RESULT, {"attempt_id": A1, "status": "FAILED"}),
    (LedgerKind.ENGINE_RESULT, {"attempt_id": A1, "status": "FAILED", "detail": "d" * 4097}),
])
def test_a_body_that_does_not_fit_its_kind_is_an_integrity_error(kind: LedgerKind, body: dict[str, object]) -> None:
    entry = next_entry(RUN, None, kind=kind, at_ms=1, lease_epoch=1, body=body)
    with pytest.raises(IntegrityError):
        parse_body(entry)


def test_each_kind_parses_to_its_model() -> None:
    cases = {
        LedgerKind.READY: ReadyBody(plan_hash=H1, facts_view_hash=H2, facts_view_uri="u", policy_rev="r"),
        LedgerKind.FAILED: StatusBody(plan_hash=None, reason_code="UNKNOWN_OUTPUT", detail="d"),
        LedgerKind.SUPERSEDED: SupersededBody(old_facts_view_hash=H1, new_facts_view_hash=H2, facts_view_uri="u",
                                              plan_hash=H1, policy_rev="r"),
        LedgerKind.TRIGGER: TriggerBody(kind="REEMIT", reason="r", requested_by="o", requested_at=5),
        LedgerKind.ENGINE_REQUESTED: EngineRequestedBody(attempt_id=A1, attempt_no=1, attempt_deadline=901_000,
                                                                plan_hash=H1, policy_rev=H2),
        LedgerKind.ENGINE_RESULT: EngineResultBody(attempt_id=A1, status=EngineStatus.FAILED, detail="exit 3"),
    }
    for kind, body in cases.items():
        entry = next_entry(RUN, None, kind=kind, at_ms=1, lease_epoch=1, body=body.to_dict())
        assert parse_body(entry) == body


def test_engine_bodies_store_exactly_their_fields() -> None:
    requested = EngineRequestedBody(attempt_id=A1, attempt_no=2, attempt_deadline=901_000, plan_hash=H1,
                                    policy_rev=H2)
    assert requested.to_dict() == {"attempt_id": A1, "attempt_no": 2, "attempt_deadline": 901_000,
                                   "plan_hash": H1, "policy_rev": H2}
    result = EngineResultBody(attempt_id=A1, status=EngineStatus.SUCCEEDED, detail="")
    assert result.to_dict() == {"attempt_id": A1, "status": "SUCCEEDED", "detail": ""}
    assert result.plan_hash is None
    assert {LedgerKind.ENGINE_REQUESTED, LedgerKind.ENGINE_RESULT} <= TYPED_KINDS
    assert body_of(requested, intent={"tenant_id": "t"})["intent"] == {"tenant_id": "t"}
