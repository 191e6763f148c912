"""The reference engine as a process (``sr engine simulate``): consume requests, answer each once.

One consumer-group member over ``settings.topics.engine_requests``; one result per request on
``settings.topics.engine_results``, keyed by run_id. The loop is what a real engine's
consumer has to get right, kept small enough to copy:

* **Offsets after acknowledgements.** A request's offset is stored only after its result was
  acknowledged by the broker (``acks=all``), and committed every ``commit_interval``, on revoke
  and on stop. A crash in between re-delivers the request, and the re-delivery is answered
  with the same bytes (:mod:`worker.engine.simulator` is deterministic), so SR sees a duplicate
  result, which it ignores.
* **The poll loop never sleeps on the work.** Each request waits until ``requested_at +
  delay`` (its simulated finish time) in a per-partition queue while the consumer keeps
  polling, so the group membership survives long delays. Within a partition, requests are
  answered in offset order (an offset can only be committed once everything before it is done);
  partitions do not wait for one another.
* **Rebalances drop, never commit, unanswered work.** Revoked or lost partitions' queued
  requests are forgotten; their offsets were never stored, so the next owner answers them.
* **Signed results.** With a :class:`~worker.signing.Signer` every result carries an
  ``sr-signature`` header over its exact value bytes (contract §10); SR, with
  ``SR_ENGINE_KEYS`` set, accepts only a key of the engine named in ``reported_by``, so the
  two must agree (checked at construction). A re-sent result is signed again: Ed25519
  signatures are deterministic, so the re-send is byte-identical, headers included.
* **Transient faults retry, permanent ones answer.** An unreachable store or broker keeps the
  request at the head of its queue and retries with capped backoff until stopped (so does a
  schema registry that cannot be reached while decoding); an undecodable request is logged and
  skipped (no result can name its attempt; SR's attempt deadline covers it); a refused produce
  (``KafkaFatalError``) stops the process.

:meth:`SimulatorLoop.stop` only sets an event (signal-handler safe); :meth:`SimulatorLoop.run`
then stores nothing new, commits what was stored and leaves the group.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from worker.app.ports import Record
from worker.core.engine import EngineRequest
from worker.core.models import millis
from worker.core.policy import Policy
from worker.core.signatures import SIGNATURE_HEADER
from worker.core.vocabulary import value_subject
from worker.engine.simulator import DEFAULT_GROUP_ID, EngineSimulator, SimulatorConfig
from worker.errors import ConfigError, InputError, RetryableError, SRError
from worker.runtime.compose import event_producer, group_consumer, make_codec, object_store
from worker.settings import Settings
from worker.signing import Signer

if TYPE_CHECKING:
    from worker.adapters.avro import AvroCodec
    from worker.adapters.kafka import EventProducer, IntakeConsumer

__all__ = ["PendingRequest", "PendingRequests", "SimulatorLoop"]

log = logging.getLogger("sr.engine")

RETRY_BACKOFF_START: Final = 0.2  # seconds
RETRY_BACKOFF_MAX: Final = 5.0  # seconds
POLL_EVERY: Final = 1.0  # seconds: the longest the loop answers requests without polling

PartitionKey = tuple[str, int]


@dataclass
class PendingRequest:
    """One consumed request waiting for its turn.

    ``request`` is None until the value decoded; ``undecodable`` marks a value that never will
    (it is skipped, no result). A decode that failed transiently (schema registry unreachable)
    leaves both unset and is tried again when due.
    """

    record: Record
    request: EngineRequest | None = None
    undecodable: bool = False
    due: float = 0.0  # epoch seconds: not handled before this
    backoff: float = RETRY_BACKOFF_START

    def retry_later(self, now: float) -> float:
        """Push ``due`` back by the current backoff (doubling, capped); returns the wait."""
        wait = self.backoff
        self.due = now + wait
        self.backoff = min(self.backoff * 2, RETRY_BACKOFF_MAX)
        return wait


class PendingRequests:
    """Consumed, unanswered requests: one FIFO per partition, the heads compete by due time."""

    def __init__(self) -> None:
        self._queues: dict[PartitionKey, deque[PendingRequest]] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def add(self, item: PendingRequest) -> None:
        """Queue ``item`` behind the earlier records of its partition."""
        self._queues.setdefault((item.record.topic, item.record.partition), deque()).append(item)

    def next(self) -> PendingRequest | None:
        """The partition head due first (None when nothing is queued)."""
        heads = [q[0] for q in self._queues.values() if q]
        return min(heads, key=lambda p: (p.due, p.record.partition), default=None)

    def pop(self, item: PendingRequest) -> None:
        """Remove ``item``, which must be the head of its partition."""
        queue = self._queues[(item.record.topic, item.record.partition)]
        if not queue or queue[0] is not item:
            raise RuntimeError("only a partition head can be answered")
        queue.popleft()

    def drop(self, partitions: Iterable[PartitionKey]) -> int:
        """Forget the queued requests of ``partitions`` (revoked or lost); returns how many."""
        dropped = 0
        for key in partitions:
            dropped += len(self._queues.pop(key, ()))
        return dropped


@dataclass
class _Clients:
    """What one running loop works with."""

    consumer: IntakeConsumer
    producer: EventProducer
    codec: AvroCodec
    simulator: EngineSimulator
    pending: PendingRequests


class SimulatorLoop:
    """``sr engine simulate``: answer engine requests until stopped (or ``max_requests`` answered).

    Args:
        settings: topics, Kafka/S3 connection, commit interval, poll timeout.
        policy: the gate policy (the same file SR plans under).
        config: delay, failure rate, seed, reporter name.
        group_id: the consumer group (all simulator instances of one deployment share it).
        max_requests: exit after this many results were acknowledged (None: run until stopped).
        clock: epoch seconds (tests may pass their own).
        signer: signs every result (None: unsigned); its principal must be ``config.reported_by``.

    Raises:
        ConfigError: ``signer``'s principal is not ``config.reported_by`` (SR would refuse
            every result).
    """

    def __init__(self, settings: Settings, policy: Policy, config: SimulatorConfig, *,
                 group_id: str = DEFAULT_GROUP_ID, max_requests: int | None = None,
                 clock: Callable[[], float] = time.time, signer: Signer | None = None) -> None:
        if signer is not None and signer.principal != config.reported_by:
            raise ConfigError(f"reported_by {config.reported_by!r} is not the signing key's principal "
                              f"{signer.principal!r}: SR refuses engine results not signed by the engine they name")
        self._signer = signer
        self._settings = settings
        self._policy = policy
        self._config = config
        self._group_id = group_id
        self._max = max_requests
        self._clock = clock
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.answered = 0

    def stop(self) -> None:
        """Ask the loop to commit and exit. Only sets an event (safe from a signal handler)."""
        self._stop.set()

    def _done(self) -> bool:
        return self._stop.is_set() or (self._max is not None and self.answered >= self._max)

    def run(self) -> int:
        """Consume and answer until stopped; returns the number of results sent.

        Raises:
            KafkaFatalError: the broker refused a result permanently.
            SRError: a client could not be opened.
        """
        s = self._settings
        pending = PendingRequests()

        def _forget(parts: list[PartitionKey]) -> None:
            dropped = pending.drop(parts)
            if dropped:
                log.info("partitions moved; their unanswered requests go to the next owner",
                         extra={"partitions": [f"{t}[{p}]" for t, p in parts], "requests": dropped})

        with ExitStack() as stack:
            codec = make_codec(s)
            store = stack.enter_context(object_store(s))
            producer = stack.enter_context(event_producer(s))
            consumer = stack.enter_context(group_consumer(
                s, group_id=self._group_id, topics=[s.topics.engine_requests], on_revoke=_forget, on_lost=_forget))
            clients = _Clients(consumer, producer, codec, EngineSimulator(self._policy, store, self._config), pending)
            self.ready.set()
            log.info("engine simulator started", extra={
                "group_id": self._group_id, "requests_topic": s.topics.engine_requests,
                "results_topic": s.topics.engine_results, "delay": self._config.delay,
                "failure_rate": self._config.failure_rate, "seed": self._config.seed,
                "reported_by": self._config.reported_by,
                "key_id": self._signer.key_id if self._signer is not None else None})
            try:
                self._consume(clients)
            finally:
                self._commit(consumer)
                self.ready.clear()
        log.info("engine simulator stopped", extra={"answered": self.answered, "unanswered": len(pending)})
        return self.answered

    def _consume(self, c: _Clients) -> None:
        """Alternate between answering what is due (for at most ``POLL_EVERY`` seconds) and
        polling: the consumer is polled at least that often, whatever the backlog."""
        s = self._settings
        last_commit = time.monotonic()
        uncommitted = False
        while not self._done():
            turn_ends = time.monotonic() + POLL_EVERY
            while not self._done() and time.monotonic() < turn_ends:
                head = c.pending.next()
                if head is None or head.due > self._clock():
                    break
                uncommitted |= self._handle(head, c)
            if self._done():
                break
            head = c.pending.next()
            wait = s.poll_timeout if head is None else min(s.poll_timeout, max(0.0, head.due - self._clock()))
            # Requests are small; the backlog is what arrives within one --delay.
            for record in c.consumer.poll_batch(s.batch_size, wait):
                c.pending.add(self._queued(record, c.codec))
            if uncommitted and time.monotonic() - last_commit >= s.commit_interval:
                self._commit(c.consumer)
                last_commit, uncommitted = time.monotonic(), False

    def _queued(self, record: Record, codec: AvroCodec) -> PendingRequest:
        """The record as a queued request, due at ``requested_at + delay``."""
        item = PendingRequest(record)
        self._decode(item, codec)
        return item

    def _decode(self, item: PendingRequest, codec: AvroCodec) -> None:
        """Decode ``item``'s value: a request due at ``requested_at + delay``, undecodable (due
        now, skipped), or still unknown after a transient fault (retried when due)."""
        record = item.record
        try:
            item.request = codec.decode_engine_request(record.value or b"")
        except InputError as exc:
            log.warning("undecodable engine request skipped (no result can name its attempt)", extra={
                "topic": record.topic, "partition": record.partition, "offset": record.offset,
                "error_class": exc.code, "error": str(exc)[:300]})
            item.undecodable, item.due = True, 0.0
            return
        except RetryableError as exc:
            wait = item.retry_later(self._clock())
            log.warning("engine request not decoded yet; retrying", extra={
                "topic": record.topic, "partition": record.partition, "offset": record.offset,
                "error_class": exc.code, "error": str(exc)[:300], "retry_in": wait})
            return
        item.due = millis(item.request.requested_at) / 1000 + self._config.delay

    def _handle(self, item: PendingRequest, c: _Clients) -> bool:
        """Answer the head ``item``; True if its offset was stored, False if it is not done yet."""
        record, request = item.record, item.request
        if request is None and not item.undecodable:
            self._decode(item, c.codec)  # now due at its own time, or retried later
            return False
        if request is not None:
            try:
                result = c.simulator.answer(request)
                topic = self._settings.topics.engine_results
                value = c.codec.encode_engine_result(result, subject=value_subject(topic))
                headers = None if self._signer is None else [(SIGNATURE_HEADER, self._signer.signature_header(value))]
                delivered = c.producer.send_and_wait(topic, key=request.run_id.encode("ascii"), value=value,
                                                     headers=headers)
            except RetryableError as exc:
                wait = item.retry_later(self._clock())
                log.warning("engine request not answered yet; retrying", extra={
                    "run_id": request.run_id, "attempt_id": request.attempt_id, "error_class": exc.code,
                    "error": str(exc)[:300], "retry_in": wait})
                return False
            self.answered += 1
            log.info("engine result sent", extra={
                "run_id": request.run_id, "attempt_id": request.attempt_id, "attempt_no": request.attempt_no,
                "status": result.status.value, "detail": result.detail[:300],
                "result_partition": delivered.partition, "result_offset": delivered.offset})
        c.pending.pop(item)
        c.consumer.store(record.topic, record.partition, record.offset + 1)
        return True

    @staticmethod
    def _commit(consumer: IntakeConsumer) -> None:
        """Commit the stored offsets; a failure only means re-deliveries (answered the same way)."""
        try:
            consumer.commit()
        except SRError as exc:
            log.warning("offset commit failed; requests answered since the last commit may be re-delivered",
                        extra={"error_class": exc.code, "error": str(exc)[:300]})
