"""The engine-attempt view of the ledger fold (contract §8): ENGINE_REQUESTED / ENGINE_RESULT
never change a run's status; they build RunState.attempts and RunState.open_attempt."""

from __future__ import annotations

from typing import Any

import pytest

from worker.core.engine import EngineStatus
from worker.core.identity import attempt_id_for
from worker.core.ledger import EngineAttempt, LedgerEntry, LedgerKind, derive_state, next_entry
from worker.core.models import RunStatus
from worker.errors import IntegrityError

RUN = "0123456789abcdef0123456789abcdef"
P, F1 = "9" * 64, "1" * 64
A1, A2, A3 = (attempt_id_for(RUN, n) for n in (1, 2, 3))

Step = tuple[LedgerKind, dict[str, Any]] | tuple[LedgerKind, dict[str, Any], int]


def chain(*steps: Step) -> list[LedgerEntry]:
    entries: list[LedgerEntry] = []
    for i, step in enumerate(steps):
        epoch = step[2] if len(step) == 3 else 1
        entries.append(next_entry(RUN, entries[-1] if entries else None, kind=step[0], at_ms=1000 + i,
                                  lease_epoch=epoch, body=step[1]))
    return entries


def requested(attempt_no: int, attempt_id: str | None = None) -> tuple[LedgerKind, dict[str, Any]]:
    return (LedgerKind.ENGINE_REQUESTED, {"attempt_id": attempt_id or attempt_id_for(RUN, attempt_no),
                                          "attempt_no": attempt_no, "attempt_deadline": 10_000})


def result(attempt_id: str, status: str = "FAILED") -> tuple[LedgerKind, dict[str, Any]]:
    return (LedgerKind.ENGINE_RESULT, {"attempt_id": attempt_id, "status": status, "detail": "d"})


def short(attempts: tuple[EngineAttempt, ...]) -> tuple[tuple[Any, ...], ...]:
    """(attempt_no, attempt_id, status) of each attempt: what most tests compare."""
    return tuple(a[:3] for a in attempts)


def short1(attempt: EngineAttempt | None) -> tuple[Any, ...] | None:
    return None if attempt is None else attempt[:3]


RUNNING = (LedgerKind.WAITING, {"plan_hash": P, "reason_code": "ENGINE_RUNNING", "detail": "attempt open"})
READY = (LedgerKind.READY, {"facts_view_hash": F1, "plan_hash": P})


def test_no_engine_entries_no_attempts() -> None:
    state = derive_state(chain(RUNNING))
    assert (state.attempts, state.open_attempt) == ((), None)


def test_an_open_attempt_then_its_result() -> None:
    opened = derive_state(chain(RUNNING, requested(1)))
    assert opened.status is RunStatus.WAITING and opened.last_reason_code == "ENGINE_RUNNING"
    assert short(opened.attempts) == ((1, A1, None),) and short1(opened.open_attempt) == (1, A1, None)
    done = derive_state(chain(RUNNING, requested(1), result(A1, "SUCCEEDED"), READY))
    assert done.status is RunStatus.READY
    assert short(done.attempts) == ((1, A1, EngineStatus.SUCCEEDED),) and done.open_attempt is None


def test_engine_entries_never_change_status_or_reason() -> None:
    for steps in ((RUNNING, requested(1)), (RUNNING, requested(1), result(A1)), (READY, requested(1), result(A1))):
        full, without = derive_state(chain(*steps)), derive_state(chain(*steps[:1]))
        assert (full.status, full.last_reason_code, full.facts_view_hash) == (
            without.status, without.last_reason_code, without.facts_view_hash)


def test_retries_and_a_timed_out_attempt() -> None:
    # Attempt 1 failed, attempt 2 got no result (timed out) and attempt 3 is open.
    state = derive_state(chain(RUNNING, requested(1), result(A1), requested(2), requested(3)))
    assert short(state.attempts) == ((1, A1, EngineStatus.FAILED), (2, A2, None), (3, A3, None))
    assert short1(state.open_attempt) == (3, A3, None)
    # A late result for the superseded attempt 2 is recorded; attempt 3 stays the open one.
    late = derive_state(chain(RUNNING, requested(1), result(A1), requested(2), requested(3), result(A2, "SUCCEEDED")))
    assert late.attempts[1][:3] == (2, A2, EngineStatus.SUCCEEDED) and short1(late.open_attempt) == (3, A3, None)
    # When the latest attempt has its result, nothing is open, whatever older attempts lack.
    closed = derive_state(chain(RUNNING, requested(1), requested(2), result(A2)))
    assert short(closed.attempts) == ((1, A1, None), (2, A2, EngineStatus.FAILED)) and closed.open_attempt is None


