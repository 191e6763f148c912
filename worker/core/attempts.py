"""Engine attempt decisions (contract §8): pure functions of the strategy, the ledger's attempt
view (:attr:`~worker.core.ledger.RunState.attempts`), the retry budget and the clock.

A run step asks twice. :func:`before_verify` says whether to verify the evidence at all — an
open attempt that is not overdue is left alone (the engine is still writing), INVOKE's first
step requests attempt 1 without looking — and :func:`after_missing` says what evidence that
is still missing means: request an attempt, wait out a retry backoff, or fail once the budget
is spent. Everything else (COMPLETE → READY, a digest mismatch → QUARANTINED, the run's own
deadline → FAILED) is the ordinary classification and wins over the engine path: a mismatch is
never "fixed" by invoking the engine.

An attempt counts as failed when its result is FAILED, when it reported SUCCEEDED but the
evidence is still incomplete (``ENGINE_EVIDENCE_INCOMPLETE``), or when no result came by its
``attempt_deadline`` (``ENGINE_TIMEOUT``). Attempt ``n + 1`` is requested ``backoff(n)`` after
attempt ``n`` ended (its result's time, or its deadline); once ``max_attempts`` attempts failed
the run is FAILED with ``ENGINE_TIMEOUT`` if the last one timed out, else ``ENGINE_FAILED``.

All times are epoch milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

from worker.core.engine import EngineStatus
from worker.core.ledger import EngineAttempt
from worker.core.models import Strategy
from worker.core.vocabulary import ENGINE_EVIDENCE_INCOMPLETE, ENGINE_FAILED, ENGINE_RUNNING, ENGINE_TIMEOUT

__all__ = ["EngineBudget", "EngineMove", "Move", "after_missing", "before_verify", "failure_of"]

_MS: Final = 1000


@dataclass(frozen=True, slots=True)
class EngineBudget:
    """How long an attempt may take, how long to wait before the next one, and how many there are.

    ``attempt_timeout_ms`` / ``retry_backoff_ms`` are milliseconds (the settings are seconds:
    use :meth:`from_seconds`).
    """

    attempt_timeout_ms: int = 900 * _MS
    retry_backoff_ms: int = 30 * _MS
    max_attempts: int = 3

    def __post_init__(self) -> None:
        """Raises:
            ValueError: a non-positive timeout or attempt count, or a negative backoff.
        """
        if self.attempt_timeout_ms < 1 or self.max_attempts < 1 or self.retry_backoff_ms < 0:
            raise ValueError("engine budget: timeout and max_attempts must be positive, backoff not negative")

    @classmethod
    def from_seconds(cls, *, attempt_timeout: float, retry_backoff: float, max_attempts: int) -> EngineBudget:
        """The budget from the settings' seconds."""
        return cls(attempt_timeout_ms=round(attempt_timeout * _MS), retry_backoff_ms=round(retry_backoff * _MS),
                   max_attempts=max_attempts)

    def backoff_ms(self, failed_attempts: int) -> int:
        """The wait before attempt ``failed_attempts + 1``: the backoff, doubled per earlier
        failed attempt, never more than the attempt timeout."""
        if failed_attempts < 1:
            return 0
        # min() before the shift would overflow nothing in Python, but keep the exponent sane.
        return min(self.retry_backoff_ms << min(failed_attempts - 1, 40), self.attempt_timeout_ms)

    def deadline_ms(self, requested_at_ms: int, run_deadline_ms: int | None) -> int:
        """``attempt_deadline`` of an attempt requested at ``requested_at_ms``: the attempt
        timeout later, but no later than the run's own deadline (work past it is wasted)."""
        deadline = requested_at_ms + self.attempt_timeout_ms
        if run_deadline_ms is not None and requested_at_ms < run_deadline_ms < deadline:
            return run_deadline_ms
        return deadline


class Move(StrEnum):
    """What the engine path decides for a run step."""

    VERIFY = "VERIFY"  # verify the evidence (and ask after_missing if it is incomplete)
    WAIT = "WAIT"  # nothing to do until ``until_ms`` (an open attempt, or a retry backoff)
    REQUEST = "REQUEST"  # request attempt ``attempt_no`` now
    FAIL = "FAIL"  # the retry budget is spent


@dataclass(frozen=True, slots=True)
class EngineMove:
    """One decision. ``reason_code`` / ``detail`` are for the run's status (WAIT and FAIL);
    ``until_ms`` is when to look again (WAIT); ``attempt_no`` the attempt to request (REQUEST)."""

    move: Move
    reason_code: str = ""
    detail: str = ""
    until_ms: int | None = None
    attempt_no: int | None = None


