"""Triggers that act on a run's committed facts rather than on its evidence status.

One handler per trigger kind, in the table :meth:`ControlTriggers.handlers`:

* REEMIT re-sends the current READY from the verified ledger;
* SUPERSEDE re-verifies a READY run and, if the facts changed, commits SUPERSEDE(old→new)
  then READY(new);
* REEVALUATE of a READY run re-verifies it and keeps it only if the evidence still gives the
  same facts (any other run: the normal step);
* RETRY (contract §11) reopens a FAILED / QUARANTINED run for an authorized operator and
  runs the normal step: verify, and per strategy invoke the engine again.

When SUPERSEDE or REEVALUATE finds that a READY run's evidence no longer verifies, the READY
is **revoked** (:meth:`ControlTriggers.revoke`): a REVOKED ledger entry, a REVOKED fact on
``sr.ready`` after the READY it withdraws, and a QUARANTINED ``EVIDENCE_CONTRADICTS_READY``
status. Nothing old is modified.

Every trigger is first recorded in the ledger (with ``requested_by``) by the run step. Kinds
with no handler here (EVIDENCE_ARRIVED) simply run the normal step. To add a trigger kind: add
it to ``RunTrigger`` / the Avro schema (a new version, see ``schemas/README.md``), write a
handler with the signature ``(trigger, step) -> Outcome`` here and register it in
:meth:`ControlTriggers.handlers`.
"""

from __future__ import annotations

from worker.app.context import RunContext
from worker.app.crashpoints import CrashPoint
from worker.app.outcomes import Action, Outcome
from worker.app.run_step import RunStep, StepState, TriggerHandler
from worker.core.events import control_fact, current_ready
from worker.core.evidence import Classification, GateResult, classify
from worker.core.facts import build_facts_view, facts_view_bytes, facts_view_hash
from worker.core.ledger import LedgerKind, derive_state, entry_hash
from worker.core.ledger_bodies import ReadyBody, RetriedBody, RevokedBody, SupersededBody, parse_body
from worker.core.models import RunStatus, RunTrigger, TriggerKind, millis
from worker.core.plan import Plan
from worker.core.vocabulary import EVIDENCE_CONTRADICTS_READY
from worker.errors import IntegrityError

#: Longest revocation ``detail`` (characters); the verdict's own detail is cut to fit.
_MAX_REVOKE_DETAIL = 1000

__all__ = ["ControlTriggers"]


