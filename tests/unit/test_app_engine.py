"""The engine attempt lifecycle on the in-memory ports (contract §8): strategy semantics,
requests through the outbox, results under the lease, retries, timeouts, crashes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.harness.app_world import BUDGET, TOPICS, World
from worker.app.crashpoints import CrashPoint
from worker.app.processor import Action, RunProcessor
from worker.app.testing import RaisingCrashPoints, SimulatedCrash
from worker.core.engine import EngineStatus
from worker.core.identity import attempt_id_for, run_id_of
from worker.core.models import RunIntent, RunStatus, Strategy, TriggerKind
from worker.errors import EngineResultConflictError, RunNotFoundError, UnknownAttemptError

INVOKE, AUTO, REUSE = Strategy.INVOKE, Strategy.AUTO, Strategy.REUSE


@pytest.fixture
def world() -> World:
    return World()


def statuses(world: World, intent: RunIntent) -> list[tuple[str, str]]:
    """(status, reason_code) of every status event of ``intent``'s run, in order."""
    run_id = run_id_of(intent)
    return [(e.status.value, e.reason_code) for e in world.status_events() if e.run_id == run_id]


def row_of(world: World, intent: RunIntent) -> tuple[RunStatus, str | None]:
    row = world.index.get(run_id_of(intent))
    assert row is not None
    return row.status, row.reason_code


# --------------------------------------------------------------------------- strategies
def test_invoke_without_evidence_requests_attempt_one_then_a_twice_delivered_success_is_one_ready(
        world: World) -> None:
    processor = world.processor()
    intent = world.intent(strategy=INVOKE)
    outcome = world.handle(processor, intent)
    run_id = run_id_of(intent)
    assert (outcome.action, outcome.detail) == (Action.ENGINE_REQUESTED, attempt_id_for(run_id, 1))
    [request] = world.engine_requests()
    assert (request.attempt_no, request.attempt_id, request.run_id) == (1, attempt_id_for(run_id, 1), run_id)
    assert request.evidence_root == intent.evidence_root and request.output_ids == intent.output_ids
    assert request.attempt_deadline - request.requested_at == timedelta(milliseconds=BUDGET.attempt_timeout_ms)
    assert world.kinds(intent) == ["WAITING", "ENGINE_REQUESTED"]
    assert statuses(world, intent) == [("WAITING", "ENGINE_RUNNING")]
    assert row_of(world, intent) == (RunStatus.WAITING, "ENGINE_RUNNING")
    [sent] = world.sink.messages(TOPICS.engine_requests)
    assert sent.key == run_id.encode() and sent.header("sr-idempotency-key") == f"{run_id}:engine:{request.attempt_id}"

    world.clock.advance(120)
    world.write_complete(intent)
    success = world.result(request)
    first = world.handle_result(processor, success)
    second = world.handle_result(processor, success)
    assert first.action is Action.READY and second.action is Action.UNCHANGED
    assert len(world.ready_events()) == 1 and len(world.engine_requests()) == 1
    assert world.kinds(intent) == ["WAITING", "ENGINE_REQUESTED", "ENGINE_RESULT", "READY"]


def test_invoke_requests_first_even_when_the_evidence_is_already_there(world: World) -> None:
    processor = world.processor()
    intent = world.intent(strategy=INVOKE)
    world.write_complete(intent)
    assert world.handle(processor, intent).action is Action.ENGINE_REQUESTED
    # While the attempt is open nothing is due before its deadline, and a step that runs
    # anyway (a duplicate of a run still ADMITTED would) does not verify: the engine may
    # still be writing.
    world.clock.advance(60)
    assert processor.sweep() == []
    again = processor.drive(run_id_of(intent), fresh=False)
    assert (again.action, again.detail) == (Action.UNCHANGED, "ENGINE_RUNNING")
    assert world.ready_events() == []
    world.handle_result(processor, world.result(world.engine_requests()[0]))
    assert len(world.ready_events()) == 1


def test_auto_with_complete_evidence_is_ready_without_any_request(world: World) -> None:
    intent = world.intent(strategy=AUTO)
    world.write_complete(intent)
    assert world.handle(world.processor(), intent).action is Action.READY
    assert world.engine_requests() == [] and world.kinds(intent) == ["READY"]


