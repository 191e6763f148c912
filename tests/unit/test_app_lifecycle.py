"""Triggers, supersede, ledger races, fencing, crash re-drive and the outbox, on the in-memory ports."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.harness.app_world import TOPICS, World
from worker.app.crashpoints import CrashPoint
from worker.app.processor import Action
from worker.app.testing import InMemoryLeases, RaisingCrashPoints, SimulatedCrash
from worker.core.identity import intent_fingerprint, run_equivalence_key, run_id_of
from worker.core.index import NewRun
from worker.core.ledger import LedgerKind, next_entry
from worker.core.models import EventType, RunStatus, TriggerKind
from worker.errors import KafkaUnavailableError, LeaseLostError, LedgerRaceError, StaleEpochError

CORRECTED_6B = {"part-0": b"corrected-0\n", "part-1": b"transactions-1\n"}


@pytest.fixture
def world() -> World:
    return World()


def _ready(world: World, name: str = "r1") -> tuple[object, str]:
    processor = world.processor()
    intent = world.intent(name)
    world.write_complete(intent)
    outcome = world.handle(processor, intent)
    assert outcome.action is Action.READY
    return intent, outcome.detail


# --------------------------------------------------------------------------- supersede
def test_supersede_with_changed_evidence_announces_then_commits_the_new_fact(world: World) -> None:
    intent, old = _ready(world)
    world.write_gate_6b(intent, CORRECTED_6B)  # type: ignore[arg-type]
    run_id = run_id_of(intent)  # type: ignore[arg-type]
    outcome = world.handle_trigger(world.processor(), world.trigger(run_id, TriggerKind.SUPERSEDE))
    assert outcome.action is Action.SUPERSEDED
    new = outcome.detail
    events = world.ready_events()
    assert [(e.event_type, e.facts_view_hash, e.supersedes_facts_view_hash) for e in events] == [
        (EventType.READY, old, None),
        (EventType.SUPERSEDE, new, old),
        (EventType.READY, new, old),
    ]
    # Same key, same partition, in that order; nothing old was modified.
    assert len({(m.key, m.partition) for m in world.sink.messages(TOPICS.ready)}) == 1
    assert world.kinds(intent) == ["READY", "TRIGGER", "SUPERSEDED", "READY"]  # type: ignore[arg-type]
    assert world.truth.read_facts_view(world.keys(intent), old).run_id == run_id  # type: ignore[arg-type]
    assert world.index.get(run_id).facts_view_hash == new  # type: ignore[union-attr]


def test_supersede_with_unchanged_evidence_changes_nothing(world: World) -> None:
    intent, _ = _ready(world)
    sent = len(world.sink.sent)
    outcome = world.handle_trigger(world.processor(), world.trigger(run_id_of(intent), TriggerKind.SUPERSEDE))  # type: ignore[arg-type]
    assert (outcome.action, outcome.detail) == (Action.UNCHANGED, "facts unchanged")
    assert len(world.sink.sent) == sent


def test_supersede_of_a_run_that_is_not_ready_is_ignored(world: World) -> None:
    processor = world.processor()
    intent = world.intent()
    world.handle(processor, intent)
    outcome = world.handle_trigger(processor, world.trigger(run_id_of(intent), TriggerKind.SUPERSEDE))
    assert outcome.action is Action.UNCHANGED and "WAITING" in outcome.detail


# --------------------------------------------------------------------------- triggers
def test_a_redelivered_trigger_is_recorded_once(world: World) -> None:
    processor = world.processor()
    intent = world.intent()
    world.handle(processor, intent)
    trigger = world.trigger(run_id_of(intent), TriggerKind.EVIDENCE_ARRIVED)
    world.handle_trigger(processor, trigger)
    world.handle_trigger(processor, trigger)
    assert world.kinds(intent).count("TRIGGER") == 1
    [entry] = [e for e in world.ledger(intent) if e.kind is LedgerKind.TRIGGER]
    assert entry.body["requested_by"] == "ops" and entry.body["kind"] == "EVIDENCE_ARRIVED"


def test_reemit_resends_the_current_ready_byte_identically(world: World) -> None:
    intent, _ = _ready(world)
    first = world.sink.messages(TOPICS.ready)[0]
    outcome = world.handle_trigger(world.processor(), world.trigger(run_id_of(intent), TriggerKind.REEMIT))  # type: ignore[arg-type]
    assert outcome.action is Action.REEMITTED
    resent = world.sink.messages(TOPICS.ready)[1]
    assert (resent.key, resent.value, resent.headers) == (first.key, first.value, first.headers)


def test_reemit_of_a_run_that_is_not_ready_sends_nothing(world: World) -> None:
    processor = world.processor()
    intent = world.intent()
    world.handle(processor, intent)
    outcome = world.handle_trigger(processor, world.trigger(run_id_of(intent), TriggerKind.REEMIT))
    assert outcome.action is Action.UNCHANGED
    assert world.sink.messages(TOPICS.ready) == []


# --------------------------------------------------------------------------- races and fencing
def test_a_ledger_ahead_of_the_index_is_caught_up_not_decided_again(world: World) -> None:
    crashed = world.processor(crash=RaisingCrashPoints(CrashPoint.AFTER_LEDGER_READY.value))
    intent = world.intent()
    world.write_complete(intent)
    with pytest.raises(SimulatedCrash):
        world.handle(crashed, intent)
    # The index never saw the READY entry (ledger_seq -1). The next step reads the ledger,
    # moves the index to its head and sends the READY the entry implies (rebuilt from it).
    outcome = world.handle(world.processor(), intent)
    assert (outcome.action, outcome.detail) == (Action.UNCHANGED, "READY")
    assert world.kinds(intent) == ["READY"]
    assert len(world.ready_events()) == 1
    row = world.index.get(run_id_of(intent))
    assert row is not None and (row.status, row.ledger_seq) == (RunStatus.READY, 0)
    assert row.facts_view_hash == world.ready_events()[0].facts_view_hash


def test_a_ready_after_waiting_survives_a_crash_before_the_index_write(world: World) -> None:
    # WAITING first (seq 0, in the index), then the evidence arrives and the READY entry
    # (seq 1) is written, and the process dies before the index row moves: the READY must
    # still go out (the ledger is the truth), exactly once.
    intent = world.intent()
    world.handle(world.processor(), intent)
    world.write_complete(intent)
    crashed = world.processor(crash=RaisingCrashPoints(CrashPoint.AFTER_LEDGER_READY.value))
    with pytest.raises(SimulatedCrash):
        world.handle_trigger(crashed, world.trigger(run_id_of(intent), TriggerKind.EVIDENCE_ARRIVED))
    assert world.ready_events() == []
    world.clock.advance(60)
    outcomes = world.processor().sweep()
    assert [o.detail for o in outcomes] == ["READY"]
    assert world.kinds(intent) == ["WAITING", "TRIGGER", "READY"]
    assert len(world.ready_events()) == 1
    row = world.index.get(run_id_of(intent))
    assert row is not None and (row.status, row.ledger_seq) == (RunStatus.READY, 2)
    world.processor().sweep()
    assert len(world.ready_events()) == 1


def test_a_lost_seq_race_with_a_different_decision_is_never_overwritten(world: World) -> None:
    processor = world.processor()
    intent = world.intent()
    world.index.admit(NewRun(
        run_id=run_id_of(intent),
        run_equivalence_key=run_equivalence_key(intent),
        intent_fingerprint=intent_fingerprint(intent),
        tenant_id=intent.tenant_id, namespace=intent.namespace, scenario_id=intent.scenario_id,
        intent=intent.to_avro(), evidence_root=intent.evidence_root,
    ))
    other = next_entry(run_id_of(intent), None, kind=LedgerKind.WAITING, at_ms=1, lease_epoch=9,
                       body={"plan_hash": None, "reason_code": "EVIDENCE_MISSING", "detail": "x",
                             "intent": intent.to_avro()})
    world.truth.append(world.keys(intent), other)
    world.write_complete(intent)
    with pytest.raises(LedgerRaceError):
        processor.drive(run_id_of(intent), fresh=True)
    assert world.kinds(intent) == ["WAITING"]
    assert world.ready_events() == []


def test_a_fenced_holder_cannot_advance_the_index(world: World) -> None:
    intent = world.intent()
    first = world.processor()
    world.handle(first, intent)  # WAITING, lease released
    old_leases = InMemoryLeases(world.db)
    stale = old_leases.acquire(run_id_of(intent))
    old_leases.crash()  # its session died: the lock is gone with it
    with pytest.raises(LeaseLostError):
        stale.advance(RunStatus.READY, ledger_seq=5, ledger_head_hash="c" * 64)
    newer = InMemoryLeases(world.db).acquire(run_id_of(intent))
    with pytest.raises(StaleEpochError):
        world.db.advance(run_id_of(intent), stale.epoch, RunStatus.READY, ledger_seq=5, ledger_head_hash="c" * 64)
    assert newer.epoch == stale.epoch + 1
    assert world.index.get(run_id_of(intent)).status is RunStatus.WAITING  # type: ignore[union-attr]


def test_a_run_leased_elsewhere_is_left_to_its_holder(world: World) -> None:
    intent = world.intent()
    world.handle(world.processor(), intent)
    with InMemoryLeases(world.db).acquire(run_id_of(intent)):
        outcome = world.processor().drive(run_id_of(intent), fresh=False, wait=0.0)
    assert outcome.action is Action.BUSY


# --------------------------------------------------------------------------- crash re-drive
@pytest.mark.parametrize("point", [CrashPoint.AFTER_PLAN_WRITE, CrashPoint.AFTER_FACTS_WRITE,
                                   CrashPoint.AFTER_LEDGER_READY, CrashPoint.AFTER_PRODUCE_BEFORE_MARK])
def test_a_crash_at_any_point_is_redriven_to_exactly_one_ready(world: World, point: CrashPoint) -> None:
    intent = world.intent()
    world.write_complete(intent)
    leases = InMemoryLeases(world.db)
    crashed = world.processor(crash=RaisingCrashPoints(point.value), leases=leases)
    with pytest.raises(SimulatedCrash):
        world.handle(crashed, intent)
    leases.crash()  # the process died: its Postgres sessions (and the lock) with it
    restarted = world.processor()
    restarted.flush_outbox()
    world.handle(restarted, intent)  # the uncommitted message is delivered again
    assert world.kinds(intent) == ["READY"]
    facts = Counter((m.key, m.value) for m in world.sink.messages(TOPICS.ready))
    assert len(facts) == 1  # one fact; any re-send is byte-identical
    row = world.index.get(run_id_of(intent))
    assert row is not None and row.status is RunStatus.READY
    assert all(p.published_at is not None for p in world.index.publications(row.run_id))


# --------------------------------------------------------------------------- outbox
def test_an_unacknowledged_publication_stays_in_the_outbox_until_flushed(world: World) -> None:
    processor = world.processor()
    intent = world.intent()
    world.write_complete(intent)
    world.sink.fail_next()
    with pytest.raises(KafkaUnavailableError):
        world.handle(processor, intent)
    [pending] = world.index.unpublished()
    assert pending.kind.value == "READY"
    assert processor.flush_outbox() == 1
    assert world.index.unpublished() == []
    assert [m.value for m in world.sink.messages(TOPICS.ready)] == [pending.payload]
    # The redelivered intent is a duplicate of a READY run now: nothing is sent again.
    assert world.handle(processor, intent).action is Action.DUPLICATE
    assert len(world.sink.messages(TOPICS.ready)) == 1


def test_a_status_entry_written_before_a_crash_is_caught_up_with_its_plan(world: World,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # The process dies between a QUARANTINED entry and its index write (another thread's
    # crash point, in the kill matrix). The next step catches the index up: status, reason,
    # the plan hash the entry records, and the status event.
    from worker.app.testing import InMemoryLease

    intent = world.intent()
    world.write_gate_3a(intent)
    world.write_gate_6b(intent, tamper={"part-1": b"evil\n"})

    def dies(*args: object, **kwargs: object) -> None:
        raise SimulatedCrash("between the ledger entry and the index write")

    with monkeypatch.context() as patched:
        patched.setattr(InMemoryLease, "advance", dies)
        with pytest.raises(SimulatedCrash):
            world.handle(world.processor(), intent)
    assert world.kinds(intent) == ["QUARANTINED"] and world.status_events() == []
    world.handle(world.processor(), intent.model_copy(update={"request_id": "redelivered"}))
    row = world.index.get(run_id_of(intent))
    assert row is not None and (row.status, row.reason_code, row.ledger_seq) == (
        RunStatus.QUARANTINED, "DIGEST_MISMATCH", 0)
    assert row.plan_hash is not None and world.truth.read_plan(world.keys(intent), row.plan_hash).run_id == row.run_id
    assert [(e.status.value, e.reason_code) for e in world.status_events()] == [("QUARANTINED", "DIGEST_MISMATCH")]


def test_a_trigger_before_the_first_decision_leaves_a_readable_ledger(world: World) -> None:
    # The run is admitted but its first step never wrote an entry (it died before); a trigger
    # is the first entry (it carries the intent), the step then decides as usual.
    intent = world.intent()
    run_id = run_id_of(intent)
    world.index.admit(NewRun(
        run_id=run_id, run_equivalence_key=run_equivalence_key(intent), intent_fingerprint=intent_fingerprint(intent),
        tenant_id=intent.tenant_id, namespace=intent.namespace, scenario_id=intent.scenario_id,
        intent=intent.to_avro(), evidence_root=intent.evidence_root,
    ))
    outcome = world.handle_trigger(world.processor(), world.trigger(run_id, TriggerKind.EVIDENCE_ARRIVED))
    assert (outcome.action, outcome.detail) == (Action.WAITING, "EVIDENCE_MISSING")
    assert world.kinds(intent) == ["TRIGGER", "WAITING"]
    world.write_complete(intent)
    world.clock.advance(60)
    assert [o.action for o in world.processor().sweep()] == [Action.READY]


def test_a_trigger_for_a_run_leased_elsewhere_is_retried_not_dropped(world: World) -> None:
    from worker.errors import RunBusyError

    intent = world.intent()
    world.handle(world.processor(), intent)
    processor = world.processor()
    processor = processor.replace(trigger_lease_wait=0.0)
    trigger = world.trigger(run_id_of(intent), TriggerKind.EVIDENCE_ARRIVED)
    with InMemoryLeases(world.db).acquire(run_id_of(intent)), pytest.raises(RunBusyError):
        world.handle_trigger(processor, trigger)
    world.write_complete(intent)
    assert world.handle_trigger(processor, trigger).action is Action.READY  # the retry, once the lease is free