class ControlTriggers:
    """REEMIT and SUPERSEDE, run inside the run step under the lease."""

    def __init__(self, ctx: RunContext, step: RunStep) -> None:
        self._ctx = ctx
        self._step = step

    def handlers(self) -> dict[str, TriggerHandler]:
        """Trigger kind → handler (the run step consults this table)."""
        return {TriggerKind.REEMIT.value: self.reemit, TriggerKind.SUPERSEDE.value: self.supersede,
                TriggerKind.REEVALUATE.value: self.reevaluate, TriggerKind.RETRY.value: self.retry}

    def reemit(self, trigger: RunTrigger, step: StepState) -> Outcome:
        """Re-send the current READY, rebuilt from the verified ledger (no re-verification)."""
        event = current_ready(step.entries)
        if event is None:
            return Outcome(Action.UNCHANGED, step.run_id, "REEMIT ignored: run is not READY")
        self._step.publications.send_fact(event)
        step.log.info("READY re-emitted", extra={"facts_view_hash": event.facts_view_hash})
        return Outcome(Action.REEMITTED, step.run_id, event.facts_view_hash)

    def supersede(self, trigger: RunTrigger, step: StepState) -> Outcome:
        """Re-verify a READY run; if the facts changed, commit SUPERSEDE(old→new) then READY(new).

        Nothing old is modified: the previous plan, facts view and ledger entries stay as they
        are. Evidence that does not verify completely contradicts the current READY too (it
        lives under the same root), so the READY is revoked (:meth:`revoke`).
        """
        ctx, run_step, entries = self._ctx, self._step, step.entries
        state = derive_state(entries)
        if state.status is not RunStatus.READY or state.facts_view_hash is None or state.plan_hash is None:
            return Outcome(Action.UNCHANGED, step.run_id, f"SUPERSEDE ignored: run is {state.status.value}")
        old, p_hash = state.facts_view_hash, state.plan_hash
        plan = ctx.truth.read_plan(step.keys, p_hash)
        if state.pending_supersede is not None:
            # A crash came between SUPERSEDED and READY(new): finish what was decided.
            new = state.pending_supersede[1]
            sup_entry = next(e for e in reversed(entries) if e.kind is LedgerKind.SUPERSEDED)
            announced = parse_body(sup_entry)
            if not isinstance(announced, SupersededBody):
                raise IntegrityError(f"ledger seq {sup_entry.seq} of run {step.run_id} is not a SUPERSEDED body")
            facts_uri = announced.facts_view_uri
        else:
            results = run_step.verify(plan)
            verdict = classify(results, deadline=None, now=ctx.clock())
            if verdict.classification is not Classification.COMPLETE:
                step.log.warning("supersede requested but the evidence does not verify: revoking the READY",
                                 extra={"reason_code": verdict.reason_code})
                return self.revoke(step, plan, p_hash, f"SUPERSEDE found {verdict.reason_code}: {verdict.detail}")
            current = ctx.truth.read_facts_view(step.keys, old)
            view = build_facts_view(plan, p_hash, results, supersedes=old)
            if view.receipts == current.receipts:
                return Outcome(Action.UNCHANGED, step.run_id, "facts unchanged")
            new = facts_view_hash(view)
            ctx.truth.write_facts_view(step.keys, facts_view_bytes(view))
            facts_uri = run_step.facts_uri(step.keys, new)
            sup_entry = run_step.ledger.append(step.lease, step.keys, entries, LedgerKind.SUPERSEDED, SupersededBody(
                old_facts_view_hash=old, new_facts_view_hash=new, facts_view_uri=facts_uri, plan_hash=p_hash,
                policy_rev=plan.policy_rev,
            ))
            entries = (*entries, sup_entry)
        ready_entry = run_step.ledger.append(step.lease, step.keys, entries, LedgerKind.READY, ReadyBody(
            plan_hash=p_hash, facts_view_hash=new, facts_view_uri=facts_uri, policy_rev=plan.policy_rev,
            supersedes_facts_view_hash=old,
        ))
        facts = [control_fact(sup_entry, step.intent), control_fact(ready_entry, step.intent)]
        wanted = [run_step.publications.fact(event) for event in facts]
        stored = step.lease.advance(
            RunStatus.READY,
            plan_hash=p_hash,
            facts_view_hash=new,
            ledger_seq=ready_entry.seq,
            ledger_head_hash=entry_hash(ready_entry),
            publications=wanted,
        )
        # SUPERSEDE(old→new) strictly before READY(new): same key, same partition, in order.
        run_step.publications.publish_unpublished(stored, order=wanted)
        step.log.info("run SUPERSEDED", extra={"old_facts_view_hash": old, "facts_view_hash": new})
        return Outcome(Action.SUPERSEDED, step.run_id, new)

    def reevaluate(self, trigger: RunTrigger, step: StepState) -> Outcome:
        """A READY run: verify its plan again; the READY stays only if the evidence still gives
        exactly its facts, otherwise it is revoked. Any other run: the normal step."""
        ctx, state = self._ctx, step.state
        if state is None or state.status is not RunStatus.READY or state.facts_view_hash is None \
                or state.plan_hash is None or state.pending_supersede is not None:
            return self._step.decide(step, asked=True)
        plan = ctx.truth.read_plan(step.keys, state.plan_hash)
        results = self._step.verify(plan)
        verdict = classify(results, deadline=None, now=ctx.clock())
        if verdict.classification is not Classification.COMPLETE:
            return self.revoke(step, plan, state.plan_hash, f"REEVALUATE found {verdict.reason_code}: {verdict.detail}")
        if not self._same_facts(step, plan, state.plan_hash, state.facts_view_hash, results):
            return self.revoke(step, plan, state.plan_hash,
                               "REEVALUATE found complete evidence with other content than the READY's facts "
                               "view (send SUPERSEDE to publish a correction)")
        step.log.info("READY re-evaluated: the evidence still gives its facts")
        return Outcome(Action.UNCHANGED, step.run_id, "facts still verify")

    def _same_facts(self, step: StepState, plan: Plan, p_hash: str, current_hash: str,
                    results: list[GateResult]) -> bool:
        current = self._ctx.truth.read_facts_view(step.keys, current_hash)
        return build_facts_view(plan, p_hash, results).receipts == current.receipts

    def revoke(self, step: StepState, plan: Plan, p_hash: str, detail: str) -> Outcome:
        """Withdraw the run's current READY (contract §11): REVOKED entry → index row
        (QUARANTINED) + the REVOKED fact and the QUARANTINED status → produce, REVOKED first.

        Raises:
            IntegrityError: the run has no current READY to revoke.
            RetryableError / LeaseLostError: as every commit.
        """
        run_step = self._step
        ready = current_ready(step.entries)
        if ready is None:
            raise IntegrityError(f"run {step.run_id} has no current READY to revoke")
        if len(detail) > _MAX_REVOKE_DETAIL:
            detail = detail[: _MAX_REVOKE_DETAIL - 3] + "..."
        entry = run_step.ledger.append(step.lease, step.keys, step.entries, LedgerKind.REVOKED, RevokedBody(
            facts_view_hash=ready.facts_view_hash, facts_view_uri=ready.facts_view_uri, plan_hash=p_hash,
            policy_rev=ready.policy_rev, reason_code=EVIDENCE_CONTRADICTS_READY, detail=detail,
        ))
        self._ctx.crash.hit(CrashPoint.AFTER_LEDGER_REVOKED)
        wanted = run_step.publications.implied([entry], step.intent)  # the REVOKED fact, then the status
        stored = step.lease.advance(
            RunStatus.QUARANTINED, reason_code=EVIDENCE_CONTRADICTS_READY, plan_hash=p_hash,
            ledger_seq=entry.seq, ledger_head_hash=entry_hash(entry), publications=wanted,
        )
        self._ctx.observer.run_transition(RunStatus.QUARANTINED.value)
        # Same key as the READY it revokes, so the same partition, after it.
        run_step.publications.publish_unpublished(stored, order=wanted)
        step.log.warning("READY REVOKED: the evidence no longer verifies", extra={
            "facts_view_hash": ready.facts_view_hash, "reason_code": EVIDENCE_CONTRADICTS_READY, "detail": detail})
        return Outcome(Action.REVOKED, step.run_id, ready.facts_view_hash)

    def retry(self, trigger: RunTrigger, step: StepState) -> Outcome:
        """Reopen a FAILED / QUARANTINED run for an authorized operator and run the normal step
        (verify; per strategy, request a new engine attempt). The old entries stay; a RETRIED
        entry records the reopening, once per trigger (a re-delivered RETRY is not a second
        retry). Refusals (another status, an operator who may not retry) are on record as the
        TRIGGER entry the run step wrote, and change nothing.
        """
        state, run_id = step.state, step.run_id
        applied = self._applied(step, trigger)
        if applied:
            if state is not None and state.status in (RunStatus.ADMITTED, RunStatus.WAITING):
                # Reopened, but the step that followed did not finish (a crash): finish it.
                return self._step.decide(step, asked=True)
            return Outcome(Action.UNCHANGED, run_id, "RETRY already applied")
        status = state.status if state is not None else RunStatus.ADMITTED
        if status not in (RunStatus.FAILED, RunStatus.QUARANTINED):
            step.log.warning("RETRY refused: only a FAILED or QUARANTINED run is retried",
                             extra={"status": status.value, "requested_by": trigger.requested_by})
            return Outcome(Action.REFUSED, run_id, f"RETRY_REFUSED:{status.value}")
        if not self._ctx.authority.may_retry(trigger):
            step.log.warning("RETRY refused: not an authorized operator", extra={"requested_by": trigger.requested_by})
            return Outcome(Action.REFUSED, run_id, "RETRY_NOT_AUTHORIZED")
        entry = self._step.ledger.append(step.lease, step.keys, step.entries, LedgerKind.RETRIED, RetriedBody(
            previous_status=status.value, previous_reason_code=state.last_reason_code if state else None,
            requested_by=trigger.requested_by, requested_at=millis(trigger.requested_at), reason=trigger.reason,
        ))
        step.lease.touch_head(entry.seq, entry_hash(entry))
        step.entries = (*step.entries, entry)
        step.log.info("run reopened by RETRY", extra={"previous_status": status.value,
                                                       "requested_by": trigger.requested_by})
        return self._step.decide(step, asked=True)

    @staticmethod
    def _applied(step: StepState, trigger: RunTrigger) -> bool:
        """Whether a RETRIED entry already records this trigger."""
        at = millis(trigger.requested_at)
        for entry in step.entries:
            if entry.kind is LedgerKind.RETRIED:
                body = parse_body(entry)
                if isinstance(body, RetriedBody) and (body.requested_by, body.requested_at, body.reason) == \
                        (trigger.requested_by, at, trigger.reason):
                    return True
        return False
