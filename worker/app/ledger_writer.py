"""Appending to a run's ledger under its lease: write-once entries, lost races adopted or refused.

The ledger is a sequence of write-once objects (contract §5). A writer that loses the race
for a seq (a crashed earlier attempt of the same decision, or a fenced holder) re-reads the
verified ledger: if an entry recording the *same decision* is there it is adopted, otherwise
:class:`~worker.errors.LedgerRaceError` (retryable: handling the message again re-evaluates
on the new ledger). Nothing is ever overwritten.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from worker.app.context import RunContext
from worker.app.ports import Lease
from worker.app.truth import AppendStatus
from worker.core.keys import RunKeys
from worker.core.ledger import LedgerEntry, LedgerKind, entry_hash, next_entry
from worker.core.ledger_bodies import LedgerBody, TriggerBody, body_of
from worker.core.models import RunIntent, RunTrigger, millis
from worker.errors import LedgerRaceError

__all__ = ["LedgerWriter", "same_decision"]

#: The body fields that identify a decision (timestamps, epochs and details may differ
#: between two writers that decided the same thing).
_DECISION_FIELDS: Final = ("plan_hash", "facts_view_hash", "reason_code", "kind", "requested_by", "requested_at",
                           "old_facts_view_hash", "new_facts_view_hash", "attempt_id", "attempt_no", "status")


def same_decision(existing: Mapping[str, Any], ours: Mapping[str, Any]) -> bool:
    """Two ledger bodies record the same fact when their identifying fields agree."""
    return all(existing.get(k) == ours.get(k) for k in _DECISION_FIELDS)


class LedgerWriter:
    """Appends typed entries to run ledgers in the context's truth store."""

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx

    def append(
        self,
        lease: Lease,
        keys: RunKeys,
        entries: tuple[LedgerEntry, ...],
        kind: LedgerKind,
        body: LedgerBody,
        *,
        intent: RunIntent | None = None,
    ) -> LedgerEntry:
        """Append one entry after ``entries``; on a lost seq race adopt an identical decision.

        The first entry of a run also records the admitted ``intent``, so S3 alone is enough
        to rebuild the index (``sr index rebuild``) or export a runpack.

        Raises:
            LedgerRaceError: someone else wrote a *different* decision at that seq.
            S3UnavailableError / S3AccessError / IntegrityError: from the truth store.
        """
        previous = entries[-1] if entries else None
        data = body_of(body, intent=intent.to_avro() if previous is None and intent is not None else None)
        entry = next_entry(lease.run_id, previous, kind=kind, at_ms=millis(self._ctx.clock()),
                           lease_epoch=lease.epoch, body=data)
        result = self._ctx.truth.append(keys, entry)
        if result.status is not AppendStatus.CONFLICT:
            return entry
        current = self._ctx.truth.read_ledger(keys)
        for existing in current[len(entries):]:
            if existing.kind is kind and same_decision(existing.body, data):
                return existing
        raise LedgerRaceError(
            f"ledger of run {lease.run_id} advanced concurrently at seq {entry.seq}; not overwriting"
        )

    def record_trigger(self, lease: Lease, keys: RunKeys, entries: tuple[LedgerEntry, ...],
                       trigger: RunTrigger, intent: RunIntent, *,
                       key_id: str | None = None) -> tuple[LedgerEntry, ...]:
        """Record ``trigger`` (with ``requested_by``, and ``key_id`` when it was signed) once; a
        re-delivered trigger is on record already.

        Raises:
            LedgerRaceError / StaleEpochError / LeaseLostError: as :meth:`append` and the lease.
        """
        body = TriggerBody(kind=trigger.kind.value, reason=trigger.reason, requested_by=trigger.requested_by,
                           requested_at=millis(trigger.requested_at), key_id=key_id)
        if any(e.kind is LedgerKind.TRIGGER and same_decision(e.body, body.to_dict()) for e in entries):
            return entries
        entry = self.append(lease, keys, entries, LedgerKind.TRIGGER, body, intent=intent)
        lease.touch_head(entry.seq, entry_hash(entry))
        return (*entries, entry)