def test_auto_with_missing_evidence_requests_attempt_one(world: World) -> None:
    intent = world.intent(strategy=AUTO)
    assert world.handle(world.processor(), intent).action is Action.ENGINE_REQUESTED
    assert [r.attempt_no for r in world.engine_requests()] == [1]


def test_auto_never_fixes_a_digest_mismatch_by_invoking(world: World) -> None:
    intent = world.intent(strategy=AUTO)
    world.write_gate_3a(intent)
    world.write_gate_6b(intent, tamper={"part-1": b"evil\n"})
    outcome = world.handle(world.processor(), intent)
    assert (outcome.action, outcome.detail) == (Action.QUARANTINED, "DIGEST_MISMATCH")
    assert world.engine_requests() == []


def test_reuse_without_evidence_waits_and_never_requests(world: World) -> None:
    processor = world.processor()
    intent = world.intent(strategy=REUSE)
    assert world.handle(processor, intent).action is Action.WAITING
    for _ in range(5):  # well past every attempt timeout and backoff
        world.clock.advance(BUDGET.attempt_timeout_ms / 1000)
        processor.sweep()
    assert world.engine_requests() == []
    assert row_of(world, intent) == (RunStatus.WAITING, "EVIDENCE_MISSING")


# --------------------------------------------------------------------------- retries
def test_failed_results_retry_with_doubling_backoff_then_fail_engine_failed(world: World) -> None:
    processor = world.processor()
    intent = world.intent(strategy=INVOKE)
    world.handle(processor, intent)
    for attempt_no, backoff in ((1, 30), (2, 60)):
        request = world.engine_requests()[-1]
        assert request.attempt_no == attempt_no
        outcome = world.handle_result(processor, world.result(request, EngineStatus.FAILED, detail="exit 3"))
        assert (outcome.action, outcome.detail) == (Action.WAITING, "ENGINE_FAILED")
        world.clock.advance(backoff - 1)
        processor.sweep()
        assert len(world.engine_requests()) == attempt_no, "retried before the backoff was over"
        world.clock.advance(1)
        assert [o.action for o in processor.sweep()] == [Action.ENGINE_REQUESTED]
    third = world.engine_requests()[-1]
    assert third.attempt_no == 3 and third.attempt_id == attempt_id_for(run_id_of(intent), 3)
    outcome = world.handle_result(processor, world.result(third, EngineStatus.FAILED, detail="exit 3"))
    assert (outcome.action, outcome.detail) == (Action.FAILED, "ENGINE_FAILED")
    assert world.ready_events() == []
    assert statuses(world, intent)[-1] == ("FAILED", "ENGINE_FAILED")
    assert [r.attempt_no for r in world.engine_requests()] == [1, 2, 3]


def test_a_silent_engine_times_out_attempt_by_attempt_then_fails_engine_timeout(world: World) -> None:
    processor = world.processor()
    intent = world.intent(strategy=INVOKE)
    world.handle(processor, intent)
    timeout = BUDGET.attempt_timeout_ms / 1000
    world.clock.advance(timeout - 1)
    processor.sweep()
    assert len(world.engine_requests()) == 1
    world.clock.advance(1)  # attempt 1's deadline
    processor.sweep()
    assert row_of(world, intent) == (RunStatus.WAITING, "ENGINE_TIMEOUT")
    world.clock.advance(30)
    processor.sweep()
    assert [r.attempt_no for r in world.engine_requests()] == [1, 2]
    world.clock.advance(timeout)  # attempt 2's deadline; the backoff doubles to 60 s
    processor.sweep()
    assert row_of(world, intent) == (RunStatus.WAITING, "ENGINE_TIMEOUT")
    world.clock.advance(59)
    processor.sweep()
    assert len(world.engine_requests()) == 2
    world.clock.advance(1)
    processor.sweep()
    assert [r.attempt_no for r in world.engine_requests()] == [1, 2, 3]
    world.clock.advance(timeout)
    outcomes = processor.sweep()
    assert [(o.action, o.detail) for o in outcomes] == [(Action.FAILED, "ENGINE_TIMEOUT")]
    assert statuses(world, intent) == [("WAITING", "ENGINE_RUNNING"), ("WAITING", "ENGINE_TIMEOUT"),
                                       ("WAITING", "ENGINE_RUNNING"), ("WAITING", "ENGINE_TIMEOUT"),
                                       ("WAITING", "ENGINE_RUNNING"), ("FAILED", "ENGINE_TIMEOUT")]


