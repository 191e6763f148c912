"""Admission of run intents (contract §3): exactly once per equivalence key.

* evidence_root outside the tenant's allowed prefixes → REJECTED before any evidence read
  and before a run exists;
* new equivalence key → the run is inserted and driven at once (``fresh``: no S3 state can
  exist yet, so the ledger is not listed);
* same key, same fingerprint → duplicate: no new work, no S3 request, no event — unless the
  first delivery died mid-step (status still ADMITTED), then it is re-driven;
* same key, different fingerprint → COLLISION: REJECTED event + DLQ copy; the existing run is
  untouched.
"""

from __future__ import annotations

from worker.app.context import RunContext
from worker.app.outcomes import Action, Outcome
from worker.app.publications import Publications
from worker.app.run_step import RunStep
from worker.app.verifier import EvidenceVerifier
from worker.core.identity import intent_fingerprint, run_equivalence_key, run_id_for
from worker.core.index import Admission, AdmissionOutcome, NewRun
from worker.core.models import RunIntent, RunStatus, RunStatusEvent, StatusEventStatus
from worker.errors import EvidenceRootForbiddenError, PermanentError, SRError, UnauthenticatedError
from worker.logs import RunLogger, run_logger

__all__ = ["IntentAdmission", "RejectionError"]


class RejectionError(PermanentError):
    """Carries a rejection reason code into the DLQ headers."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class IntentAdmission:
    """Admits decoded intents and hands new runs to the run step."""

    def __init__(self, ctx: RunContext, step: RunStep, publications: Publications) -> None:
        self._ctx = ctx
        self._step = step
        self._publications = publications

    def handle(self, intent: RunIntent) -> Outcome:
        """Admit ``intent`` and drive its run as far as the evidence allows.

        A rejection's outcome carries the error for the message's DLQ copy.

        Raises:
            RetryableError: a server is unavailable (the caller retries; offset not stored).
        """
        ctx = self._ctx
        equivalence_key = run_equivalence_key(intent)
        run_id = run_id_for(equivalence_key)
        log = run_logger("sr.run", run_id=run_id, tenant_id=intent.tenant_id)
        try:
            EvidenceVerifier.check_evidence_root(intent.evidence_root, intent.tenant_id, default_bucket=ctx.s3_bucket,
                                                 tenant_prefixes=ctx.tenant_prefixes)
        except EvidenceRootForbiddenError as exc:
            return self.reject(intent, run_id, exc, log=log)
        admission = ctx.index.admit(NewRun(
            run_id=run_id,
            run_equivalence_key=equivalence_key,
            intent_fingerprint=intent_fingerprint(intent),
            tenant_id=intent.tenant_id,
            namespace=intent.namespace,
            scenario_id=intent.scenario_id,
            intent=intent.to_avro(),
            evidence_root=intent.evidence_root,
            deadline=intent.deadline,
        ))
        if admission.outcome is AdmissionOutcome.COLLISION:
            detail = (f"run {run_id} exists with a different intent fingerprint; "
                      "the existing run is left untouched")
            return self.reject(intent, run_id, RejectionError("EQUIV_KEY_COLLISION", detail), log=log)
        if admission.outcome is AdmissionOutcome.DUPLICATE:
            return self._on_duplicate(admission, log)
        log.info("run admitted")
        return self._step.drive(run_id, fresh=True, log=log, intent=intent)

    def reject_unauthenticated(self, intent: RunIntent, error: UnauthenticatedError) -> Outcome:
        """REJECTED ``UNAUTHENTICATED`` (contract §10): announced and dead-lettered like every
        rejection, before any evidence read or index write.

        Raises:
            KafkaUnavailableError: the status event was not acknowledged.
        """
        run_id = run_id_for(run_equivalence_key(intent))
        return self.reject(intent, run_id, error, log=run_logger("sr.run", run_id=run_id, tenant_id=intent.tenant_id))

    def _on_duplicate(self, admission: Admission, log: RunLogger) -> Outcome:
        row = admission.row
        if RunStatus(row.status) is RunStatus.ADMITTED:
            # The first delivery may have died mid-step: re-drive if nobody holds the lease.
            return self._step.drive(row.run_id, fresh=False, wait=0.0, log=log)
        return Outcome(Action.DUPLICATE, row.run_id, row.status)

    def reject(self, intent: RunIntent, run_id: str, error: SRError, *, log: RunLogger) -> Outcome:
        """Announce REJECTED on the status topic; the outcome asks for a DLQ copy of the message.

        No run state is touched.

        Raises:
            KafkaUnavailableError: the status event was not acknowledged.
        """
        ctx = self._ctx
        event = RunStatusEvent(
            run_id=run_id,
            status=StatusEventStatus.REJECTED,
            reason_code=error.code,
            detail=str(error),
            tenant_id=intent.tenant_id,
            namespace=intent.namespace,
            scenario_id=intent.scenario_id,
            emitted_at=ctx.clock(),
        )
        ctx.publisher.send_status(ctx.topics.status, run_id, self._publications.encode_status(event))
        ctx.observer.run_transition(RunStatus.REJECTED.value)
        log.warning("intent REJECTED", extra={"reason_code": error.code})
        return Outcome(Action.REJECTED, run_id, error.code, dead_letter=error)
