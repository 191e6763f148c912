"""Admission and classification decisions of the run step, on the in-memory ports."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.harness.app_world import BUCKET, DLQ, TOPICS, World
from worker.app.processor import Action
from worker.core.identity import run_id_of
from worker.core.models import RunStatus, Strategy
from worker.core.policy import load_policy
from worker.errors import DecodeError
from worker.runtime.dispatch import dispatch


@pytest.fixture
def world() -> World:
    return World()


def test_new_intent_with_complete_evidence_is_ready_once(world: World) -> None:
    processor = world.processor()
    intent = world.intent()
    world.write_complete(intent)
    outcome = world.handle(processor, intent)
    assert outcome.action is Action.READY
    assert world.kinds(intent) == ["READY"]
    # The first ledger entry records the admitted intent (S3 alone rebuilds the index).
    assert world.ledger(intent)[0].body["intent"] == intent.to_avro()
    [event] = world.ready_events()
    assert event.facts_view_hash == outcome.detail
    [message] = world.sink.messages(TOPICS.ready)
    assert message.key == run_id_of(intent).encode()
    assert message.header("sr-idempotency-key") == f"{run_id_of(intent)}:{outcome.detail}:READY"
    row = world.index.get(run_id_of(intent))
    assert row is not None and row.status is RunStatus.READY and row.facts_view_hash == outcome.detail
    assert [p.published_at is not None for p in world.index.publications(row.run_id)] == [True]


def test_a_ready_run_costs_five_round_trips_and_three_puts(world: World) -> None:
    processor = world.processor()
    intent = world.intent()
    world.write_complete(intent)
    puts_before, trips_before = world.store.requests["PUT"], world.db.round_trips
    world.handle(processor, intent)
    assert world.store.requests["PUT"] - puts_before == 3  # plan, facts view, ledger entry
    assert world.db.round_trips - trips_before == 5


def test_duplicate_does_no_new_work(world: World) -> None:
    processor = world.processor()
    intent = world.intent()
    world.write_complete(intent)
    world.handle(processor, intent)
    requests, trips, sent = sum(world.store.requests.values()), world.db.round_trips, len(world.sink.sent)
    again = intent.model_copy(update={"request_id": "another", "submitted_by": "someone-else"})
    outcome = world.handle(processor, again)
    assert outcome.action is Action.DUPLICATE
    assert sum(world.store.requests.values()) == requests
    assert world.db.round_trips - trips == 1
    assert len(world.sink.sent) == sent


def test_collision_is_rejected_and_leaves_the_existing_run_alone(world: World) -> None:
    processor = world.processor()
    intent = world.intent()
    world.write_complete(intent)
    world.handle(processor, intent)
    before = world.index.get(run_id_of(intent))
    colliding = intent.model_copy(update={"strategy": Strategy.AUTO})  # same key, other fingerprint
    outcome = world.handle(processor, colliding)
    assert outcome.action is Action.REJECTED and outcome.detail == "EQUIV_KEY_COLLISION"
    assert world.index.get(run_id_of(intent)) == before
    assert world.kinds(intent) == ["READY"]
    rejected = world.status_events()[-1]
    assert rejected.status.value == "REJECTED" and rejected.reason_code == "EQUIV_KEY_COLLISION"
    [dead] = world.dlq()
    assert dead.header("sr-error-class") == "EQUIV_KEY_COLLISION"
    assert dead.value == world.codec.encode_intent(colliding)


def test_forbidden_evidence_root_is_rejected_before_any_read_or_index_write(world: World) -> None:
    processor = world.processor()
    intent = world.intent(evidence_root=f"s3://{BUCKET}/evidence/other-tenant/r1")
    outcome = world.handle(processor, intent)
    assert outcome.action is Action.REJECTED and outcome.detail == "EVIDENCE_ROOT_FORBIDDEN"
    assert world.store.requests["GET"] == world.store.requests["LIST"] == 0
    assert world.index.get(run_id_of(intent)) is None
    assert world.dlq()[0].header("sr-source-topic") == "sr.run-intents"


def test_missing_evidence_waits_and_schedules_a_recheck(world: World) -> None:
    processor = world.processor(recheck_interval=30)
    intent = world.intent()
    outcome = world.handle(processor, intent)
    assert (outcome.action, outcome.detail) == (Action.WAITING, "EVIDENCE_MISSING")
    row = world.index.get(run_id_of(intent))
    assert row is not None and row.next_check_at == world.clock() + timedelta(seconds=30)
    assert [e.reason_code for e in world.status_events()] == ["EVIDENCE_MISSING"]


def test_a_recheck_without_change_writes_nothing(world: World) -> None:
    processor = world.processor()
    intent = world.intent()
    world.handle(processor, intent)
    puts, events = world.store.requests["PUT"], len(world.sink.sent)
    world.clock.advance(31)
    [outcome] = processor.sweep()
    assert outcome.action is Action.UNCHANGED
    assert world.store.requests["PUT"] == puts and len(world.sink.sent) == events
    assert world.kinds(intent) == ["WAITING"]


def test_waiting_run_becomes_ready_when_evidence_arrives(world: World) -> None:
    processor = world.processor()
    intent = world.intent()
    world.handle(processor, intent)
    world.write_complete(intent)
    world.clock.advance(31)
    [outcome] = processor.sweep()
    assert outcome.action is Action.READY
    assert world.kinds(intent) == ["WAITING", "READY"]


def test_missing_evidence_at_the_deadline_fails(world: World) -> None:
    processor = world.processor()
    intent = world.intent(deadline=world.clock() + timedelta(minutes=5))
    world.handle(processor, intent)
    world.clock.advance(301)
    [outcome] = processor.sweep()
    assert (outcome.action, outcome.detail) == (Action.FAILED, "EVIDENCE_MISSING_DEADLINE")
    assert world.kinds(intent) == ["WAITING", "FAILED"]


def test_unknown_output_fails_without_a_plan(world: World) -> None:
    processor = world.processor()
    intent = world.intent(outputs=("not-in-policy",))
    outcome = world.handle(processor, intent)
    assert (outcome.action, outcome.detail) == (Action.FAILED, "UNKNOWN_OUTPUT")
    assert not world.store.keys(BUCKET, world.keys(intent).plan)


def test_tampered_member_quarantines(world: World) -> None:
    processor = world.processor()
    intent = world.intent()
    world.write_gate_3a(intent)
    world.write_gate_6b(intent, tamper={"part-0": b"changed after the flag\n"})
    outcome = world.handle(processor, intent)
    assert (outcome.action, outcome.detail) == (Action.QUARANTINED, "DIGEST_MISMATCH")
    assert world.ready_events() == []


def test_bad_flag_fails(world: World) -> None:
    processor = world.processor()
    intent = world.intent(outputs=("accounts",))
    world.write_gate_3a(intent, with_flag=False)
    world.store.put(BUCKET, f"{world.root_prefix(intent)}/gates/3A/_passed.flag", b"md5=abc\n")
    outcome = world.handle(processor, intent)
    assert outcome.action is Action.FAILED and outcome.detail == "BAD_FLAG"


def test_final_runs_are_not_decided_again(world: World) -> None:
    processor = world.processor()
    intent = world.intent()
    world.write_gate_3a(intent)
    world.write_gate_6b(intent, tamper={"part-0": b"x"})
    world.handle(processor, intent)
    world.write_complete(intent)  # the evidence is now fine, but QUARANTINED is terminal
    outcome = processor.drive(run_id_of(intent), fresh=False)
    assert outcome.action is Action.UNCHANGED
    assert world.kinds(intent) == ["QUARANTINED"]


def test_the_run_keeps_its_plan_after_a_policy_change(world: World) -> None:
    first = world.processor()
    intent = world.intent()
    world.handle(first, intent)  # WAITING, planned with the example policy
    plan_hash = world.index.get(run_id_of(intent)).plan_hash  # type: ignore[union-attr]
    moved = world.policy_text.replace(b'bundle = "gates/6B"', b'bundle = "gates/moved"')
    second = world.processor(policy=load_policy(moved))
    world.write_complete(intent)  # evidence where the ORIGINAL plan expects it
    outcome = second.drive(run_id_of(intent), fresh=False)
    assert outcome.action is Action.READY
    assert world.index.get(run_id_of(intent)).plan_hash == plan_hash  # type: ignore[union-attr]


def test_undecodable_intent_is_an_input_error(world: World) -> None:
    processor = world.processor()
    with pytest.raises(DecodeError):
        dispatch(processor, world.record("sr.run-intents", b"\xc3\x01garbage"), triggers_topic="sr.triggers")
    assert world.db.round_trips == 0 and sum(world.store.requests.values()) == 0


def test_dead_letter_copies_key_bytes_and_error_headers(world: World) -> None:
    processor = world.processor()
    record = world.record("sr.run-intents", b"\x00poison", key=b"k1")
    processor.dead_letter(record, DecodeError("not Avro"))
    [dead] = world.sink.messages(DLQ)
    assert (dead.key, dead.value) == (b"k1", b"\x00poison")
    assert dead.header("sr-error-class") == "DECODE_ERROR"
    assert dead.header("sr-source-offset") == str(record.offset)
    assert dead.header("sr-error-message") == "not Avro"


def test_replace_builds_a_new_processor_and_leaves_the_old_one_alone(world: World) -> None:
    processor = world.processor()
    other = processor.replace(lease_wait=2.5)
    assert other.context.lease_wait == 2.5 and processor.context.lease_wait == 0.0
    assert other.step is not processor.step and other.context.index is processor.context.index
    with pytest.raises(TypeError):
        processor.replace(no_such_field=1)