def test_a_success_with_incomplete_evidence_counts_as_a_failed_attempt(world: World) -> None:
    processor = world.processor()
    intent = world.intent(strategy=INVOKE)
    world.handle(processor, intent)
    world.write_gate_3a(intent)  # 6B never appears
    outcome = world.handle_result(processor, world.result(world.engine_requests()[0]))
    assert (outcome.action, outcome.detail) == (Action.WAITING, "ENGINE_EVIDENCE_INCOMPLETE")
    world.clock.advance(30)
    processor.sweep()
    assert [r.attempt_no for r in world.engine_requests()] == [1, 2]


def test_the_run_deadline_wins_over_an_open_attempt(world: World) -> None:
    processor = world.processor()
    intent = world.intent(strategy=INVOKE, deadline=world.clock() + timedelta(minutes=5))
    world.handle(processor, intent)
    request = world.engine_requests()[0]
    # The attempt may not outlive the run.
    assert request.attempt_deadline == intent.deadline
    world.clock.advance(300)
    outcomes = processor.sweep()
    assert [(o.action, o.detail) for o in outcomes] == [(Action.FAILED, "EVIDENCE_MISSING_DEADLINE")]
    # A result after the end is recorded and changes nothing.
    late = world.handle_result(processor, world.result(request))
    assert late.action is Action.UNCHANGED
    assert world.kinds(intent)[-1] == "ENGINE_RESULT" and world.ready_events() == []


def test_evidence_arrived_verifies_even_while_an_attempt_is_open(world: World) -> None:
    processor = world.processor()
    intent = world.intent(strategy=AUTO)
    world.handle(processor, intent)
    world.write_complete(intent)
    outcome = world.handle_trigger(processor, world.trigger(run_id_of(intent), TriggerKind.EVIDENCE_ARRIVED))
    assert outcome.action is Action.READY
    # The engine's result arrives afterwards: recorded, no second READY.
    assert world.handle_result(processor, world.result(world.engine_requests()[0])).action is Action.UNCHANGED
    assert len(world.ready_events()) == 1


# --------------------------------------------------------------------------- hostile results
def test_a_result_for_an_attempt_never_requested_is_refused(world: World) -> None:
    processor = world.processor()
    intent = world.intent(strategy=INVOKE)
    world.handle(processor, intent)
    request = world.engine_requests()[0]
    with pytest.raises(UnknownAttemptError):
        world.handle_result(processor, world.result(request, attempt_id=attempt_id_for(request.run_id, 2)))
    with pytest.raises(UnknownAttemptError):
        world.handle_result(processor, world.result(request, attempt_id="f" * 32))
    assert world.kinds(intent) == ["WAITING", "ENGINE_REQUESTED"]


def test_a_result_for_an_unknown_run_is_refused(world: World) -> None:
    processor = world.processor()
    intent = world.intent(strategy=INVOKE)
    world.handle(processor, intent)
    stranger = world.engine_requests()[0].model_copy(
        update={"run_id": "e" * 32, "attempt_id": attempt_id_for("e" * 32, 1)})
    with pytest.raises(RunNotFoundError):
        world.handle_result(processor, world.result(stranger))


def test_a_stale_result_for_a_superseded_attempt_is_recorded_and_ignored(world: World) -> None:
    processor = world.processor()
    intent = world.intent(strategy=INVOKE)
    world.handle(processor, intent)
    first = world.engine_requests()[0]
    world.clock.advance(BUDGET.attempt_timeout_ms / 1000 + 30)
    processor.sweep()
    processor.sweep()
    assert [r.attempt_no for r in world.engine_requests()] == [1, 2]
    world.write_complete(intent)
    outcome = world.handle_result(processor, world.result(first))
    assert (outcome.action, outcome.detail) == (Action.UNCHANGED, "STALE_ATTEMPT:1")
    assert world.kinds(intent)[-1] == "ENGINE_RESULT" and world.ready_events() == []
    assert row_of(world, intent) == (RunStatus.WAITING, "ENGINE_RUNNING")


