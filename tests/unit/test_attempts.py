"""The pure engine-attempt decisions (worker.core.attempts): backoff, deadlines, moves."""

from __future__ import annotations

import pytest

from worker.core.attempts import EngineBudget, Move, after_missing, before_verify
from worker.core.engine import EngineStatus
from worker.core.identity import attempt_id_for
from worker.core.ledger import EngineAttempt
from worker.core.models import Strategy

RUN = "0123456789abcdef0123456789abcdef"
BUDGET = EngineBudget(attempt_timeout_ms=100_000, retry_backoff_ms=30_000, max_attempts=3)


def attempt(n: int, status: EngineStatus | None, *, at: int = 0, result_at: int | None = None) -> EngineAttempt:
    return EngineAttempt(n, attempt_id_for(RUN, n), status, requested_at_ms=at, deadline_ms=at + 100_000,
                         result_at_ms=result_at)


def test_backoff_doubles_and_is_capped_at_the_attempt_timeout() -> None:
    assert [BUDGET.backoff_ms(n) for n in (0, 1, 2, 3, 4, 60)] == [0, 30_000, 60_000, 100_000, 100_000, 100_000]


def test_an_attempt_deadline_never_passes_the_run_deadline() -> None:
    assert BUDGET.deadline_ms(1_000, None) == 101_000
    assert BUDGET.deadline_ms(1_000, 50_000) == 50_000
    assert BUDGET.deadline_ms(1_000, 500_000) == 101_000


def test_the_settings_seconds_become_milliseconds() -> None:
    assert EngineBudget.from_seconds(attempt_timeout=1.5, retry_backoff=0.25, max_attempts=2) == EngineBudget(
        attempt_timeout_ms=1_500, retry_backoff_ms=250, max_attempts=2)
    with pytest.raises(ValueError):
        EngineBudget(max_attempts=0)


@pytest.mark.parametrize(("strategy", "attempts", "now", "run_deadline", "move"), [
    (Strategy.REUSE, (), 0, None, Move.VERIFY),
    (Strategy.AUTO, (), 0, None, Move.VERIFY),
    (Strategy.INVOKE, (), 0, None, Move.REQUEST),
    (Strategy.INVOKE, (), 10, 10, Move.VERIFY),  # past the run's deadline: only the verdict counts
    (Strategy.AUTO, (attempt(1, None),), 99_999, None, Move.WAIT),
    (Strategy.AUTO, (attempt(1, None),), 100_000, None, Move.VERIFY),  # overdue
    (Strategy.INVOKE, (attempt(1, EngineStatus.FAILED, result_at=5),), 6, None, Move.VERIFY),
])
def test_before_verify(strategy: Strategy, attempts: tuple[EngineAttempt, ...], now: int,
                       run_deadline: int | None, move: Move) -> None:
    assert before_verify(strategy, attempts, now_ms=now, run_deadline_ms=run_deadline).move is move


def test_an_open_attempt_waits_until_its_deadline_or_the_run_deadline() -> None:
    waiting = before_verify(Strategy.AUTO, (attempt(1, None),), now_ms=5, run_deadline_ms=40_000)
    assert (waiting.reason_code, waiting.until_ms) == ("ENGINE_RUNNING", 40_000)


@pytest.mark.parametrize(("attempts", "now", "move", "reason", "attempt_no"), [
    ((), 0, Move.REQUEST, "", 1),
    ((attempt(1, EngineStatus.FAILED, result_at=1_000),), 30_999, Move.WAIT, "ENGINE_FAILED", None),
    ((attempt(1, EngineStatus.FAILED, result_at=1_000),), 31_000, Move.REQUEST, "", 2),
    ((attempt(1, EngineStatus.SUCCEEDED, result_at=1_000),), 2_000, Move.WAIT, "ENGINE_EVIDENCE_INCOMPLETE", None),
    ((attempt(1, None),), 100_000, Move.WAIT, "ENGINE_TIMEOUT", None),
    ((attempt(1, None),), 130_000, Move.REQUEST, "", 2),
    ((attempt(1, EngineStatus.FAILED), attempt(2, None), attempt(3, EngineStatus.FAILED, result_at=9)), 10,
     Move.FAIL, "ENGINE_FAILED", None),
    ((attempt(1, EngineStatus.FAILED), attempt(2, EngineStatus.FAILED), attempt(3, None)), 100_000,
     Move.FAIL, "ENGINE_TIMEOUT", None),
])
def test_after_missing(attempts: tuple[EngineAttempt, ...], now: int, move: Move, reason: str,
                       attempt_no: int | None) -> None:
    decided = after_missing(Strategy.AUTO, attempts, now_ms=now, budget=BUDGET)
    assert decided is not None
    assert (decided.move, decided.reason_code, decided.attempt_no) == (move, reason, attempt_no)


def test_reuse_has_no_engine_path() -> None:
    assert after_missing(Strategy.REUSE, (), now_ms=0, budget=BUDGET) is None
