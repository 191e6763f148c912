"""Publishing control facts: the outbox rows in Postgres, produced to Kafka, marked published.

A publication row holds the exact bytes to send (key, value, headers). Producing it again
after a crash re-sends those same bytes, so every re-emission is byte-identical. The DLQ
path lives here too: a poison message is copied to ``sr.dlq`` with error headers and the
caller commits its offset only after the broker acknowledged the copy.

READY latency: while a consumed intent is handled, :meth:`Publisher.measuring_from` holds that
record's Kafka timestamp (a context variable, so per thread: the worker's pool threads each
handle one record at a time). A READY acknowledged inside that block is reported to
``on_ready_latency`` as the seconds between the two. READYs published anywhere else (the
outbox flush, a trigger or engine result, a re-emission or replay) have no intent record in
hand and are not measured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from worker.app.crashpoints import INERT, CrashPoint, CrashPoints
from worker.app.ports import Delivered, EventSink, Record
from worker.core.vocabulary import (
    ERROR_CLASS_HEADER,
    ERROR_HEADER_PREFIX,
    ERROR_MESSAGE_HEADER,
    IDEMPOTENCY_HEADER,
    MAX_ERROR_MESSAGE_CHARS,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
)
from worker.errors import SRError

log = logging.getLogger("sr.publisher")

__all__ = ["IDEMPOTENCY_HEADER", "PublicationLike", "PublishedSink", "Publisher", "error_headers"]

#: Kafka timestamp (epoch ms) of the intent record being handled on this thread, if any.
_INTENT_PRODUCED_MS: ContextVar[int | None] = ContextVar("sr_intent_produced_ms", default=None)


class PublicationLike(Protocol):
    """What the publisher needs of a stored publication row."""

    @property
    def pub_key(self) -> str: ...
    @property
    def topic(self) -> str: ...
    @property
    def msg_key(self) -> bytes | None: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def headers(self) -> dict[str, str]: ...
    @property
    def kind(self) -> str: ...


class PublishedSink(Protocol):
    """Where the publisher records that a publication reached the broker."""

    def mark_published(self, pub_key: str, partition: int, offset: int) -> None:
        """Record the broker position of ``pub_key`` (idempotent)."""
        ...


class Publisher:
    """Produces stored publications and dead-letters poison messages.

    Args:
        on_fact_published: called once per READY / SUPERSEDE the broker acknowledged.
        on_ready_latency: called with the seconds from the intent record's timestamp to the
            broker's ack of its READY (only inside :meth:`measuring_from`; never negative).
        wall_clock: epoch seconds, comparable with Kafka record timestamps.
    """

    def __init__(self, producer: EventSink, sink: PublishedSink, *, dlq_topic: str,
                 crash_points: CrashPoints = INERT, on_fact_published: Callable[[], None] | None = None,
                 on_ready_latency: Callable[[float], None] | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._on_fact_published = on_fact_published
        self._on_ready_latency = on_ready_latency
        self._wall_clock = wall_clock
        self._crash = crash_points
        self._producer = producer
        self._sink = sink
        self._dlq_topic = dlq_topic

    def publish(self, publications: Sequence[PublicationLike]) -> list[Delivered]:
        """Produce every publication (in order, pipelined), wait for acks, then mark them published.

        Raises:
            KafkaUnavailableError: a delivery was not acknowledged (the rows stay unpublished and
                are re-sent by the outbox sweep or the message's re-delivery).
        """
        futures = [
            self._producer.send(
                pub.topic,
                key=pub.msg_key,
                value=pub.payload,
                headers=[(k, v.encode()) for k, v in sorted(pub.headers.items())],
            )
            for pub in publications
        ]
        delivered: list[Delivered] = []
        for pub, fut in zip(publications, futures, strict=True):
            where = fut.result()
            acked_at = self._wall_clock()  # the ack, not the mark: latency ends at the broker
            self._crash.hit(CrashPoint.AFTER_PRODUCE_BEFORE_MARK)
            self._sink.mark_published(pub.pub_key, where.partition, where.offset)
            if self._on_fact_published is not None and pub.kind in ("READY", "SUPERSEDE"):
                self._on_fact_published()
            if pub.kind == "READY":
                # Reported with the count above, so the histogram's count never runs ahead of it.
                self._observe_latency(acked_at)
            delivered.append(where)
        return delivered

    @contextmanager
    def measuring_from(self, produced_at_ms: int | None) -> Iterator[None]:
        """Measure the READYs acknowledged in this block (on this thread) from ``produced_at_ms``.

        Args:
            produced_at_ms: the consumed intent record's Kafka timestamp, epoch milliseconds
                (CreateTime: the producer's clock; LogAppendTime: the broker's). ``None`` or
                not positive (no timestamp) measures nothing rather than a wrong value.
        """
        token = _INTENT_PRODUCED_MS.set(produced_at_ms if produced_at_ms is not None and produced_at_ms > 0 else None)
        try:
            yield
        finally:
            _INTENT_PRODUCED_MS.reset(token)

    def _observe_latency(self, acked_at: float) -> None:
        """Report one READY ack's latency (``acked_at``: epoch seconds) if an intent timestamp is
        in hand; a negative one (the producer's clock ahead of ours) is dropped, not clamped."""
        produced_ms = _INTENT_PRODUCED_MS.get()
        if produced_ms is None or self._on_ready_latency is None:
            return
        seconds = acked_at - produced_ms / 1000
        if seconds >= 0:
            self._on_ready_latency(seconds)

    def send_raw(self, topic: str, *, key: bytes | None, payload: bytes, headers: dict[str, str]) -> Delivered:
        """Produce bytes that have no outbox row (e.g. a fact re-emitted after an index rebuild).

        Raises:
            KafkaUnavailableError: not acknowledged.
        """
        return self._producer.send_and_wait(topic, key=key, value=payload,
                                            headers=[(k, v.encode()) for k, v in sorted(headers.items())])

    def send_status(self, topic: str, run_id: str, payload: bytes) -> Delivered:
        """Produce a status event that has no outbox row (a rejection of one message).

        Raises:
            KafkaUnavailableError: not acknowledged.
        """
        return self._producer.send_and_wait(topic, key=run_id.encode(), value=payload)

    def dead_letter(self, record: Record, error: BaseException) -> Delivered:
        """Copy ``record`` (original key and bytes) to the DLQ with error headers; wait for the ack.

        Raises:
            KafkaUnavailableError: the DLQ write was not acknowledged (do not commit the offset).
        """
        code = error.code if isinstance(error, SRError) else "INTERNAL"
        message = str(error).replace("\n", " ")[:MAX_ERROR_MESSAGE_CHARS]
        headers: list[tuple[str, str | bytes | None]] = [
            (ERROR_CLASS_HEADER, code.encode()),
            (ERROR_MESSAGE_HEADER, message.encode()),
            (SOURCE_TOPIC_HEADER, record.topic.encode()),
            (SOURCE_PARTITION_HEADER, str(record.partition).encode()),
            (SOURCE_OFFSET_HEADER, str(record.offset).encode()),
        ]
        headers.extend((k, v) for k, v in record.headers if not k.startswith(ERROR_HEADER_PREFIX))
        return self._producer.send_and_wait(self._dlq_topic, key=record.key, value=record.value or b"",
                                            headers=headers)


def error_headers(headers: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    """The ``sr-*`` headers of a DLQ record as text (for tools and tests)."""
    return {k: v.decode(errors="replace") for k, v in headers if k.startswith("sr-")}
