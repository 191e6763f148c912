"""Engine requests as SR sends them (contract §8), for tests of the reference engine."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from worker.core.engine import EngineRequest
from worker.core.identity import attempt_id_for, run_id_of
from worker.core.models import RunIntent
from worker.core.plan import build_plan, plan_hash
from worker.core.policy import Policy
from worker.engine.loop import SimulatorLoop
from worker.engine.simulator import SimulatorConfig
from worker.settings import Settings

__all__ = ["EngineThread", "engine_request_for"]


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


class EngineThread:
    """The reference engine (``sr engine simulate``'s loop) on a thread, for tests that run SR
    against it in-process. Nothing runs until :meth:`start`; :meth:`stop` joins."""

    def __init__(self, settings: Settings, policy: Policy, config: SimulatorConfig, *, group_id: str) -> None:
        self.loop = SimulatorLoop(settings, policy, config, group_id=group_id)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sr-test-engine", daemon=True)

    def _run(self) -> None:
        try:
            self.loop.run()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self, timeout: float = 60.0) -> EngineThread:
        """Start and wait until the engine consumes.

        Raises:
            RuntimeError: it failed or did not start within ``timeout`` seconds.
        """
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.loop.ready.wait(0.1):
            if self.error is not None or time.monotonic() > deadline:
                raise RuntimeError(f"engine did not start: {self.error!r}")
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop and join.

        Raises:
            RuntimeError: it did not stop, or it had failed.
        """
        self.loop.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("engine thread did not stop")
        if self.error is not None:
            raise RuntimeError(f"engine failed: {self.error!r}") from self.error
