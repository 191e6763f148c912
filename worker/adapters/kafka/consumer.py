"""The intake group consumer: manual offset *storage*, explicit commits, rebalance hooks.

Offsets are stored (``enable.auto.offset.store=false``) only after a message's effects are
durable and committed explicitly (``enable.auto.commit=false``). Rebalance hooks receive plain
``(topic, partition)`` pairs, so the runtime never sees a confluent-kafka type; the consumer
commits on revoke and lets the owner drop its state on lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from worker.adapters.kafka.config import KafkaConfig, to_ms
from worker.adapters.kafka.errors import GROUP_MOVED_ON, NOT_OWNED, translate_exception
from worker.adapters.kafka.records import record_from_message
from worker.app.ports import Record
from worker.errors import KafkaFatalError, SRError

__all__ = ["IntakeConsumer", "PartitionId", "RebalanceHook"]

log = logging.getLogger("sr.kafka")

#: One partition as the runtime sees it: ``(topic, partition)``.
PartitionId = tuple[str, int]
#: Called with the partitions being assigned, revoked or lost.
RebalanceHook = Callable[[list[PartitionId]], None]


def _ids(partitions: list[TopicPartition]) -> list[PartitionId]:
    return [(str(tp.topic), int(tp.partition)) for tp in partitions]


class IntakeConsumer:
    """Group consumer with manual offset storage and explicit commits.

    ``on_revoke`` is called (from inside :meth:`poll_batch`) before partitions go away, so the
    owner can finish and :meth:`store` their in-flight work; this class then commits every
    stored offset. ``on_lost`` is called when they were lost without a chance to commit (their
    in-flight work must be dropped, not committed). Every hook gets ``(topic, partition)`` pairs.
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
        close_timeout: float = 10.0,
    ) -> None:
        self._config = config
        self._close_timeout = close_timeout
        self._group_id = group_id
        self._topics = list(topics)
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost
        self._consumer: Consumer | None = None

    def __enter__(self) -> IntakeConsumer:
        conf = self._config.client_conf({
            "group.id": self._group_id,
            # Incremental rebalancing: a member joining or leaving moves only the partitions that
            # change owner, and the others keep flowing (the worker drains exactly the revoked ones).
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": to_ms(self._config.session_timeout),
            "heartbeat.interval.ms": to_ms(max(0.5, self._config.session_timeout / 5)),
            "max.poll.interval.ms": to_ms(self._config.max_poll_interval),
            # Oversized messages must still be fetched so they can be dead-lettered, not stall.
            "fetch.message.max.bytes": self._config.max_message_bytes + 64 * 1024,
            "isolation.level": "read_committed",
            # Apache Kafka answers a fetch as soon as data is there; Tansu only when this wait
            # expires (contract §1), so librdkafka's 500 ms default was ~250 ms of idle latency per
            # intent. 100 ms costs at most 10 empty fetches/s per broker when idle.
            "fetch.wait.max.ms": to_ms(self._config.fetch_wait_max),
        })
        if self._config.group_instance_id is not None:
            conf["group.instance.id"] = self._config.group_instance_id
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
            self._on_assign(_ids(partitions))

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The owner first finishes/stores what it can for these partitions; then what is
        # stored is committed before the partitions move, so the next owner starts there.
        if self._on_revoke:
            self._on_revoke(_ids(partitions))
        self._commit(consumer)

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._on_lost:
            self._on_lost(_ids(partitions))

    def poll_batch(self, max_messages: int, timeout: float) -> list[Record]:
        """Up to ``max_messages`` records, waiting at most ``timeout`` seconds.

        Partition EOF and other non-fatal per-message errors are skipped; fatal client
        errors raise.

        Raises:
            KafkaFatalError: the consumer hit a fatal error.
            KafkaUnavailableError: the client reported a transient fault.
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
            raise translate_exception(exc, "consume failed") from exc
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
        """Mark everything before ``next_offset`` on that partition as done (committed later).

        Raises:
            KafkaUnavailableError / KafkaFatalError: the client refused for another reason than
                "not our partition any more" (which is ignored: the new owner redoes the work).
        """
        try:
            self._require().store_offsets(offsets=[TopicPartition(topic, partition, next_offset)])
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() in NOT_OWNED:
                return
            raise translate_exception(exc, "store offsets failed") from exc

    def commit(self) -> None:
        """Synchronously commit the stored offsets (no-op when nothing new is stored).

        Raises:
            KafkaUnavailableError: the commit did not go through (retry later).
            KafkaFatalError: the broker refused it permanently.
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
            if err.code() == KafkaError._DESTROY:
                # The commit of the final revoke while the client is being closed: the worker
                # committed before closing; whatever is left is re-driven (effects are idempotent).
                log.warning("offset commit skipped: the consumer is closing; uncommitted records are re-driven",
                            extra={"error": err.str()})
                return
            if err.code() in GROUP_MOVED_ON:
                # Routine group churn (we were evicted while slow or paused, or a rebalance is
                # under way): the partitions belong to someone else now, who re-drives the
                # uncommitted records — all of SR's effects are idempotent. Not fatal.
                log.warning("offset commit refused by the group; the new owner re-drives",
                            extra={"error": err.str()})
                return
            raise translate_exception(exc, "commit failed") from exc

    def assignment(self) -> list[TopicPartition]:
        """Partitions currently assigned to this member."""
        return list(self._require().assignment())

    # read-only offset views, for the consumer-lag gauge (worker.runtime.gauges)
    def committed(self, partitions: list[TopicPartition], timeout: float = 5.0) -> list[TopicPartition]:
        """The group's committed offsets of ``partitions`` (one broker round trip, ``timeout`` seconds).

        A partition with nothing committed comes back with a negative offset (``OFFSET_INVALID``).

        Raises:
            KafkaUnavailableError: no answer within ``timeout`` seconds.
            KafkaFatalError: the broker refused the request.
        """
        try:
            return list(self._require().committed(partitions, timeout=timeout))
        except KafkaException as exc:
            raise translate_exception(exc, "committed offsets query failed") from exc

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """This member's current fetch positions (local, no I/O; negative = none yet).

        Raises:
            KafkaFatalError: the client refused the call.
        """
        try:
            return list(self._require().position(partitions))
        except KafkaException as exc:
            raise translate_exception(exc, "position query failed") from exc

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
            raise translate_exception(exc, "watermark query failed") from exc
        return None if marks is None else (int(marks[0]), int(marks[1]))

    def close(self) -> None:
        """Leave the group (triggers a final revoke → commit) and release the client.

        Waits at most ``close_timeout`` seconds (constructor). librdkafka's close has no
        timeout of its own and waits for a pending group join to finish, which a broker may
        hold for the whole rebalance timeout (``max.poll.interval.ms``) while a dead member's
        session has not expired. The worker commits before it closes, so giving up on the
        leave costs nothing but the group noticing the departure by session timeout.
        """
        if self._consumer is None:
            return
        consumer, self._consumer = self._consumer, None
        started = time.monotonic()
        closer = threading.Thread(target=self._close_client, args=(consumer,), name="sr-consumer-close", daemon=True)
        closer.start()
        closer.join(self._close_timeout)
        if closer.is_alive():
            log.warning("leaving the consumer group did not finish in time; going on without it "
                        "(offsets were committed; the group sees the member leave at its session timeout)",
                        extra={"close_timeout_s": self._close_timeout})
        else:
            log.info("left the consumer group", extra={"seconds": round(time.monotonic() - started, 3)})

    @staticmethod
    def _close_client(consumer: Consumer) -> None:
        try:
            consumer.close()
        except (KafkaException, RuntimeError):
            pass  # the client is gone either way
        except SRError as exc:
            # Raised by the final revoke's commit: the worker committed before closing, so
            # this costs at most idempotent re-deliveries — not a failed stop.
            log.warning("final commit while leaving the group failed; uncommitted records are re-driven",
                        extra={"error": str(exc)})

    def _require(self) -> Consumer:
        if self._consumer is None:
            raise KafkaFatalError("consumer is not open (use it as a context manager)")
        return self._consumer
