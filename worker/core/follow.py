"""What a READY follower hands to its handler (contract §9): the current fact per run, once per change.

SR publishes on ``sr.ready`` (keyed by run_id, in order per run): ``READY(fv)``, and for a
correction ``SUPERSEDE(old→new)`` followed by ``READY(new, supersedes=old)``; re-emissions
(``sr reemit``, ``sr replay``, outbox re-sends) repeat events byte for byte; ``REVOKED(fv)``
(§11) withdraws a READY. :class:`FactTracker` turns that stream into *changes*:

* a READY of a facts view the run does not have yet → hand it over (it is the run's current fact);
* any event whose idempotency key was seen already → drop (a re-send);
* a READY of a facts view that was superseded or revoked → drop (a replay of old history:
  never let an old fact become current again);
* SUPERSEDE → bookkeeping only (its old view stops being current; the READY that follows
  carries the new one and is handed over);
* REVOKED of the run's current fact → hand it over (the handler must stop reading it).

Pure: no I/O; the follower (``worker.client``) fetches and verifies each facts view before a
READY is handed over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from worker.core.models import EventType, ReadyEvent
from worker.core.vocabulary import fact_key

__all__ = ["Decision", "FactTracker"]


class Decision(StrEnum):
    """What to do with one event."""

    HAND = "HAND"  # a change: verify (READY) and hand it to the handler
    DUPLICATE = "DUPLICATE"  # the same event again (same idempotency key)
    STALE = "STALE"  # an older fact of the run, superseded or revoked since
    RECORDED = "RECORDED"  # bookkeeping only (SUPERSEDE; REVOKED of a fact that is not current)


@dataclass
class FactTracker:
    """Per-run state of a follower. Not thread-safe (one per consumer loop).

    ``current`` maps run_id → its current facts_view_hash (absent: no fact, or revoked).
    Memory grows with the number of distinct events seen; a long-running follower in group mode
    starts empty after a restart and relies on committed offsets not to see old events again.
    """

    current: dict[str, str] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)
    _retired: set[tuple[str, str]] = field(default_factory=set)
    _previous: dict[str, str | None] = field(default_factory=dict)

    def offer(self, event: ReadyEvent) -> Decision:  # noqa: PLR0911 - one return per decision
        """Account for ``event``; say whether it is a change to hand over."""
        key = fact_key(event.run_id, event.facts_view_hash, event.event_type.value)
        if key in self._seen:
            return Decision.DUPLICATE
        self._seen.add(key)
        run, fv = event.run_id, event.facts_view_hash
        if event.event_type is EventType.SUPERSEDE:
            if event.supersedes_facts_view_hash is not None:
                self._retired.add((run, event.supersedes_facts_view_hash))
                if self.current.get(run) == event.supersedes_facts_view_hash:
                    del self.current[run]
            return Decision.RECORDED
        if event.event_type is EventType.REVOKED:
            self._retired.add((run, fv))
            if self.current.get(run) == fv:
                del self.current[run]
                return Decision.HAND
            return Decision.RECORDED
        if (run, fv) in self._retired:
            return Decision.STALE
        if event.supersedes_facts_view_hash is not None:
            self._retired.add((run, event.supersedes_facts_view_hash))
        if self.current.get(run) == fv:
            return Decision.DUPLICATE
        self._previous[run] = self.current.get(run)
        self.current[run] = fv
        return Decision.HAND

    def reject(self, event: ReadyEvent) -> None:
        """Undo :meth:`offer` of a READY whose facts view did not verify: it never became
        current (the run's previous fact, if any, stays current), and its key is forgotten so
        that a re-send is judged again."""
        if self.current.get(event.run_id) != event.facts_view_hash:
            return
        previous = self._previous.pop(event.run_id, None)
        if previous is None:
            del self.current[event.run_id]
        else:
            self.current[event.run_id] = previous
        self._seen.discard(fact_key(event.run_id, event.facts_view_hash, event.event_type.value))
