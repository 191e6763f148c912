"""The reference engine's decisions: answer one :class:`EngineRequest` with one :class:`EngineResult`.

Everything an answer depends on is in the request, the gate policy and the simulator's
configuration — never the clock or how often the request was seen. So a re-delivered request
(Kafka delivers at least once; SR re-sends a request until it is marked published) gets a
result with the *same bytes*, which is what SR expects of every engine:

* success or failure is decided by :func:`draw`: the first 8 bytes of
  sha256(``"sr_engine_sim|<seed>|<attempt_id>"``) as a fraction of 2**64; the attempt fails when
  that draw is below ``failure_rate`` (0 never fails, 1 always fails). A later attempt of the
  same run has another ``attempt_id`` and so its own draw;
* ``finished_at`` is ``requested_at + delay`` (rounded to the millisecond), the moment the
  simulated work ends — the loop also waits until then before answering;
* the evidence is a function of the run (:mod:`worker.engine.evidence`), written with
  write-once PUTs, so writing it again is a no-op;
* ``detail`` is built from the request and the configuration only.

Answers, in order of the checks:

* the request's ``policy_rev`` is not the policy this engine runs → FAILED ``POLICY_MISMATCH``
  (the engine would write the wrong gates);
* the draw says fail → FAILED ``SIMULATED_FAILURE``, nothing written;
* an output the policy does not define → FAILED ``UNKNOWN_OUTPUT`` (a key that would be unsafe:
  ``UNSAFE_KEY``);
* writing fails permanently (a different object already at a key: DRIFT; access denied or a
  missing bucket) → FAILED with that error code; what was written stays, no flag is faked;
* otherwise SUCCEEDED: every output and gate bundle written, each gate's flag last.

A *transient* store fault (:class:`~worker.errors.S3UnavailableError`) is not an answer: it
propagates, and the loop retries the request later.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from worker.core.engine import EngineRequest, EngineResult, EngineStatus
from worker.core.models import datetime_from_millis, millis
from worker.core.policy import Policy
from worker.engine.evidence import EvidenceStore, evidence_for, write_evidence
from worker.errors import ConfigError, PermanentError

__all__ = [
    "DEFAULT_GROUP_ID",
    "DEFAULT_REPORTED_BY",
    "EngineSimulator",
    "SimulatorConfig",
    "draw",
    "fails",
    "finished_at",
    "result_for",
]

DEFAULT_REPORTED_BY: Final = "sr-engine-simulator"
#: The simulator's consumer group unless ``--group-id`` says otherwise.
DEFAULT_GROUP_ID: Final = "sr-engine-simulator"
_DRAW_PREFIX: Final = "sr_engine_sim|"
_MAX_DELAY: Final = 7 * 86_400.0  # seconds; longer than any attempt timeout SR accepts


@dataclass(frozen=True)
class SimulatorConfig:
    """How the reference engine behaves.

    Attributes:
        delay: seconds from a request's ``requested_at`` until its attempt finishes (>= 0).
        failure_rate: share of attempts that fail, 0..1 (decided per attempt_id, see :func:`draw`).
        seed: varies which attempts fail; the same seed gives the same answers.
        reported_by: the ``reported_by`` of every result (an identifier, as the schema requires).

    Raises:
        ConfigError: a value out of range.
    """

    delay: float = 1.0
    failure_rate: float = 0.0
    seed: int = 0
    reported_by: str = DEFAULT_REPORTED_BY

    def __post_init__(self) -> None:
        if not math.isfinite(self.delay) or not 0.0 <= self.delay <= _MAX_DELAY:
            raise ConfigError(f"delay must be between 0 and {_MAX_DELAY:.0f} seconds, got {self.delay}")
        if not math.isfinite(self.failure_rate) or not 0.0 <= self.failure_rate <= 1.0:
            raise ConfigError(f"failure rate must be between 0 and 1, got {self.failure_rate}")
        # The schema's Identifier rule, checked now rather than on the first result.
        try:
            EngineResult(attempt_id="0" * 32, run_id="0" * 32, status=EngineStatus.FAILED, detail="",
                         reported_by=self.reported_by, finished_at=datetime_from_millis(0))
        except ValueError as exc:
            raise ConfigError(f"reported_by {self.reported_by!r} is not a valid identifier "
                              "(letters, digits, '_', '.', '-'; at most 128)") from exc


def draw(seed: int, attempt_id: str) -> float:
    """The attempt's deterministic draw in [0, 1): sha256("sr_engine_sim|<seed>|<attempt_id>")."""
    digest = hashlib.sha256(f"{_DRAW_PREFIX}{seed}|{attempt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def fails(config: SimulatorConfig, attempt_id: str) -> bool:
    """True when the attempt is one the simulator reports FAILED (draw below the failure rate)."""
    return draw(config.seed, attempt_id) < config.failure_rate


def finished_at(request: EngineRequest, delay: float) -> datetime:
    """``requested_at + delay``, to the millisecond: when the simulated attempt ends."""
    return datetime_from_millis(millis(request.requested_at) + round(delay * 1000))


def result_for(request: EngineRequest, config: SimulatorConfig, status: EngineStatus, detail: str) -> EngineResult:
    """The :class:`EngineResult` answering ``request`` (keyed by its run_id on the results topic)."""
    return EngineResult(
        attempt_id=request.attempt_id,
        run_id=request.run_id,
        status=status,
        detail=detail,
        reported_by=config.reported_by,
        finished_at=finished_at(request, config.delay),
    )


class EngineSimulator:
    """Answers engine requests: writes evidence or reports a failure (see the module docstring).

    Args:
        policy: the gate policy SR plans runs under (the same ``SR_POLICY_FILE``).
        store: where evidence is written (write-once PUTs).
        config: delay, failure rate, seed, reporter name.
    """

    def __init__(self, policy: Policy, store: EvidenceStore, config: SimulatorConfig) -> None:
        self._policy = policy
        self._store = store
        self.config = config

    def answer(self, request: EngineRequest) -> EngineResult:
        """Do (or fail) the attempt ``request`` asks for and return its result.

        Raises:
            S3UnavailableError: the store stayed unreachable; nothing is decided, try again later.
        """
        cfg = self.config
        if request.policy_rev != self._policy.policy_rev:
            return result_for(request, cfg, EngineStatus.FAILED,
                              f"POLICY_MISMATCH: the request was planned under policy_rev {request.policy_rev}, "
                              f"this engine runs {self._policy.policy_rev}")
        if fails(cfg, request.attempt_id):
            return result_for(request, cfg, EngineStatus.FAILED,
                              f"SIMULATED_FAILURE: attempt {request.attempt_no} drew "
                              f"{draw(cfg.seed, request.attempt_id):.6f} < failure rate {cfg.failure_rate} "
                              f"(seed {cfg.seed}); nothing written")
        try:
            evidence = evidence_for(request, self._policy)
        except PermanentError as exc:  # UNKNOWN_OUTPUT; UNSAFE_KEY if root + bundle exceed a key's length
            return result_for(request, cfg, EngineStatus.FAILED, f"{exc.code}: {exc}")
        try:
            write_evidence(self._store, evidence)
        except PermanentError as exc:
            # DRIFT (someone else's bytes at our key), access denied, missing bucket: a retry
            # of the same attempt would meet the same; SR decides whether to try again.
            return result_for(request, cfg, EngineStatus.FAILED, f"{exc.code}: {exc}")
        return result_for(request, cfg, EngineStatus.SUCCEEDED, evidence.summary())
