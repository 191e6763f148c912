"""Engine requests as SR sends them (contract §8), for tests of the reference engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from worker.core.engine import EngineRequest
from worker.core.identity import attempt_id_for, run_id_of
from worker.core.models import RunIntent
from worker.core.plan import build_plan, plan_hash
from worker.core.policy import Policy

__all__ = ["engine_request_for"]


def engine_request_for(intent: RunIntent, policy: Policy, *, attempt_no: int = 1,
                       requested_at: datetime | None = None, attempt_timeout: float = 900.0) -> EngineRequest:
    """The EngineRequest of attempt ``attempt_no`` of ``intent``'s run, planned under ``policy``.

    ``requested_at`` defaults to now; ``attempt_deadline`` is ``requested_at + attempt_timeout``
    seconds, as SR derives it.
    """
    run_id = run_id_of(intent)
    at = requested_at if requested_at is not None else datetime.now(UTC)
    return EngineRequest(
        attempt_id=attempt_id_for(run_id, attempt_no),
        attempt_no=attempt_no,
        run_id=run_id,
        tenant_id=intent.tenant_id,
        namespace=intent.namespace,
        scenario_id=intent.scenario_id,
        pins=intent.pins,
        window_start=intent.window_start,
        window_end=intent.window_end,
        output_ids=intent.output_ids,
        evidence_root=intent.evidence_root,
        plan_hash=plan_hash(build_plan(intent, policy, run_id=run_id)),
        policy_rev=policy.policy_rev,
        requested_at=at,
        attempt_deadline=at + timedelta(seconds=attempt_timeout),
    )
