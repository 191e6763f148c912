"""Group-less readers: a slice of one partition (``sr replay``), or whole topics from the start.

Neither joins a consumer group nor commits anything: each assigns its partitions directly,
under a throw-away ``group.id`` that librdkafka requires but never uses for an assignment.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from worker.adapters.kafka.config import KafkaConfig
from worker.adapters.kafka.errors import translate_exception
from worker.adapters.kafka.records import record_from_message
from worker.app.ports import Record
from worker.errors import InputError, KafkaFatalError, KafkaUnavailableError

__all__ = ["ConsumerFactory", "KafkaPartitionReader", "TopicReader"]

#: Builds a consumer from a librdkafka property dict (``Consumer`` unless a test injects one).
ConsumerFactory = Callable[[dict[str, Any]], Consumer]

_BATCH = 500  # records per consume() call


def _open(factory: ConsumerFactory, conf: dict[str, Any]) -> Consumer:
    try:
        return factory(conf)
    except KafkaException as exc:
        raise translate_exception(exc, "cannot create a Kafka reader") from exc


class KafkaPartitionReader:
    """Reads a slice of one partition (implements :class:`~worker.app.ports.PartitionReader`).

    The end is found without trusting the high watermark alone (Tansu reports a wrong one for
    multi-record batches, contract §1): reading stops at ``to_offset`` (exclusive) when given,
    else once no record arrived for ``idle_timeout`` seconds *and* the position reached the
    watermark — or after ``max_idle_rounds`` idle periods whatever the watermark says.
    No I/O in ``__init__``.
    """

    def __init__(self, config: KafkaConfig, *, max_idle_rounds: int = 3,
                 consumer_factory: ConsumerFactory = Consumer) -> None:
        self._config = config
        self._max_idle_rounds = max_idle_rounds
        self._factory = consumer_factory

    def read_slice(self, topic: str, partition: int, *, from_offset: int | None = None,
                   from_time_ms: int | None = None, to_offset: int | None = None,
                   idle_timeout: float = 5.0) -> Iterator[Record]:
        """Yield the records of ``topic[partition]`` from the start point up to ``to_offset``
        (exclusive) or, without it, until the partition stays idle at its end.

        The start is ``from_offset``, else the first record at or after ``from_time_ms``
        (milliseconds since the epoch), else the beginning of the partition.
        ``idle_timeout`` is in seconds. Lazy: nothing is read before the first ``next()``.

        Raises:
            KafkaUnavailableError: the broker could not be reached.
            KafkaFatalError: the client refused its configuration or a request.
            InputError: the topic or partition does not exist.
        """
        # The reader's own settings come last: they are what makes it a group-less reader.
        conf = self._config.base()
        conf.update({"group.id": f"sr-replay-{time.monotonic_ns()}", "enable.auto.commit": False,
                     "enable.partition.eof": False, "auto.offset.reset": "earliest"})
        consumer = _open(self._factory, conf)
        try:
            try:
                md = consumer.list_topics(topic, timeout=10)
            except KafkaException as exc:
                raise KafkaUnavailableError(f"cannot read metadata of {topic}: {exc}") from exc
            meta = md.topics.get(topic)
            if meta is None or meta.error is not None or partition not in meta.partitions:
                raise InputError(f"topic {topic} partition {partition} does not exist")
            try:
                start: int = OFFSET_BEGINNING if from_offset is None else from_offset
                if from_time_ms is not None:
                    wanted = TopicPartition(topic, partition, from_time_ms)
                    found = consumer.offsets_for_times([wanted], timeout=10)
                    start = found[0].offset if found and found[0].offset >= 0 else OFFSET_BEGINNING
                consumer.assign([TopicPartition(topic, partition, start)])
            except KafkaException as exc:
                raise translate_exception(exc, f"cannot position on {topic}[{partition}]") from exc
            yield from self._records(consumer, topic, partition, to_offset, idle_timeout)
        finally:
            consumer.close()

    def _records(self, consumer: Consumer, topic: str, partition: int, to_offset: int | None,
                 idle_timeout: float) -> Iterator[Record]:
        idle_rounds = 0
        while True:
            try:
                # consume(n, t) waits all of t unless n records arrive, so a slice shorter than a
                # batch would cost an idle period per batch: wait for the first record, then
                # take what is already buffered. Only the final idle period is waited out.
                first = consumer.poll(idle_timeout)
                msgs = [] if first is None else [first, *consumer.consume(_BATCH - 1, 0)]
            except KafkaException as exc:
                raise translate_exception(exc, f"reading {topic}[{partition}] failed") from exc
            records = [record_from_message(m) for m in msgs if m.error() is None]
            if not records:
                idle_rounds += 1
                try:
                    _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5,
                                                                cached=False)
                    position = consumer.position([TopicPartition(topic, partition)])[0].offset
                except KafkaException as exc:
                    raise translate_exception(exc, f"watermark query of {topic}[{partition}] failed") from exc
                if (position >= high or idle_rounds >= self._max_idle_rounds) or (
                        to_offset is not None and position >= to_offset):
                    return
                continue
            idle_rounds = 0
            for record in records:
                if to_offset is not None and record.offset >= to_offset:
                    return
                yield record


class TopicReader:
    """Reads whole topics, every partition, outside any group.

    For ``sr follow``, the READY follower, demos and tests: :meth:`poll` returns what arrived
    since the last call. ``start`` is ``"beginning"`` (default), ``"end"`` (only what arrives
    from now on) or epoch milliseconds (the first record at or after that time in each
    partition). Use as a context manager; no I/O in ``__init__``.
    """

    def __init__(self, config: KafkaConfig, topics: Sequence[str], *,
                 consumer_factory: ConsumerFactory = Consumer, metadata_timeout: float = 10.0,
                 start: str | int = "beginning") -> None:
        if not (start in ("beginning", "end") or (isinstance(start, int) and not isinstance(start, bool))):
            raise InputError(f"start must be 'beginning', 'end' or epoch milliseconds, not {start!r}")
        self._config = config
        self._topics = list(topics)
        self._factory = consumer_factory
        self._metadata_timeout = metadata_timeout
        self._start = start
        self._consumer: Consumer | None = None

    def __enter__(self) -> TopicReader:
        return self.open()

    def open(self) -> TopicReader:
        """Assign every partition of the topics from the beginning (idempotent).

        Raises:
            KafkaUnavailableError: no metadata. InputError: a topic does not exist.
            KafkaFatalError: librdkafka refused the configuration.
        """
        if self._consumer is not None:
            return self
        conf = self._config.base()
        conf.update({"group.id": f"sr-reader-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False,
                     "auto.offset.reset": "earliest"})
        consumer = _open(self._factory, conf)
        try:
            consumer.assign(self._assignment(consumer))
        except BaseException:
            consumer.close()
            raise
        self._consumer = consumer
        return self

    def _assignment(self, consumer: Consumer) -> list[TopicPartition]:
        """Every partition of the reader's topics, from the beginning.

        Raises:
            KafkaUnavailableError: no metadata. InputError: a topic does not exist.
        """
        assignment: list[TopicPartition] = []
        for topic in self._topics:
            try:
                md = consumer.list_topics(topic, timeout=self._metadata_timeout)
            except KafkaException as exc:
                raise KafkaUnavailableError(f"cannot read metadata of {topic}: {exc}") from exc
            meta = md.topics.get(topic)
            if meta is None:
                raise InputError(f"topic {topic} does not exist")
            assignment.extend(TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions))
        if self._start == "end":
            return [TopicPartition(tp.topic, tp.partition, OFFSET_END) for tp in assignment]
        if isinstance(self._start, int):
            wanted = [TopicPartition(tp.topic, tp.partition, self._start) for tp in assignment]
            try:
                found = consumer.offsets_for_times(wanted, timeout=self._metadata_timeout)
            except KafkaException as exc:
                raise translate_exception(exc, "cannot find offsets for the start time") from exc
            # No record at or after the time: start at the end of that partition.
            return [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
                    for tp in found]
        return assignment

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def poll(self, max_records: int = _BATCH, timeout: float = 0.2) -> list[Record]:
        """Up to ``max_records`` new records, waiting at most ``timeout`` seconds for them.

        Raises:
            KafkaUnavailableError / KafkaFatalError: the client reported a fault.
        """
        if self._consumer is None:
            raise KafkaFatalError("topic reader is not open (use it as a context manager)")
        try:
            msgs = self._consumer.consume(max_records, timeout)
        except KafkaException as exc:
            raise translate_exception(exc, "reading topics failed") from exc
        return [record_from_message(m) for m in msgs if m.error() is None]

    def at_end(self) -> bool:
        """Whether every assigned partition's position has reached its high watermark.

        On Tansu the watermark can lag (contract §1): call it only after a poll returned
        nothing for a while, as ``--until-end`` does.

        Raises:
            KafkaUnavailableError / KafkaFatalError: the client reported a fault.
        """
        if self._consumer is None:
            raise KafkaFatalError("topic reader is not open (use it as a context manager)")
        try:
            assignment = self._consumer.assignment()
            for tp in self._consumer.position(assignment):
                _low, high = self._consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                                  timeout=5, cached=False)
                if high > 0 and (tp.offset < 0 or tp.offset < high):
                    return False
        except KafkaException as exc:
            raise translate_exception(exc, "watermark query failed") from exc
        return True

    def close(self) -> None:
        """Release the client (nothing to commit: the reader is in no group)."""
        if self._consumer is None:
            return
        consumer, self._consumer = self._consumer, None
        with contextlib.suppress(KafkaException, RuntimeError):
            consumer.close()