def test_repeats_change_nothing() -> None:
    base = derive_state(chain(RUNNING, requested(1), result(A1), requested(2)))
    again = derive_state(chain(RUNNING, requested(1), result(A1), requested(1), requested(2), requested(2),
                               result(A1, "SUCCEEDED")))
    assert (short(again.attempts), short1(again.open_attempt)) == (short(base.attempts), short1(base.open_attempt))
    assert again.attempts[0].result_at_ms == base.attempts[0].result_at_ms  # the first result's time stands
    assert again.attempts[0].status is EngineStatus.FAILED  # the first recorded result stands


def test_fenced_engine_entries_are_ignored() -> None:
    entries = chain((*RUNNING, 2), (*requested(1), 2), (*result(A1), 1), (*requested(2), 1))
    state = derive_state(entries)
    assert state.fenced_seqs == (2, 3)
    assert short(state.attempts) == ((1, A1, None),) and short1(state.open_attempt) == (1, A1, None)


@pytest.mark.parametrize("steps", [
    [RUNNING, requested(2)],  # attempt 2 without attempt 1
    [RUNNING, requested(1), requested(3)],  # a gap
    [RUNNING, requested(1, attempt_id=A2)],  # the id of another attempt
    [RUNNING, requested(1, attempt_id=attempt_id_for("f" * 32, 1))],  # the id of another run's attempt
    [RUNNING, (LedgerKind.ENGINE_REQUESTED, {"attempt_id": A1, "attempt_no": 0, "attempt_deadline": 1})],
    [RUNNING, (LedgerKind.ENGINE_REQUESTED, {"attempt_id": A1, "attempt_no": True, "attempt_deadline": 1})],
    [RUNNING, (LedgerKind.ENGINE_REQUESTED, {"attempt_id": A1})],
    [RUNNING, (LedgerKind.ENGINE_REQUESTED, {"attempt_no": 1})],
    [RUNNING, (LedgerKind.ENGINE_REQUESTED, {"attempt_id": A1, "attempt_no": 1})],  # no deadline
    [RUNNING, (LedgerKind.ENGINE_REQUESTED, {"attempt_id": A1, "attempt_no": 1, "attempt_deadline": 5})],  # before
    [RUNNING, (LedgerKind.ENGINE_REQUESTED, {"attempt_id": A1, "attempt_no": 1, "attempt_deadline": "9"})],
    [RUNNING, result(A1)],  # a result for an attempt never requested
    [RUNNING, requested(1), result(A2)],
    [RUNNING, requested(1), result("A" * 32)],
    [RUNNING, requested(1), (LedgerKind.ENGINE_RESULT, {"attempt_id": A1, "status": "RUNNING", "detail": "d"})],
    [RUNNING, requested(1), (LedgerKind.ENGINE_RESULT, {"attempt_id": A1, "status": 1, "detail": "d"})],
])
def test_engine_entries_that_do_not_fit_fail_closed(steps: list[Step]) -> None:
    with pytest.raises(IntegrityError):
        derive_state(chain(*steps))


def test_engine_entries_alone_establish_no_status() -> None:
    with pytest.raises(IntegrityError, match="never establishes a status"):
        derive_state(chain(requested(1), result(A1)))


def test_attempt_times_and_detail_come_from_the_entries() -> None:
    # chain() stamps entry i at 1000 + i ms; requested() sets the deadline at 10,000 ms.
    state = derive_state(chain(RUNNING, requested(1), result(A1), requested(2)))
    first, second = state.attempts
    assert (first.requested_at_ms, first.deadline_ms, first.result_at_ms, first.detail) == (1001, 10_000, 1002, "d")
    assert (second.requested_at_ms, second.deadline_ms, second.result_at_ms, second.detail) == (1003, 10_000, None, "")
