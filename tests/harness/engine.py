"""Engine requests as SR sends them (contract §8), for tests of the reference engine."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.harness.workers import ServiceThread
from worker.core.engine import EngineRequest
from worker.core.events import engine_request
from worker.core.identity import attempt_id_for, run_id_of
from worker.core.ledger import LedgerKind, next_entry
from worker.core.ledger_bodies import EngineRequestedBody, body_of
from worker.core.models import RunIntent, millis
from worker.core.plan import build_plan, plan_hash
from worker.core.policy import Policy
from worker.engine.loop import SimulatorLoop
from worker.engine.simulator import SimulatorConfig
from worker.settings import Settings

__all__ = ["EngineThread", "engine_request_for"]


def engine_request_for(intent: RunIntent, policy: Policy, *, attempt_no: int = 1,
                       requested_at: datetime | None = None, attempt_timeout: float = 900.0) -> EngineRequest:
    """The EngineRequest of attempt ``attempt_no`` of ``intent``'s run, planned under ``policy``:
    built by SR's own :func:`~worker.core.events.engine_request` from the ENGINE_REQUESTED
    entry SR would write.

    ``requested_at`` defaults to now; ``attempt_deadline`` is ``requested_at + attempt_timeout``
    seconds, as SR derives it.
    """
    run_id = run_id_of(intent)
    at = millis(requested_at if requested_at is not None else datetime.now(UTC))
    body = EngineRequestedBody(attempt_id=attempt_id_for(run_id, attempt_no), attempt_no=attempt_no,
                               attempt_deadline=at + round(attempt_timeout * 1000),
                               plan_hash=plan_hash(build_plan(intent, policy, run_id=run_id)),
                               policy_rev=policy.policy_rev)
    entry = next_entry(run_id, None, kind=LedgerKind.ENGINE_REQUESTED, at_ms=at, lease_epoch=1, body=body_of(body))
    return engine_request(entry, intent)


class EngineThread(ServiceThread):
    """The reference engine (``sr engine simulate``'s loop) on a thread, for tests that run SR
    against it in-process. Nothing runs until :meth:`start`; :meth:`stop` joins."""

    def __init__(self, settings: Settings, policy: Policy, config: SimulatorConfig, *, group_id: str) -> None:
        self.loop = SimulatorLoop(settings, policy, config, group_id=group_id)
        super().__init__("sr-test-engine", run=self.loop.run, stop=self.loop.stop, ready=self.loop.ready)
