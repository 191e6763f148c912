"""Everything a run step needs, wired once: the ports plus the few settings the services read.

The composition root (:mod:`worker.runtime.compose`) builds one :class:`RunContext` per
process; tests build one on :mod:`worker.app.testing`. The services hold a reference to it
and nothing else, so adding a dependency is one field here, not a constructor chain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from worker.app.authentication import InputAuthority
from worker.app.crashpoints import INERT, CrashPoints
from worker.app.ports import EventCodec, Leases, RunIndex, RunObserver, SilentObserver
from worker.app.publisher import Publisher
from worker.app.truth import TruthStore
from worker.app.verifier import EvidenceVerifier
from worker.core.attempts import EngineBudget
from worker.core.policy import Policy

__all__ = ["OutputTopics", "RunContext", "utcnow"]


def utcnow() -> datetime:
    """The current time in UTC (the default clock)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class OutputTopics:
    """Output topics the services write publications for."""

    ready: str
    status: str
    engine_requests: str = "sr.engine-requests"


@dataclass(frozen=True)
class RunContext:
    """The ports and settings of the application services.

    ``policy`` is None for processes that never plan (operator re-emission, index rebuild);
    a run step that must plan then fails with :class:`~worker.errors.ConfigError`.
    """

    codec: EventCodec
    index: RunIndex
    leases: Leases
    truth: TruthStore
    verifier: EvidenceVerifier
    publisher: Publisher
    topics: OutputTopics
    s3_bucket: str
    policy: Policy | None = None
    tenant_prefixes: Mapping[str, Sequence[str]] | None = None
    recheck_interval: timedelta = timedelta(seconds=30)
    lease_wait: float = 0.0
    #: Seconds a trigger waits for a busy lease (a trigger is a deliberate request).
    trigger_lease_wait: float = 5.0
    clock: Callable[[], datetime] = utcnow
    crash: CrashPoints = INERT
    observer: RunObserver = field(default_factory=SilentObserver)
    #: Engine attempts: timeout, retry backoff and attempt budget (contract §8).
    engine: EngineBudget = field(default_factory=EngineBudget)
    #: Who may send what: signature key sets and the RETRY allowlist (contract §10).
    authority: InputAuthority = field(default_factory=InputAuthority)