def test_a_contradicting_result_is_refused_and_the_first_stands(world: World) -> None:
    processor = world.processor()
    intent = world.intent(strategy=INVOKE)
    world.handle(processor, intent)
    request = world.engine_requests()[0]
    world.handle_result(processor, world.result(request, EngineStatus.FAILED))
    with pytest.raises(EngineResultConflictError):
        world.handle_result(processor, world.result(request, EngineStatus.SUCCEEDED))
    assert world.kinds(intent).count("ENGINE_RESULT") == 1


# --------------------------------------------------------------------------- crashes
@pytest.mark.parametrize("point", [CrashPoint.AFTER_ENGINE_REQUESTED, CrashPoint.AFTER_PRODUCE_BEFORE_MARK])
def test_a_crash_while_requesting_loses_and_doubles_no_attempt(world: World, point: CrashPoint) -> None:
    intent = world.intent(strategy=INVOKE)
    with pytest.raises(SimulatedCrash):
        world.handle(world.processor(crash=RaisingCrashPoints(point.value)), intent)
    world.clock.advance(5)
    restarted = world.processor()
    world.handle(restarted, intent)  # the intent is re-delivered
    restarted.flush_outbox()
    requests = world.sink.messages(TOPICS.engine_requests)
    assert {m.value for m in requests} == {requests[0].value}, "re-sends must be byte-identical"
    assert {r.attempt_no for r in world.engine_requests()} == {1}
    assert world.kinds(intent) == ["WAITING", "ENGINE_REQUESTED"]
    # A message produced before the crash may be sent again, with the same bytes.
    assert set(statuses(world, intent)) == {("WAITING", "ENGINE_RUNNING")}
    assert len({m.value for m in world.sink.messages(TOPICS.status)}) == 1
    assert world.index.unpublished(10) == []


def test_a_crash_after_recording_a_result_is_finished_by_its_redelivery(world: World) -> None:
    intent = world.intent(strategy=INVOKE)
    world.handle(world.processor(), intent)
    world.write_complete(intent)
    success = world.result(world.engine_requests()[0])
    with pytest.raises(SimulatedCrash):
        world.handle_result(world.processor(crash=RaisingCrashPoints(CrashPoint.AFTER_ENGINE_RESULT.value)), success)
    assert world.ready_events() == []
    outcome = world.handle_result(world.processor(), success)
    assert outcome.action is Action.READY and len(world.ready_events()) == 1
    assert world.kinds(intent) == ["WAITING", "ENGINE_REQUESTED", "ENGINE_RESULT", "READY"]


def test_outbox_resends_of_a_request_are_byte_identical(world: World) -> None:
    processor: RunProcessor = world.processor()
    world.sink.fail_next(2)  # the status event and the request are not acknowledged
    intent = world.intent(strategy=INVOKE)
    with pytest.raises(Exception):  # noqa: B017  # the produce failure surfaces to the worker loop
        world.handle(processor, intent)
    assert len(world.index.unpublished(10)) == 2
    assert processor.flush_outbox() == 2
    world.handle(processor, intent)
    values = {m.value for m in world.sink.messages(TOPICS.engine_requests)}
    assert len(values) == 1 and world.index.unpublished(10) == []


def test_an_index_rebuilt_from_s3_can_resend_the_open_attempts_request(world: World) -> None:
    from worker.app.operators import rebuild_index
    from worker.app.testing import InMemoryDatabase, InMemoryRunIndex

    intent = world.intent(strategy=INVOKE)
    world.handle(world.processor(), intent)
    [sent] = world.sink.messages(TOPICS.engine_requests)
    world.db = InMemoryDatabase(world.clock)  # Postgres lost; S3 is the truth
    summary = rebuild_index(truth=world.truth, index=InMemoryRunIndex(world.db), processor=world.processor(),
                            republish=True)
    assert summary.restored == {"WAITING": 1} and summary.publications == 1
    assert world.processor().flush_outbox() == 1
    assert [m.value for m in world.sink.messages(TOPICS.engine_requests)] == [sent.value, sent.value]
