"""Control facts rebuilt from a ledger: pure, deterministic, fail closed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.adapters.avro import AvroCodec
from worker.core.events import admitted_intent, control_fact, control_facts, current_ready
from worker.core.identity import run_id_of
from worker.core.ledger import LedgerEntry, LedgerKind, next_entry
from worker.core.models import EventType, Pins, RunIntent
from worker.errors import IntegrityError

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OLD, NEW, PLAN, REV = "1" * 64, "2" * 64, "3" * 64, "4" * 64


def _intent() -> RunIntent:
    return RunIntent(tenant_id="t1", namespace="ns", scenario_id="s", pins=Pins(
        manifest_fingerprint="a" * 64, parameter_hash="b" * 64, seed=7), window_start=T0,
        window_end=T0 + timedelta(days=1), output_ids=("transactions",), evidence_root="s3://bucket/evidence/t1/x",
        submitted_at=T0, submitted_by="tests")


def _ledger(*, supersede: bool = True) -> tuple[RunIntent, list[LedgerEntry]]:
    intent = _intent()
    run_id = run_id_of(intent)
    uri = "s3://bucket/sr/facts"
    entries = [next_entry(run_id, None, kind=LedgerKind.READY, at_ms=1000, lease_epoch=1, body={
        "plan_hash": PLAN, "facts_view_hash": OLD, "facts_view_uri": f"{uri}/{OLD}.json", "policy_rev": REV,
        "intent": intent.to_avro()})]
    if supersede:
        entries.append(next_entry(run_id, entries[-1], kind=LedgerKind.TRIGGER, at_ms=2000, lease_epoch=2,
                                  body={"kind": "SUPERSEDE", "requested_by": "ops"}))
        entries.append(next_entry(run_id, entries[-1], kind=LedgerKind.SUPERSEDED, at_ms=3000, lease_epoch=2, body={
            "old_facts_view_hash": OLD, "new_facts_view_hash": NEW, "facts_view_uri": f"{uri}/{NEW}.json",
            "plan_hash": PLAN, "policy_rev": REV}))
        entries.append(next_entry(run_id, entries[-1], kind=LedgerKind.READY, at_ms=3001, lease_epoch=2, body={
            "plan_hash": PLAN, "facts_view_hash": NEW, "facts_view_uri": f"{uri}/{NEW}.json", "policy_rev": REV,
            "supersedes_facts_view_hash": OLD}))
    return intent, entries


def test_control_facts_follow_the_ledger_in_order() -> None:
    intent, entries = _ledger()
    facts = control_facts(entries)
    assert [(f.event_type, f.facts_view_hash, f.supersedes_facts_view_hash) for f in facts] == [
        (EventType.READY, OLD, None), (EventType.SUPERSEDE, NEW, OLD), (EventType.READY, NEW, OLD)]
    # emitted_at is the commit time recorded in the ledger, not "now".
    assert [int(f.emitted_at.timestamp() * 1000) for f in facts] == [1000, 3000, 3001]
    assert all(f.pins == intent.pins and f.tenant_id == "t1" for f in facts)
    current = current_ready(entries)
    assert current is not None and current.facts_view_hash == NEW


def test_rebuilt_facts_encode_to_identical_bytes_every_time() -> None:
    _, entries = _ledger()
    codec = AvroCodec()
    first = [codec.encode_ready(f) for f in control_facts(entries)]
    again = [codec.encode_ready(f) for f in control_facts(list(entries))]
    assert first == again and len(set(first)) == 3


def test_current_ready_is_none_unless_ready() -> None:
    intent = _intent()
    waiting = [next_entry(run_id_of(intent), None, kind=LedgerKind.WAITING, at_ms=5, lease_epoch=1,
                          body={"reason_code": "EVIDENCE_MISSING", "intent": intent.to_avro()})]
    assert current_ready(waiting) is None
    assert control_facts(waiting) == []
    assert current_ready([]) is None


def test_missing_intent_or_fields_fail_closed() -> None:
    intent, entries = _ledger(supersede=False)
    no_intent = [next_entry(entries[0].run_id, None, kind=LedgerKind.READY, at_ms=1, lease_epoch=1,
                            body={k: v for k, v in entries[0].body.items() if k != "intent"})]
    with pytest.raises(IntegrityError):
        admitted_intent(no_intent)
    broken = next_entry(entries[0].run_id, None, kind=LedgerKind.READY, at_ms=1, lease_epoch=1,
                        body={"facts_view_hash": OLD})
    with pytest.raises(IntegrityError):
        control_fact(broken, intent)
    trigger = next_entry(entries[0].run_id, entries[0], kind=LedgerKind.TRIGGER, at_ms=2, lease_epoch=1, body={})
    with pytest.raises(IntegrityError):
        control_fact(trigger, intent)
