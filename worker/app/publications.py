"""Outbox rows for SR's events, and (re-)sending them byte-identically (contract §2, §6).

A publication row holds the exact bytes to send. Rows are built here only — READY /
SUPERSEDE facts from a ledger entry's :class:`~worker.core.models.ReadyEvent`, status events
from the ledger entry that records the transition, engine requests from the ENGINE_REQUESTED
entry — so a message rebuilt from the ledger (a re-emission, or :meth:`Publications.implied`
catching up after a crash) encodes to the same bytes as when it was committed.
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.app.context import RunContext
from worker.core.engine import EngineRequest
from worker.core.events import FACT_KINDS, STATUS_KINDS, control_fact, engine_request, status_event
from worker.core.index import NewPublication, Publication
from worker.core.ledger import LedgerEntry, LedgerKind
from worker.core.models import ReadyEvent, RunIntent, RunStatusEvent
from worker.core.vocabulary import IDEMPOTENCY_HEADER, engine_request_key, status_key, value_subject
from worker.errors import IntegrityError
from worker.logs import RunLogger

__all__ = ["Publications"]


class Publications:
    """Builds outbox rows and sends them through the context's publisher."""

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx

    def fact(self, event: ReadyEvent) -> NewPublication:
        """The outbox row for a READY / SUPERSEDE control fact (exact bytes to send)."""
        topic = self._ctx.topics.ready
        return NewPublication.ready(
            event.run_id, event.facts_view_hash, event.event_type.value,
            topic=topic,
            payload=self._ctx.codec.encode_ready(event, subject=value_subject(topic)),
            msg_key=event.run_id.encode(),
            headers={IDEMPOTENCY_HEADER: event.idempotency_key},
        )

    def status(self, event: RunStatusEvent, *, ledger_seq: int) -> NewPublication:
        """The outbox row for the status event recorded at ``ledger_seq``."""
        return NewPublication.status_event(
            event.run_id, ledger_seq, event.status.value,
            topic=self._ctx.topics.status,
            payload=self.encode_status(event),
            msg_key=event.run_id.encode(),
            headers={IDEMPOTENCY_HEADER: status_key(event.run_id, ledger_seq, event.status.value)},
        )

    def engine_request(self, request: EngineRequest) -> NewPublication:
        """The outbox row for one engine attempt's request (keyed by run_id, one per attempt)."""
        topic = self._ctx.topics.engine_requests
        return NewPublication.engine_request(
            request.run_id, request.attempt_id,
            topic=topic,
            payload=self._ctx.codec.encode_engine_request(request, subject=value_subject(topic)),
            msg_key=request.run_id.encode(),
            headers={IDEMPOTENCY_HEADER: engine_request_key(request.run_id, request.attempt_id)},
        )

    def status_of(self, entry: LedgerEntry, intent: RunIntent) -> NewPublication:
        """The outbox row of the status event a WAITING / FAILED / QUARANTINED entry records.

        Raises:
            IntegrityError: the entry is not a status transition.
        """
        return self.status(status_event(entry, intent), ledger_seq=entry.seq)

    def request_of(self, entry: LedgerEntry, intent: RunIntent) -> NewPublication:
        """The outbox row of the engine request an ENGINE_REQUESTED entry records.

        Raises:
            IntegrityError: the entry is not an engine request.
        """
        return self.engine_request(engine_request(entry, intent))

    def implied(self, entries: Sequence[LedgerEntry], intent: RunIntent, *,
                fenced: frozenset[int] = frozenset()) -> list[NewPublication]:
        """The outbox rows ``entries`` imply (a fact per READY / SUPERSEDED, an event per status
        transition, both for REVOKED, a request per ENGINE_REQUESTED), skipping the seqs of
        fenced writers.

        Raises:
            IntegrityError: an entry's body does not fit its kind.
        """
        rows: dict[str, NewPublication] = {}
        for entry in entries:
            if entry.seq in fenced:
                continue
            implied: list[NewPublication] = []
            if entry.kind in FACT_KINDS:
                implied.append(self.fact(control_fact(entry, intent)))
            if entry.kind in STATUS_KINDS:  # REVOKED is both: its fact, then its QUARANTINED status
                implied.append(self.status_of(entry, intent))
            if entry.kind is LedgerKind.ENGINE_REQUESTED:
                implied.append(self.request_of(entry, intent))
            for row in implied:
                rows.setdefault(row.pub_key, row)  # a repeated record of one message is one row (the first)
        return list(rows.values())

    def encode_status(self, event: RunStatusEvent) -> bytes:
        """A status event's bytes for the status topic."""
        return self._ctx.codec.encode_status(event, subject=value_subject(self._ctx.topics.status))

    def publish_unpublished(self, stored: Sequence[Publication], *, order: Sequence[NewPublication] = ()) -> None:
        """Produce the rows of ``stored`` not yet published (in ``order``'s key order if given).

        Raises:
            KafkaUnavailableError: a delivery was not acknowledged (rows stay unpublished).
        """
        pending = [p for p in stored if p.published_at is None]
        if order:
            rank = {pub.pub_key: i for i, pub in enumerate(order)}
            pending.sort(key=lambda p: rank.get(p.pub_key, len(rank)))
        if pending:
            self._ctx.publisher.publish(pending)

    def republish_pending(self, run_id: str, log: RunLogger) -> None:
        """Finish any publication of ``run_id`` a crash left unpublished."""
        pending = self._ctx.index.pending_publications(run_id)
        if pending:
            log.info("re-sending %d unpublished publication(s)", len(pending))
            self._ctx.publisher.publish(pending)

    def send_fact(self, event: ReadyEvent, *, dry_run: bool = False) -> bool:
        """Produce a control fact rebuilt from the ledger, checked against the stored outbox row.

        Returns True if it was (or, with ``dry_run``, would be) sent.

        Raises:
            IntegrityError: the index holds different bytes for this fact than the ledger
                implies (fail closed: nothing is sent).
            KafkaUnavailableError: not acknowledged.
        """
        wanted = self.fact(event)
        stored = self._ctx.index.publication(wanted.pub_key)
        if stored is not None and stored.payload != wanted.payload:
            raise IntegrityError(f"stored publication {wanted.pub_key} differs from the ledger; not re-emitting")
        if dry_run:
            return True
        if stored is not None:
            self._ctx.publisher.publish([stored])
        else:
            self._ctx.publisher.send_raw(wanted.topic, key=wanted.msg_key, payload=wanted.payload,
                                         headers=dict(wanted.headers))
        return True
