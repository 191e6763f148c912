"""Triggers that act on a run's committed facts rather than on its evidence status.

One handler per trigger kind, in the table :meth:`ControlTriggers.handlers`: REEMIT re-sends
the current READY from the verified ledger; SUPERSEDE re-verifies
a READY run and, if the facts changed, commits SUPERSEDE(old→new) then READY(new). Every
trigger is first recorded in the ledger (with ``requested_by``) by the run step. Kinds with
no handler here (EVIDENCE_ARRIVED, REEVALUATE) simply run the normal step. To add a trigger
kind: add it to ``RunTrigger`` / the Avro schema, write a handler with the signature
``(trigger, step) -> Outcome`` here and register it in :meth:`ControlTriggers.handlers`.
"""

from __future__ import annotations

from worker.app.context import RunContext
from worker.app.outcomes import Action, Outcome
from worker.app.run_step import RunStep, StepState, TriggerHandler
from worker.core.events import control_fact, current_ready
from worker.core.evidence import Classification, classify
from worker.core.facts import build_facts_view, facts_view_bytes, facts_view_hash
from worker.core.ledger import LedgerKind, derive_state, entry_hash
from worker.core.ledger_bodies import ReadyBody, SupersededBody, parse_body
from worker.core.models import RunStatus, RunTrigger, TriggerKind
from worker.errors import IntegrityError

__all__ = ["ControlTriggers"]


class ControlTriggers:
    """REEMIT and SUPERSEDE, run inside the run step under the lease."""

    def __init__(self, ctx: RunContext, step: RunStep) -> None:
        self._ctx = ctx
        self._step = step

    def handlers(self) -> dict[str, TriggerHandler]:
        """Trigger kind → handler (the run step consults this table)."""
        return {TriggerKind.REEMIT.value: self.reemit, TriggerKind.SUPERSEDE.value: self.supersede}

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
        are. A correction that does not verify completely leaves the current READY in force.
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
                step.log.warning("supersede requested but the corrected evidence does not verify",
                                 extra={"reason_code": verdict.reason_code})
                return Outcome(Action.UNCHANGED, step.run_id, f"SUPERSEDE_NOT_VERIFIED:{verdict.reason_code}")
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
