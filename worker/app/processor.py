"""The application layer's front door: one :class:`RunProcessor` per process.

It wires the services — :mod:`~worker.app.admission` (intents),
:mod:`~worker.app.run_step` (lease, plan, verify, commit), :mod:`~worker.app.triggers`
(REEMIT / SUPERSEDE), :mod:`~worker.app.sweeper` (re-checks, outbox) and
:mod:`~worker.app.publications` (outbox rows, re-emission) — over one
:class:`~worker.app.context.RunContext`, and is shared by the worker's threads. Entry points
take *decoded* messages plus the consumed :class:`~worker.app.ports.Record` they came from
(the source reference for a DLQ copy); decoding is the runtime's job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from worker.app.admission import IntentAdmission
from worker.app.attempts import EngineAttempts
from worker.app.authentication import InputAuthority
from worker.app.context import OutputTopics, RunContext, utcnow
from worker.app.crashpoints import INERT, CrashPoints
from worker.app.ledger_writer import LedgerWriter
from worker.app.outcomes import Action, Outcome
from worker.app.ports import EventCodec, Leases, Record, RunIndex, RunObserver, SilentObserver
from worker.app.publications import Publications
from worker.app.publisher import Publisher
from worker.app.run_step import RunStep
from worker.app.sweeper import Sweeper
from worker.app.triggers import ControlTriggers
from worker.app.truth import TruthStore
from worker.app.verifier import EvidenceVerifier
from worker.core.attempts import EngineBudget
from worker.core.engine import EngineResult
from worker.core.index import NewPublication
from worker.core.models import ReadyEvent, RunIntent, RunTrigger
from worker.core.policy import Policy
from worker.core.signatures import SIGNATURE_HEADER
from worker.errors import RunBusyError, SRError, UnauthenticatedError
from worker.logs import RunLogger, run_logger

__all__ = ["Action", "Outcome", "OutputTopics", "RunProcessor", "utcnow"]


class RunProcessor:
    """Turns intents and triggers into durable run state and publications."""

    def __init__(
        self,
        *,
        policy: Policy | None,
        codec: EventCodec,
        index: RunIndex,
        leases: Leases,
        truth: TruthStore,
        verifier: EvidenceVerifier,
        publisher: Publisher,
        topics: OutputTopics,
        s3_bucket: str,
        tenant_prefixes: Mapping[str, Sequence[str]] | None = None,
        recheck_interval: float = 30.0,
        lease_wait: float = 0.0,
        clock: Callable[[], datetime] = utcnow,
        crash_points: CrashPoints = INERT,
        observer: RunObserver | None = None,
        engine: EngineBudget | None = None,
        authority: InputAuthority | None = None,
    ) -> None:
        self._wire(RunContext(
            codec=codec, index=index, leases=leases, truth=truth, verifier=verifier, publisher=publisher,
            topics=topics, s3_bucket=s3_bucket, policy=policy, tenant_prefixes=tenant_prefixes,
            recheck_interval=timedelta(seconds=recheck_interval), lease_wait=lease_wait,
            trigger_lease_wait=max(lease_wait, 5.0), clock=clock, crash=crash_points,
            observer=observer if observer is not None else SilentObserver(),
            engine=engine if engine is not None else EngineBudget(),
            authority=authority if authority is not None else InputAuthority(),
        ))

    @classmethod
    def from_context(cls, ctx: RunContext) -> RunProcessor:
        """A processor over an existing context (the services are wired anew)."""
        processor = cls.__new__(cls)
        processor._wire(ctx)
        return processor

    def replace(self, **changes: Any) -> RunProcessor:
        """A new processor whose context differs in ``changes`` (e.g. a test's verifier); this
        one is unchanged. Raises TypeError for a field :class:`RunContext` does not have."""
        return RunProcessor.from_context(dataclasses.replace(self.context, **changes))

    def _wire(self, ctx: RunContext) -> None:
        self.context = ctx
        self.publications = Publications(ctx)
        self.step = RunStep(ctx, ledger=LedgerWriter(ctx), publications=self.publications)
        self.step.control.update(ControlTriggers(ctx, self.step).handlers())
        EngineAttempts(ctx, self.step).install()
        self.admission = IntentAdmission(ctx, self.step, self.publications)
        self.sweeper = Sweeper(ctx, self.step)

    @property
    def codec(self) -> EventCodec:
        """The codec this processor encodes events with."""
        return self.context.codec

    # ------------------------------------------------------------------ messages
    def handle_intent(self, intent: RunIntent, source: Record) -> Outcome:
        """Admit one decoded intent (consumed as ``source``) and drive its run as far as the
        evidence allows. A REJECTED outcome's ``dead_letter`` asks the caller for a DLQ copy.
        With tenant keys configured, an intent not signed by its own tenant is REJECTED
        ``UNAUTHENTICATED`` before any evidence read or index write (contract §10).

        Raises:
            RetryableError: a server is unavailable (the caller retries; offset not stored).
        """
        try:
            self.context.authority.check_intent(intent, source.header(SIGNATURE_HEADER), source.value or b"")
        except UnauthenticatedError as exc:
            return self.admission.reject_unauthenticated(intent, exc)
        # A READY acknowledged while this record is handled is timed from its Kafka timestamp.
        with self.context.publisher.measuring_from(source.timestamp_ms):
            return self.admission.handle(intent)

    def handle_trigger(self, trigger: RunTrigger, source: Record) -> Outcome:
        """Apply one decoded trigger under the run's lease (recorded in the ledger first).

        Raises:
            UnauthenticatedError: operator keys are configured and the trigger is not signed
                by a key allowed for its kind (checked before any lease, ledger or S3 access;
                the caller dead-letters it).
            RunNotFoundError: the trigger names an unknown run (the caller dead-letters it).
            RunBusyError: the lease stayed held by another worker (retried: a trigger is a
                deliberate request and is never dropped).
            RetryableError: a server is unavailable.
        """
        log = run_logger("sr.run", run_id=trigger.run_id, trigger=trigger.kind.value,
                         requested_by=trigger.requested_by)
        key_id = self.context.authority.check_trigger(trigger, source.header(SIGNATURE_HEADER), source.value or b"",
                                                      run_tenant=lambda: self._tenant_of(trigger.run_id))
        return self._drive_never_dropped(trigger.run_id, f"{trigger.kind.value} trigger", log, trigger=trigger,
                                         signed_by=key_id)

    def handle_engine_result(self, result: EngineResult, source: Record) -> Outcome:
        """Record one decoded engine result under the run's lease and act on it (contract §8).

        Raises:
            UnauthenticatedError: engine keys are configured and the result is not signed by
                the engine named in ``reported_by`` (the caller dead-letters it).
            RunNotFoundError: the result names an unknown run (the caller dead-letters it).
            UnknownAttemptError / EngineResultConflictError: likewise.
            RunBusyError: the lease stayed busy (retried: a result is never dropped).
            RetryableError: a server is unavailable.
        """
        log = run_logger("sr.run", run_id=result.run_id, attempt_id=result.attempt_id,
                         engine_status=result.status.value)
        self.context.authority.check_result(result, source.header(SIGNATURE_HEADER), source.value or b"")
        return self._drive_never_dropped(result.run_id, "engine result", log, result=result)

    def _tenant_of(self, run_id: str) -> str | None:
        """The run's tenant from the index (for tenant-signed triggers), None if unknown."""
        row = self.context.index.get(run_id)
        return None if row is None else row.tenant_id

    def _drive_never_dropped(self, run_id: str, what: str, log: RunLogger, *, trigger: RunTrigger | None = None,
                             result: EngineResult | None = None, signed_by: str | None = None) -> Outcome:
        """Drive the run for a message that must not be dropped: wait for a busy lease up to
        ``trigger_lease_wait``, then raise RunBusyError so the worker handles it again."""
        outcome = self.step.drive(run_id, fresh=False, wait=self.context.trigger_lease_wait, trigger=trigger,
                                  result=result, log=log, signed_by=signed_by)
        if outcome.action is Action.BUSY:
            raise RunBusyError(f"run {run_id} stayed leased; its {what} is handled again")
        return outcome

    def dead_letter(self, source: Record, error: BaseException) -> None:
        """Copy ``source`` (original key, bytes, headers) to the DLQ with error headers; waits for the ack.

        Raises:
            KafkaUnavailableError: not acknowledged; the offset must not be committed.
        """
        self.context.publisher.dead_letter(source, error)
        self.context.observer.dead_lettered(error.code if isinstance(error, SRError) else "INTERNAL")

    # ------------------------------------------------------------------ runs
    def drive(self, run_id: str, *, fresh: bool, wait: float | None = None, trigger: RunTrigger | None = None,
              log: RunLogger | None = None) -> Outcome:
        """Take the run's lease and advance it one step (see :meth:`RunStep.drive`)."""
        return self.step.drive(run_id, fresh=fresh, wait=wait, trigger=trigger, log=log)

    def sweep(self, *, limit: int = 100, stale_admitted_after: float = 120.0) -> list[Outcome]:
        """Re-check due runs (see :meth:`Sweeper.sweep`)."""
        return self.sweeper.sweep(limit=limit, stale_admitted_after=stale_admitted_after)

    def flush_outbox(self, limit: int = 1000) -> int:
        """Publish what a crash left unpublished (see :meth:`Sweeper.flush_outbox`)."""
        return self.sweeper.flush_outbox(limit)

    # ------------------------------------------------------------------ facts
    def fact_publication(self, event: ReadyEvent) -> NewPublication:
        """The outbox row for a READY / SUPERSEDE control fact."""
        return self.publications.fact(event)

    def send_fact(self, event: ReadyEvent, *, dry_run: bool = False) -> bool:
        """Re-send a fact rebuilt from the ledger (see :meth:`Publications.send_fact`)."""
        return self.publications.send_fact(event, dry_run=dry_run)