_VERIFY: Final = EngineMove(Move.VERIFY)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / _MS, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def before_verify(strategy: Strategy, attempts: Sequence[EngineAttempt], *, now_ms: int,
                  run_deadline_ms: int | None, counted_from: int = 0) -> EngineMove:
    """Whether this step verifies the evidence (VERIFY), waits for an open attempt (WAIT,
    ``ENGINE_RUNNING``, until its deadline or the run's, whichever is first) or requests
    the first attempt without verifying (REQUEST: INVOKE's first step).

    ``counted_from``: attempts before this index were made before a RETRY (contract §11;
    :attr:`~worker.core.ledger.RunState.attempts_before_retry`) and are left out of every
    decision; numbering goes on after them.

    Past the run's deadline the answer is always VERIFY: the classification then fails the run
    unless the evidence is complete.
    """
    if strategy is Strategy.REUSE or (run_deadline_ms is not None and now_ms >= run_deadline_ms):
        return _VERIFY
    recent = attempts[counted_from:]
    last = recent[-1] if recent else None
    if last is not None and last.status is None and now_ms < last.deadline_ms:
        until = last.deadline_ms if run_deadline_ms is None else min(last.deadline_ms, run_deadline_ms)
        return EngineMove(Move.WAIT, ENGINE_RUNNING,
                          f"engine attempt {last.attempt_no} ({last.attempt_id}) is running; "
                          f"no result expected after {_iso(last.deadline_ms)}", until_ms=until)
    if last is None and strategy is Strategy.INVOKE:
        return EngineMove(Move.REQUEST, attempt_no=len(attempts) + 1)
    return _VERIFY


def failure_of(attempt: EngineAttempt) -> tuple[str, int, str]:
    """Why ``attempt`` (the latest, with evidence still missing) counts as failed: its reason
    code, when it ended (ms) and a phrase for the status detail."""
    if attempt.status is None:
        return ENGINE_TIMEOUT, attempt.deadline_ms, f"sent no result by {_iso(attempt.deadline_ms)}"
    ended = attempt.result_at_ms if attempt.result_at_ms is not None else attempt.requested_at_ms
    if attempt.status is EngineStatus.SUCCEEDED:
        return ENGINE_EVIDENCE_INCOMPLETE, ended, "reported SUCCEEDED but the evidence is incomplete"
    detail = f": {attempt.detail}" if attempt.detail else ""
    return ENGINE_FAILED, ended, f"reported FAILED{detail}"


def after_missing(strategy: Strategy, attempts: Sequence[EngineAttempt], *, now_ms: int,
                  budget: EngineBudget, counted_from: int = 0) -> EngineMove | None:
    """What missing evidence (before the run's deadline) means on the engine path.

    Returns None for REUSE (the run simply waits for evidence, as without an engine);
    otherwise REQUEST the first or next attempt, WAIT out the backoff (reason: why the last
    attempt failed), or FAIL when ``budget.max_attempts`` attempts failed. Attempts before
    ``counted_from`` (made before a RETRY) do not count; see :func:`before_verify`.
    """
    if strategy is Strategy.REUSE:
        return None
    number = len(attempts) + 1  # the next attempt's number: numbering never restarts
    recent = attempts[counted_from:]
    if not recent:
        return EngineMove(Move.REQUEST, attempt_no=number)
    last = recent[-1]
    if last.status is None and now_ms < last.deadline_ms:
        # Open and not overdue (a caller that verified anyway, e.g. past the run deadline).
        return EngineMove(Move.WAIT, ENGINE_RUNNING, f"engine attempt {last.attempt_no} is running",
                          until_ms=last.deadline_ms)
    reason, ended_ms, what = failure_of(last)
    done, allowed = len(recent), budget.max_attempts
    if done >= allowed:
        final = ENGINE_TIMEOUT if reason == ENGINE_TIMEOUT else ENGINE_FAILED
        return EngineMove(Move.FAIL, final, f"engine attempt {done} of {allowed} {what}; no attempts left")
    retry_at = ended_ms + budget.backoff_ms(done)
    if now_ms >= retry_at:
        return EngineMove(Move.REQUEST, attempt_no=number)
    return EngineMove(Move.WAIT, reason,
                      f"engine attempt {done} of {allowed} {what}; attempt {done + 1} at {_iso(retry_at)}",
                      until_ms=retry_at)
