"""Signed input, RETRY, revocation and ordered re-emission (contract §10, §11), on the in-memory ports."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.harness.app_world import TOPICS, World
from worker.app.authentication import InputAuthority
from worker.app.crashpoints import CrashPoint
from worker.app.operators import reemit_run, replay
from worker.app.processor import Action
from worker.app.testing import RaisingCrashPoints, SimulatedCrash
from worker.core.events import current_facts
from worker.core.identity import run_id_of
from worker.core.ledger import LedgerKind, derive_state
from worker.core.models import EventType, RunIntent, RunStatus, Strategy, TriggerKind
from worker.core.signatures import SIGNATURE_HEADER
from worker.core.vocabulary import EVIDENCE_CONTRADICTS_READY
from worker.errors import InputError, UnauthenticatedError
from worker.signing import Signer, key_ring

CORRECTED_6B = {"part-0": b"corrected-0\n", "part-1": b"transactions-1\n"}


@pytest.fixture
def world() -> World:
    return World()


def _ready(world: World, name: str = "r1") -> tuple[RunIntent, str]:
    intent = world.intent(name)
    world.write_complete(intent)
    outcome = world.handle(world.processor(), intent)
    assert outcome.action is Action.READY
    return intent, outcome.detail


def _quarantined(world: World, name: str = "q1") -> RunIntent:
    intent = world.intent(name)
    world.write_gate_3a(intent)
    world.write_gate_6b(intent, tamper={"part-1": b"evil"})
    assert world.handle(world.processor(), intent).action is Action.QUARANTINED
    return intent


def _ops(**kwargs: Any) -> InputAuthority:
    return InputAuthority(operator_allowlist=frozenset({"ops"}), **kwargs)


# --------------------------------------------------------------------------- revocation
@pytest.mark.parametrize("kind", [TriggerKind.SUPERSEDE, TriggerKind.REEVALUATE])
def test_a_ready_whose_evidence_no_longer_verifies_is_revoked(world: World, kind: TriggerKind) -> None:
    intent, old = _ready(world)
    world.write_gate_6b(intent, tamper={"part-1": b"evil"})
    outcome = world.handle_trigger(world.processor(), world.trigger(run_id_of(intent), kind))
    assert (outcome.action, outcome.detail) == (Action.REVOKED, old)
    # REVOKED after the READY it withdraws, on the same key (same partition).
    events = world.ready_events()
    assert [(e.event_type, e.facts_view_hash) for e in events] == [(EventType.READY, old), (EventType.REVOKED, old)]
    assert len({(m.key, m.partition) for m in world.sink.messages(TOPICS.ready)}) == 1
    [status] = world.status_events()
    assert (status.status.value, status.reason_code) == ("QUARANTINED", EVIDENCE_CONTRADICTS_READY)
    assert "DIGEST" in status.detail or "MISMATCH" in status.detail.upper()
    # Append-only: the READY entry is still there, the REVOKED entry follows the trigger.
    assert world.kinds(intent) == ["READY", "TRIGGER", "REVOKED"]
    row = world.index.get(run_id_of(intent))
    assert row is not None and (row.status, row.reason_code) == (RunStatus.QUARANTINED, EVIDENCE_CONTRADICTS_READY)
    state = derive_state(world.ledger(intent))
    assert (state.status, state.revoked, state.facts_view_hash) == (RunStatus.QUARANTINED, (old,), old)


def test_reevaluate_of_a_ready_run_with_intact_evidence_keeps_it(world: World) -> None:
    intent, _ = _ready(world)
    sent = len(world.sink.sent)
    outcome = world.handle_trigger(world.processor(), world.trigger(run_id_of(intent), TriggerKind.REEVALUATE))
    assert (outcome.action, outcome.detail) == (Action.UNCHANGED, "facts still verify")
    assert len(world.sink.sent) == sent
    assert world.kinds(intent) == ["READY", "TRIGGER"]


def test_reevaluate_with_other_complete_evidence_revokes_and_points_at_supersede(world: World) -> None:
    intent, _ = _ready(world)
    world.write_gate_6b(intent, CORRECTED_6B)
    outcome = world.handle_trigger(world.processor(), world.trigger(run_id_of(intent), TriggerKind.REEVALUATE))
    assert outcome.action is Action.REVOKED
    assert "SUPERSEDE" in world.status_events()[-1].detail


def test_after_a_revocation_reemit_and_replay_never_send_the_revoked_ready_as_current(world: World) -> None:
    intent, _ = _ready(world)
    world.write_gate_6b(intent, tamper={"part-1": b"evil"})
    processor = world.processor()
    world.handle_trigger(processor, world.trigger(run_id_of(intent), TriggerKind.REEVALUATE))
    before = len(world.sink.messages(TOPICS.ready))
    # The REEMIT trigger and `sr reemit` refuse: the run is not READY.
    assert world.handle_trigger(processor, world.trigger(run_id_of(intent), TriggerKind.REEMIT, reason="again")) \
        .action is Action.UNCHANGED
    with pytest.raises(InputError, match="not READY"):
        reemit_run(run_id_of(intent), processor=processor, index=world.index, truth=world.truth)
    assert len(world.sink.messages(TOPICS.ready)) == before
    # A replay sends the run's last word, the REVOKED fact, byte-identically, and nothing else.
    summary = replay(iter([world.intent_record(intent)]), processor=processor, index=world.index,
                     truth=world.truth, dry_run=False)
    resent = world.sink.messages(TOPICS.ready)[before:]
    assert summary.reemitted == 1 and [world.codec.decode_ready(m.value).event_type for m in resent] == \
        [EventType.REVOKED]
    assert resent[0].value == world.sink.messages(TOPICS.ready)[1].value


def test_catch_up_after_a_crash_between_revoked_entry_and_index_sends_both_messages(world: World) -> None:
    intent, _ = _ready(world)
    world.write_gate_6b(intent, tamper={"part-1": b"evil"})
    trigger = world.trigger(run_id_of(intent), TriggerKind.REEVALUATE)
    crashing = world.processor(crash=RaisingCrashPoints(CrashPoint.AFTER_LEDGER_REVOKED))
    with pytest.raises(SimulatedCrash):
        world.handle_trigger(crashing, trigger)
    assert world.kinds(intent)[-1] == "REVOKED" and world.ready_events()[-1].event_type is EventType.READY
    # The re-delivered trigger catches the index up and sends what the REVOKED entry implies.
    world.handle_trigger(world.processor(), trigger)
    assert [e.event_type for e in world.ready_events()] == [EventType.READY, EventType.REVOKED]
    assert world.status_events()[-1].reason_code == EVIDENCE_CONTRADICTS_READY
    assert world.index.get(run_id_of(intent)).status is RunStatus.QUARANTINED  # type: ignore[union-attr]


# --------------------------------------------------------------------------- RETRY
def test_retry_of_a_quarantined_run_after_the_evidence_is_fixed_goes_ready(world: World) -> None:
    intent = _quarantined(world)
    world.write_gate_6b(intent)  # the evidence is fixed
    retry = world.trigger(run_id_of(intent), TriggerKind.RETRY)
    outcome = world.handle_trigger(world.processor(authority=_ops()), retry)
    assert outcome.action is Action.READY
    # The quarantine stays on record; the retry is recorded (trigger, then the reopening).
    assert world.kinds(intent) == ["QUARANTINED", "TRIGGER", "RETRIED", "READY"]
    [retried] = [e for e in world.ledger(intent) if e.kind is LedgerKind.RETRIED]
    assert (retried.body["previous_status"], retried.body["requested_by"]) == ("QUARANTINED", "ops")
    [ready] = world.ready_events()
    assert ready.supersedes_facts_view_hash is None  # nothing was revoked: a first READY


def test_retry_after_a_revocation_publishes_a_new_fact_that_names_the_revoked_one(world: World) -> None:
    intent, old = _ready(world)
    world.write_gate_6b(intent, tamper={"part-1": b"evil"})
    world.handle_trigger(world.processor(), world.trigger(run_id_of(intent), TriggerKind.REEVALUATE))
    world.write_gate_6b(intent)  # the same evidence as the revoked READY's, restored
    retry = world.trigger(run_id_of(intent), TriggerKind.RETRY)
    outcome = world.handle_trigger(world.processor(authority=_ops()), retry)
    assert outcome.action is Action.READY and outcome.detail != old
    events = [(e.event_type, e.facts_view_hash, e.supersedes_facts_view_hash) for e in world.ready_events()]
    assert events == [(EventType.READY, old, None), (EventType.REVOKED, old, None),
                      (EventType.READY, outcome.detail, old)]
    assert [e.event_type for e in current_facts(world.ledger(intent))] == [EventType.READY]


@pytest.mark.parametrize("make", ["ready", "waiting"])
def test_retry_of_a_run_that_is_not_failed_or_quarantined_is_refused_and_recorded(world: World, make: str) -> None:
    if make == "ready":
        intent, _ = _ready(world)
    else:
        intent = world.intent("w1")
        world.handle(world.processor(), intent)
    sent = len(world.sink.sent)
    retry = world.trigger(run_id_of(intent), TriggerKind.RETRY)
    outcome = world.handle_trigger(world.processor(authority=_ops()), retry)
    assert outcome.action is Action.REFUSED and outcome.detail.startswith("RETRY_REFUSED:")
    assert world.kinds(intent)[-1] == "TRIGGER" and "RETRIED" not in world.kinds(intent)
    assert len(world.sink.sent) == sent


@pytest.mark.parametrize("allowlist", [frozenset(), frozenset({"alice"})])
def test_retry_by_an_operator_outside_the_allowlist_is_refused_and_recorded(world: World,
                                                                             allowlist: frozenset[str]) -> None:
    intent = _quarantined(world)
    world.write_gate_6b(intent)
    authority = InputAuthority(operator_allowlist=allowlist)
    outcome = world.handle_trigger(world.processor(authority=authority),
                                   world.trigger(run_id_of(intent), TriggerKind.RETRY, by="mallory"))
    assert (outcome.action, outcome.detail) == (Action.REFUSED, "RETRY_NOT_AUTHORIZED")
    [trigger] = [e for e in world.ledger(intent) if e.kind is LedgerKind.TRIGGER]
    assert (trigger.body["kind"], trigger.body["requested_by"]) == ("RETRY", "mallory")
    assert world.index.get(run_id_of(intent)).status is RunStatus.QUARANTINED  # type: ignore[union-attr]


def test_a_redelivered_retry_is_applied_once(world: World) -> None:
    intent = _quarantined(world)
    trigger = world.trigger(run_id_of(intent), TriggerKind.RETRY)
    processor = world.processor(authority=_ops())
    # Evidence still tampered: the retry re-verifies and quarantines again (a new entry).
    assert world.handle_trigger(processor, trigger).action is Action.QUARANTINED
    assert world.handle_trigger(processor, trigger).detail == "RETRY already applied"
    assert world.kinds(intent) == ["QUARANTINED", "TRIGGER", "RETRIED", "QUARANTINED"]
    # A new RETRY (another request) is a second retry.
    world.write_gate_6b(intent)
    world.clock.advance(1)
    assert world.handle_trigger(processor, world.trigger(run_id_of(intent), TriggerKind.RETRY)).action is Action.READY


def test_a_crash_after_the_reopening_is_finished_by_the_redelivered_retry(world: World) -> None:
    intent = _quarantined(world)
    world.write_gate_6b(intent)
    trigger = world.trigger(run_id_of(intent), TriggerKind.RETRY)
    with pytest.raises(SimulatedCrash):
        world.handle_trigger(world.processor(authority=_ops(), crash=RaisingCrashPoints(CrashPoint.AFTER_FACTS_WRITE)),
                             trigger)
    assert world.kinds(intent)[-1] == "RETRIED"
    assert world.handle_trigger(world.processor(authority=_ops()), trigger).action is Action.READY
    assert world.kinds(intent).count("RETRIED") == 1


def test_retry_of_an_engine_run_whose_budget_was_spent_invokes_the_engine_again(world: World) -> None:
    from worker.core.engine import EngineStatus

    processor = world.processor(authority=_ops())
    intent = world.intent("e1", strategy=Strategy.INVOKE)
    world.handle(processor, intent)
    for _ in range(3):  # the unit budget: 3 attempts, each reported FAILED
        [request, *_] = world.engine_requests()[-1:]
        world.handle_result(processor, world.result(request, EngineStatus.FAILED, detail="boom"))
        world.clock.advance(3600)
        processor.sweep()
    state = derive_state(world.ledger(intent))
    assert state.status is RunStatus.FAILED and len(state.attempts) == 3
    outcome = world.handle_trigger(processor, world.trigger(run_id_of(intent), TriggerKind.RETRY))
    assert outcome.action is Action.ENGINE_REQUESTED
    assert world.engine_requests()[-1].attempt_no == 4  # numbering goes on; the budget starts again
    state = derive_state(world.ledger(intent))
    assert (state.status, state.attempts_before_retry, state.retries) == (RunStatus.WAITING, 3, 1)


# --------------------------------------------------------------------------- signed input
def _tenants() -> tuple[Signer, Signer, Signer]:
    return Signer.generate("tenant-a"), Signer.generate("tenant-a"), Signer.generate("tenant-b")


def test_signed_intents_matrix(world: World) -> None:
    a_old, a_new, b = _tenants()
    authority = InputAuthority(tenants=key_ring(a_old, a_new, b, name="SR_SIGNING_KEYS"))
    processor = world.processor(authority=authority)
    stranger = Signer.generate("tenant-a", key_id="tenant-a-unknown")

    def attempt(name: str, **signing: Any) -> Any:
        intent = world.intent(name, tenant="tenant-a")
        world.write_complete(intent)
        return intent, world.handle(processor, intent, **signing)

    def flipped(value: bytes) -> list[tuple[str, bytes]]:
        header = bytearray(a_new.signature_header(value))
        header[-5] ^= 0x01
        return [(SIGNATURE_HEADER, bytes(header))]

    refused = {"unsigned": {}, "other tenant": {"signer": b}, "unknown key id": {"signer": stranger}}
    for name, signing in refused.items():
        intent, outcome = attempt(name.replace(" ", "-"), **signing)
        assert (outcome.action, outcome.detail) == (Action.REJECTED, "UNAUTHENTICATED"), name
        assert world.index.get(run_id_of(intent)) is None, name
    # A flipped bit: the header is built over the exact bytes the record will carry.
    intent = world.intent("flipped", tenant="tenant-a")
    value = world.codec.encode_intent(intent)
    outcome = processor.handle_intent(intent, world.record("sr.run-intents", value, headers=flipped(value)))
    assert outcome.detail == "UNAUTHENTICATED"
    # Rotation: old and new keys of the tenant both verify.
    for name, signer in (("old-key", a_old), ("new-key", a_new)):
        _, outcome = attempt(name, signer=signer)
        assert outcome.action is Action.READY, name
    rejected = [s for s in world.status_events() if s.status.value == "REJECTED"]
    assert len(rejected) == 4 and {s.reason_code for s in rejected} == {"UNAUTHENTICATED"}


def test_an_unauthenticated_intent_costs_no_s3_request_and_no_index_write(world: World) -> None:
    authority = InputAuthority(tenants=key_ring(Signer.generate("tenant-a")))
    processor = world.processor(authority=authority)
    intent = world.intent("x", tenant="tenant-a")
    requests, statements = world.store.requests.copy(), world.db.round_trips
    outcome = world.handle(processor, intent, signer=Signer.generate("tenant-a"))  # unknown key
    assert outcome.detail == "UNAUTHENTICATED"
    assert world.store.requests == requests and world.db.round_trips == statements
    [dead] = world.dlq()
    assert dict(dead.headers)["sr-error-class"] == b"UNAUTHENTICATED"


def test_signed_triggers_matrix(world: World) -> None:
    intent, _ = _ready(world)
    tenant = Signer.generate(intent.tenant_id)
    ops_old, ops_new, eve = Signer.generate("ops"), Signer.generate("ops"), Signer.generate("eve")
    authority = InputAuthority(operators=key_ring(ops_old, ops_new, eve, name="SR_OPERATOR_KEYS"),
                               tenants=key_ring(tenant, name="SR_SIGNING_KEYS"))
    processor = world.processor(authority=authority)
    run_id = run_id_of(intent)
    refused: list[tuple[str, TriggerKind, str, dict[str, Any]]] = [
        ("unsigned", TriggerKind.REEMIT, "ops", {}),
        ("another operator's key", TriggerKind.REEMIT, "ops", {"signer": eve}),
        ("unknown key", TriggerKind.SUPERSEDE, "ops", {"signer": Signer.generate("ops")}),
        ("tenant key on an operator-only kind", TriggerKind.RETRY, "ops", {"signer": tenant}),
        ("garbage header", TriggerKind.REEMIT, "ops", {"headers": [(SIGNATURE_HEADER, b"key=x;ed25519=AAAA")]}),
    ]
    entries = len(world.ledger(intent))
    for name, kind, by, signing in refused:
        with pytest.raises(UnauthenticatedError):
            world.handle_trigger(processor, world.trigger(run_id, kind, by=by, reason=name), **signing)
    assert len(world.ledger(intent)) == entries  # nothing recorded for a refused signature
    for signer in (ops_old, ops_new):  # rotation
        world.clock.advance(1)  # a trigger is identified by who asked for what, when
        outcome = world.handle_trigger(processor, world.trigger(run_id, TriggerKind.REEMIT, reason=signer.key_id),
                                       signer=signer)
        assert outcome.action is Action.REEMITTED
    # The tenant may sign EVIDENCE_ARRIVED / REEVALUATE for its own run; the key id is on record.
    world.clock.advance(1)
    world.handle_trigger(processor, world.trigger(run_id, TriggerKind.REEVALUATE, by=intent.tenant_id), signer=tenant)
    recorded = [e.body.get("key_id") for e in world.ledger(intent) if e.kind is LedgerKind.TRIGGER]
    assert recorded == [ops_old.key_id, ops_new.key_id, tenant.key_id]


def test_signed_engine_results_matrix(world: World) -> None:
    engine, other = Signer.generate("unit-engine"), Signer.generate("another-engine")
    authority = InputAuthority(engines=key_ring(engine, other, name="SR_ENGINE_KEYS"))
    processor = world.processor(authority=authority)
    intent = world.intent("e1", strategy=Strategy.INVOKE)
    world.handle(processor, intent)
    [request] = world.engine_requests()
    result = world.result(request)
    for signing in ({}, {"signer": other}, {"signer": Signer.generate("unit-engine")}):
        with pytest.raises(UnauthenticatedError):
            world.handle_result(processor, result, **signing)
    assert "ENGINE_RESULT" not in world.kinds(intent)
    world.write_complete(intent)
    assert world.handle_result(processor, result, signer=engine).action is Action.READY
    # Rotation: with the engine's old and new keys listed, both verify.
    rotated = Signer.generate("unit-engine")
    both = InputAuthority(engines=key_ring(engine, rotated, other))
    value = world.codec.encode_engine_result(result)
    for signer in (engine, rotated):
        assert both.check_result(result, signer.signature_header(value), value) == signer.key_id


def test_without_key_sets_nothing_is_required(world: World) -> None:
    processor = world.processor(authority=InputAuthority())
    intent = world.intent()
    world.write_complete(intent)
    assert world.handle(processor, intent).action is Action.READY  # unsigned, as before
    assert not InputAuthority().requires_signatures


# --------------------------------------------------------------------------- ordered re-emission
class _SlowLedgerReads:
    """A TruthStore whose ledger reads pause, so a commit can try to come between a
    re-emission's read and its send (the interleaving the run's lease must prevent)."""

    def __init__(self, truth: Any, pause: float) -> None:
        self._truth, self._pause = truth, pause

    def read_ledger(self, keys: Any) -> Any:
        entries = self._truth.read_ledger(keys)
        time.sleep(self._pause)
        return entries

    def __getattr__(self, name: str) -> Any:
        return getattr(self._truth, name)


def _never_old_after_new(world: World, run_id: str, old: str, new: str) -> None:
    ready = [world.codec.decode_ready(m.value) for m in world.sink.messages(TOPICS.ready)
             if m.key == run_id.encode()]
    facts = [(e.event_type, e.facts_view_hash) for e in ready]
    first_new = facts.index((EventType.READY, new))
    assert (EventType.READY, old) not in facts[first_new:], facts


@pytest.mark.parametrize("round_no", range(40))
def test_a_reemit_racing_a_supersede_never_puts_ready_old_after_ready_new(world: World, round_no: int) -> None:
    intent, old = _ready(world)
    run_id = run_id_of(intent)
    world.write_gate_6b(intent, CORRECTED_6B)
    operator = world.processor()
    slow = _SlowLedgerReads(world.truth, pause=0.002 * (round_no % 5))
    results: list[str] = []

    def reemit() -> None:
        for _ in range(3):
            results.append(reemit_run(run_id, processor=operator, index=world.index, truth=slow))  # type: ignore[arg-type]

    thread = threading.Thread(target=reemit)
    thread.start()
    time.sleep(0.001 * (round_no % 7))
    outcome = world.handle_trigger(world.processor(), world.trigger(run_id, TriggerKind.SUPERSEDE))
    thread.join(10)
    assert outcome.action is Action.SUPERSEDED and not thread.is_alive()
    _never_old_after_new(world, run_id, old, outcome.detail)
    assert set(results) <= {old, outcome.detail}
