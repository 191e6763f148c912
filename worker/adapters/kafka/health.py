"""Kafka's part of the worker's health surface: the readiness check and the consumer-lag query.

* :func:`kafka_check` — a readiness check: one metadata request through its own, lazily
  created AdminClient with a short socket timeout (never the worker's producer or consumer).
* :func:`consumer_lag` — messages between the group's committed offset (or this member's
  position) and the high watermark, per assigned partition; the worker's gauge refresher
  (:mod:`worker.runtime.gauges`) turns it into ``sr_consumer_lag``.

Both translate librdkafka's ``KafkaException`` with the package's one translation
(:mod:`worker.adapters.kafka.errors`) into :class:`~worker.errors.KafkaUnavailableError` /
:class:`~worker.errors.KafkaFatalError`, and the check never puts a pass-through secret
(SASL password, token, key) into an error message.

Units: seconds for timeouts, messages (offsets) for lag.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from worker.adapters.kafka import KafkaConfig
from worker.adapters.kafka.errors import translate_exception
from worker.errors import KafkaFatalError, KafkaUnavailableError, redact

__all__ = ["LagSource", "consumer_lag", "kafka_check"]

# librdkafka property names whose values must never reach a message (SR_KAFKA_* pass-through).
_SECRET_WORDS = ("password", "secret", "token", "key", "jaas")


class _KafkaCheck:
    """Metadata request through one lazily created, reused AdminClient."""

    def __init__(self, config: KafkaConfig, timeout: float, topics: tuple[str, ...]) -> None:
        self._config = config
        self._timeout = timeout
        self._topics = topics
        self._admin: AdminClient | None = None
        self._lock = threading.Lock()
        self._secrets = [v for k, v in config.client_extra.items() if any(w in k.lower() for w in _SECRET_WORDS)]

    def _client(self) -> AdminClient:
        with self._lock:
            if self._admin is None:
                conf = self._config.base()
                conf.update({"socket.timeout.ms": max(10, round(self._timeout * 1000)),
                             "log.connection.close": False})
                self._admin = AdminClient(conf)
            return self._admin

    def __call__(self) -> None:
        try:
            metadata = self._client().list_topics(timeout=self._timeout)
        except KafkaException as exc:
            error = translate_exception(exc, "metadata request failed")
            raise type(error)(redact(str(error), self._secrets)) from None
        if not metadata.brokers:
            raise KafkaUnavailableError("metadata lists no broker")
        missing = sorted(t for t in self._topics if t not in metadata.topics or metadata.topics[t].error)
        if missing:
            raise KafkaFatalError(f"missing topics: {', '.join(missing)}")

    def close(self) -> None:
        """Drop the AdminClient (librdkafka closes it when collected)."""
        with self._lock:
            self._admin = None


def kafka_check(kafka_config: KafkaConfig, *, timeout: float = 1.5, topics: Iterable[str] = ()) -> Callable[[], None]:
    """A readiness check of the Kafka cluster: one metadata request (``list_topics``).

    No I/O until the check is called; the AdminClient is created on the first call and
    reused (a reconnecting client, not a connection per probe). The returned object also
    has a ``close()`` that drops the client.

    Args:
        kafka_config: SR's Kafka client settings (SASL/TLS pass-through included).
        timeout: seconds to wait for the metadata answer.
        topics: topics that must exist (optional).

    The returned check raises:
        KafkaUnavailableError: no broker answered within ``timeout``.
        KafkaFatalError: a required topic does not exist, or the cluster refused the request
            (e.g. authentication failed).
    """
    return _KafkaCheck(kafka_config, timeout, tuple(topics))


class LagSource(Protocol):
    """What :func:`consumer_lag` needs: an :class:`~worker.adapters.kafka.IntakeConsumer`
    or a raw ``confluent_kafka.Consumer``."""

    def assignment(self) -> list[TopicPartition]: ...

    def committed(self, partitions: list[TopicPartition], timeout: float = ...) -> list[TopicPartition]: ...

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float = ...,
                              cached: bool = ...) -> tuple[int, int] | None: ...


def consumer_lag(consumer: LagSource, topics: Iterable[str] | None = None, *, timeout: float = 5.0,
                 cached: bool = False, use_committed: bool = True) -> dict[tuple[str, int], int]:
    """Lag in messages per assigned partition: high watermark − committed offset (or position).

    Call it from the thread that owns the consumer (the worker loop), every few seconds.

    A partition with nothing committed counts from its low watermark (the group starts at
    ``earliest``). A negative difference is reported as 0.

    The value is only as good as the broker's high watermark. Tansu (the local stand-in,
    contract §1) reports a wrong watermark after multi-record batches (hwm = 1 after 10
    records), so locally the lag can read 0 while messages are waiting; on Apache Kafka it
    is exact. Never use this to decide where a partition ends.

    Args:
        consumer: the group member whose assignment is measured.
        topics: only these topics (default: every assigned partition).
        timeout: seconds per broker query (committed offsets; watermarks unless ``cached``).
        cached: use the watermarks from the last fetch response instead of asking the broker
            (no I/O; partitions not fetched yet are left out).
        use_committed: measure from the committed offsets (what a new owner would redo);
            False measures from this member's fetch position (no I/O).

    Returns:
        ``{(topic, partition): lag}``.

    Raises:
        KafkaUnavailableError: the broker did not answer in time.
        KafkaFatalError: the broker refused a request.
    """
    wanted = None if topics is None else set(topics)
    try:
        parts = [TopicPartition(tp.topic, tp.partition) for tp in consumer.assignment()
                 if wanted is None or tp.topic in wanted]
        if not parts:
            return {}
        base = consumer.committed(parts, timeout=timeout) if use_committed else consumer.position(parts)
        offsets = {(tp.topic, tp.partition): int(tp.offset) for tp in base}
        lags: dict[tuple[str, int], int] = {}
        for tp in parts:
            marks = consumer.get_watermark_offsets(tp, timeout=timeout, cached=cached)
            if marks is None:
                continue
            low, high = int(marks[0]), int(marks[1])
            if high < 0:
                continue  # unknown (cached and never fetched)
            offset = offsets.get((tp.topic, tp.partition), -1)
            if offset < 0:
                offset = max(low, 0)
            lags[(tp.topic, tp.partition)] = max(0, high - offset)
        return lags
    except KafkaException as exc:
        # Only a raw confluent_kafka.Consumer gets here (IntakeConsumer translates itself).
        raise translate_exception(exc, "consumer lag query failed") from exc
