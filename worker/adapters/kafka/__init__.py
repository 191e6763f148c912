"""Kafka adapter: a thin typed wrapper over confluent-kafka (librdkafka).

* :class:`EventProducer` — idempotent (``enable.idempotence``, ``acks=all``) producer whose
  :meth:`~EventProducer.send` returns a future resolved by the delivery report; a background
  thread serves delivery callbacks so many callers can wait concurrently.
* :class:`IntakeConsumer` — a group consumer with manual offset *storage*
  (``enable.auto.offset.store=false``, ``enable.auto.commit=false``): offsets are stored only
  after a message's effects are durable and committed explicitly. Rebalance callbacks commit
  on revoke and drop state on lost.

Errors are translated at this edge: a retriable/transport fault becomes
:class:`~worker.errors.KafkaUnavailableError`, anything fatal :class:`~worker.errors.KafkaFatalError`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from worker.app.ports import Delivered, Record
from worker.errors import KafkaFatalError, KafkaUnavailableError

log = logging.getLogger("sr.kafka")

Headers = list[tuple[str, str | bytes | None]]


def _ms(seconds: float) -> int:
    """Seconds (SR's unit everywhere) to librdkafka milliseconds."""
    return max(1, round(seconds * 1000))


@dataclass(frozen=True)
class KafkaConfig:
    """Connection settings shared by SR's Kafka clients.

    ``client_extra`` holds librdkafka pass-through properties (SASL/TLS...), applied last.
    Times are in seconds: ``session_timeout`` / ``max_poll_interval`` (consumer group),
    ``delivery_timeout`` (producer), ``fetch_wait_max`` (longest a consumer fetch waits for data).
    """

    bootstrap: str
    client_extra: Mapping[str, str] = field(default_factory=dict)
    session_timeout: float = 10.0
    max_poll_interval: float = 300.0
    delivery_timeout: float = 30.0
    max_message_bytes: int = 16 * 1024 * 1024
    fetch_wait_max: float = 0.1

    def base(self) -> dict[str, Any]:
        """librdkafka properties common to producers and consumers."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "socket.keepalive.enable": True,
            "reconnect.backoff.max.ms": 2000,
        }
        conf.update(self.client_extra)
        return conf


def record_from_message(msg: Message) -> Record:
    """Copy a confluent-kafka message into a :class:`~worker.app.ports.Record`."""
    raw_headers: list[tuple[str, Any]] = list(cast(Any, msg.headers()) or [])
    headers = tuple((str(k), bytes(v) if v is not None else b"") for k, v in raw_headers)
    ts_type, ts = msg.timestamp()
    return Record(
        topic=str(msg.topic()),
        partition=int(msg.partition() or 0),
        offset=int(msg.offset() or 0),
        key=msg.key(),
        value=msg.value(),
        headers=headers,
        timestamp_ms=ts if ts_type else None,
    )


def _translate(err: KafkaError, what: str) -> Exception:
    """Map a librdkafka error to SR's retryable/permanent Kafka errors."""
    if err.code() in _TRANSIENT_CODES or (err.retriable() and not err.fatal()):
        return KafkaUnavailableError(f"{what}: {err.str()}")
    return KafkaFatalError(f"{what}: {err.str()}")


_TRANSIENT_CODES = frozenset({
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
})


# Commit refusals that mean "the group moved on without us", not a broken client.
_GROUP_MOVED_ON = frozenset({
    KafkaError._ASSIGNMENT_LOST,
    KafkaError._STATE,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError.STALE_MEMBER_EPOCH,
    KafkaError.FENCED_MEMBER_EPOCH,
})


class EventProducer:
    """Idempotent producer with per-message delivery futures.

    No I/O in ``__init__``; the client is created in ``__enter__`` and flushed in ``__exit__``.
    """

    def __init__(self, config: KafkaConfig, *, linger: float = 0.005) -> None:
        self._config = config
        self._linger = linger
        self._producer: Producer | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def __enter__(self) -> EventProducer:
        conf = self._config.base()
        conf.update({
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": _ms(self._linger),
            "delivery.timeout.ms": _ms(self._config.delivery_timeout),
            "message.max.bytes": self._config.max_message_bytes + 64 * 1024,
            "compression.type": "none",
        })
        conf.update(self._config.client_extra)
        try:
            self._producer = Producer(conf)
        except KafkaException as exc:
            raise KafkaFatalError(f"cannot create producer: {exc}") from exc
        self._stop.clear()
        self._poller = threading.Thread(target=self._serve_callbacks, name="sr-producer-poll", daemon=True)
        self._poller.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        """Flush outstanding messages (up to ``timeout`` seconds) and stop the poll thread."""
        if self._producer is None:
            return
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout)
        self._producer.flush(timeout)
        self._producer = None

    def _serve_callbacks(self) -> None:
        while not self._stop.is_set():
            producer = self._producer
            if producer is None:
                return
            producer.poll(0.05)

    def send(self, topic: str, *, key: bytes | None, value: bytes, headers: Headers | None = None) -> Future[Delivered]:
        """Queue one message; the future resolves when the broker acknowledged it (acks=all).

        Raises:
            KafkaUnavailableError: the local queue stayed full (broker unreachable).
            KafkaFatalError: the message was refused outright (e.g. too large).
        """
        producer = self._require()
        fut: Future[Delivered] = Future()

        def _on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                fut.set_exception(_translate(err, f"delivery to {topic} failed"))
            else:
                fut.set_result(Delivered(str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)))

        for _attempt in range(100):
            try:
                producer.produce(topic, value=value, key=key, headers=headers or [], on_delivery=_on_delivery)
                return fut
            except BufferError:
                producer.poll(0.1)  # local queue full: let deliveries drain, then try again
            except KafkaException as exc:
                raise _translate(exc.args[0], f"produce to {topic} refused") from exc
        raise KafkaUnavailableError(f"producer queue for {topic} stayed full")

    def send_and_wait(
        self, topic: str, *, key: bytes | None, value: bytes, headers: Headers | None = None,
        timeout: float | None = None,
    ) -> Delivered:
        """:meth:`send` and block until acknowledged.

        Raises:
            KafkaUnavailableError: not acknowledged within ``timeout`` (default: the delivery timeout).
            KafkaFatalError: permanently refused.
        """
        fut = self.send(topic, key=key, value=value, headers=headers)
        wait = timeout if timeout is not None else self._config.delivery_timeout + 5.0
        try:
            return fut.result(wait)
        except TimeoutError as exc:
            raise KafkaUnavailableError(f"no delivery report from {topic} within {wait:.0f}s") from exc

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for outstanding deliveries; returns how many are still queued."""
        return int(self._require().flush(timeout))

    def _require(self) -> Producer:
        if self._producer is None:
            raise KafkaFatalError("producer is not open (use it as a context manager)")
        return self._producer


RebalanceHook = Callable[[list[TopicPartition]], None]


class IntakeConsumer:
    """Group consumer with manual offset storage and explicit commits.

    ``on_revoke`` is called (from inside :meth:`poll_batch`) before partitions go away, so the
    owner can finish and :meth:`store` their in-flight work; this class then commits every
    stored offset. ``on_lost`` is called when they were lost without a chance to commit (their
    in-flight work must be dropped, not committed).
    """

    def __init__(
        self,
        config: KafkaConfig,
        *,
        group_id: str,
        topics: Sequence[str],
        on_assign: RebalanceHook | None = None,
        on_revoke: RebalanceHook | None = None,
        on_lost: RebalanceHook | None = None,
    ) -> None:
        self._config = config
        self._group_id = group_id
        self._topics = list(topics)
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost
        self._consumer: Consumer | None = None

    def __enter__(self) -> IntakeConsumer:
        conf = self._config.base()
        conf.update({
            "group.id": self._group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": _ms(self._config.session_timeout),
            "heartbeat.interval.ms": _ms(max(0.5, self._config.session_timeout / 5)),
            "max.poll.interval.ms": _ms(self._config.max_poll_interval),
            # Oversized messages must still be fetched so they can be dead-lettered, not stall.
            "fetch.message.max.bytes": self._config.max_message_bytes + 64 * 1024,
            "isolation.level": "read_committed",
            # Apache Kafka answers a fetch as soon as data is there; Tansu only when this wait
            # expires (contract §1), so librdkafka's 500 ms default was ~250 ms of idle latency per
            # intent. 100 ms costs at most 10 empty fetches/s per broker when idle.
            "fetch.wait.max.ms": _ms(self._config.fetch_wait_max),
        })
        conf.update(self._config.client_extra)
        try:
            self._consumer = Consumer(conf)
            self._consumer.subscribe(
                self._topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost
            )
        except KafkaException as exc:
            raise KafkaFatalError(f"cannot create consumer: {exc}") from exc
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # rebalance callbacks run inside poll/consume on the calling thread
    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._on_assign:
            self._on_assign(partitions)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The owner first finishes/stores what it can for these partitions; then what is
        # stored is committed before the partitions move, so the next owner starts there.
        if self._on_revoke:
            self._on_revoke(partitions)
        self._commit(consumer)

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._on_lost:
            self._on_lost(partitions)

    def poll_batch(self, max_messages: int, timeout: float) -> list[Record]:
        """Up to ``max_messages`` records, waiting at most ``timeout`` seconds.

        Partition EOF and other non-fatal per-message errors are skipped; fatal client
        errors raise.

        Raises:
            KafkaFatalError: the consumer hit a fatal error.
        """
        consumer = self._require()
        try:
            # consume(n, t) waits the whole timeout unless n records arrive; poll() returns as
            # soon as one is there. So wait for the first, then take what is already buffered.
            first = consumer.poll(timeout)
            messages = [] if first is None else [first]
            if first is not None and max_messages > 1:
                messages.extend(consumer.consume(num_messages=max_messages - 1, timeout=0))
        except KafkaException as exc:
            raise _translate(exc.args[0], "consume failed") from exc
        records: list[Record] = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaFatalError(f"consumer fatal error: {err.str()}")
                continue
            records.append(record_from_message(msg))
        return records

    def store(self, topic: str, partition: int, next_offset: int) -> None:
        """Mark everything before ``next_offset`` on that partition as done (committed later)."""
        try:
            self._require().store_offsets(offsets=[TopicPartition(topic, partition, next_offset)])
        except KafkaException as exc:
            # Storing for a partition we no longer own fails; its work will be redone by the new owner.
            err = exc.args[0]
            if err.code() in (KafkaError._STATE, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION):
                return
            raise _translate(err, "store offsets failed") from exc

    def commit(self) -> None:
        """Synchronously commit the stored offsets (no-op when nothing new is stored).

        Raises:
            KafkaUnavailableError: the commit did not go through (retry later).
        """
        self._commit(self._require())

    @staticmethod
    def _commit(consumer: Consumer) -> None:
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() == KafkaError._NO_OFFSET:
                return
            if err.code() in _GROUP_MOVED_ON:
                # Routine group churn (we were evicted while slow or paused, or a rebalance is
                # under way): the partitions belong to someone else now, who re-drives the
                # uncommitted records — all of SR's effects are idempotent. Not fatal.
                log.warning("offset commit refused by the group; the new owner re-drives",
                            extra={"error": err.str()})
                return
            raise _translate(err, "commit failed") from exc

    def assignment(self) -> list[TopicPartition]:
        """Partitions currently assigned to this member."""
        return list(self._require().assignment())

    # read-only offset views, for the consumer-lag gauge (worker.runtime.observability)
    def committed(self, partitions: list[TopicPartition], timeout: float = 5.0) -> list[TopicPartition]:
        """The group's committed offsets of ``partitions`` (one broker round trip).

        A partition with nothing committed comes back with a negative offset (``OFFSET_INVALID``).

        Raises:
            KafkaUnavailableError: no answer within ``timeout`` seconds.
            KafkaFatalError: the broker refused the request.
        """
        try:
            return list(self._require().committed(partitions, timeout=timeout))
        except KafkaException as exc:
            raise _translate(exc.args[0], "committed offsets query failed") from exc

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """This member's current fetch positions (local, no I/O; negative = none yet).

        Raises:
            KafkaFatalError: the client refused the call.
        """
        try:
            return list(self._require().position(partitions))
        except KafkaException as exc:
            raise _translate(exc.args[0], "position query failed") from exc

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float = 5.0,
                              cached: bool = False) -> tuple[int, int] | None:
        """``(low, high)`` watermarks of a partition; ``cached`` uses the last fetch (no I/O).

        Raises:
            KafkaUnavailableError: no answer within ``timeout`` seconds.
            KafkaFatalError: the broker refused the request.
        """
        try:
            marks = self._require().get_watermark_offsets(partition, timeout=timeout, cached=cached)
        except KafkaException as exc:
            raise _translate(exc.args[0], "watermark query failed") from exc
        return None if marks is None else (int(marks[0]), int(marks[1]))

    def close(self) -> None:
        """Leave the group (triggers a final revoke → commit) and release the client."""
        if self._consumer is None:
            return
        consumer, self._consumer = self._consumer, None
        with contextlib.suppress(KafkaException, RuntimeError):
            consumer.close()

    def _require(self) -> Consumer:
        if self._consumer is None:
            raise KafkaFatalError("consumer is not open (use it as a context manager)")
        return self._consumer
