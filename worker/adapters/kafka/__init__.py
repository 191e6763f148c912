"""Kafka adapter: a thin typed wrapper over confluent-kafka (librdkafka). The only SR package
importing ``confluent_kafka`` (besides the dev-only :mod:`worker.embedded`).

* :mod:`~worker.adapters.kafka.config` — :class:`KafkaConfig`, one set of connection settings
  (SASL/TLS pass-through included) for every client below.
* :mod:`~worker.adapters.kafka.producer` — :class:`EventProducer`, idempotent (``acks=all``),
  per-message delivery futures.
* :mod:`~worker.adapters.kafka.consumer` — :class:`IntakeConsumer`, the worker's group consumer:
  manual offset storage, explicit commits, rebalance hooks with ``(topic, partition)`` pairs.
* :mod:`~worker.adapters.kafka.reader` — :class:`KafkaPartitionReader` (a partition slice, for
  ``sr replay``) and :class:`TopicReader` (whole topics from the start, for demos and tests).
* :mod:`~worker.adapters.kafka.admin` — :class:`TopicAdmin`, idempotent topic creation with
  partitions, replication factor and topic configs (``sr topics create``, the dev stack).
* :mod:`~worker.adapters.kafka.errors` — librdkafka errors translated once: a retriable or
  transport fault becomes :class:`~worker.errors.KafkaUnavailableError`, anything else
  :class:`~worker.errors.KafkaFatalError` (a broker's topic refusal: :class:`TopicRefusedError`).
"""

from __future__ import annotations

from worker.adapters.kafka.admin import AdminClientFactory, AdminClientLike, TopicAdmin, TopicResult, TopicSpec
from worker.adapters.kafka.config import KafkaConfig
from worker.adapters.kafka.consumer import IntakeConsumer, PartitionId, RebalanceHook
from worker.adapters.kafka.errors import TopicRefusedError
from worker.adapters.kafka.producer import EventProducer, Headers
from worker.adapters.kafka.reader import ConsumerFactory, KafkaPartitionReader, TopicReader
from worker.adapters.kafka.records import record_from_message

__all__ = [
    "AdminClientFactory",
    "AdminClientLike",
    "ConsumerFactory",
    "EventProducer",
    "Headers",
    "IntakeConsumer",
    "KafkaConfig",
    "KafkaPartitionReader",
    "PartitionId",
    "RebalanceHook",
    "TopicAdmin",
    "TopicReader",
    "TopicRefusedError",
    "TopicResult",
    "TopicSpec",
    "record_from_message",
]
