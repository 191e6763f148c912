"""Kafka from the tests' side: read what SR published, produce intents and raw bytes, group offsets."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from tests.harness.sr_env import SREnv
from worker.adapters.kafka import EventProducer, KafkaConfig, TopicReader
from worker.app.ports import Record
from worker.core.identity import run_id_of
from worker.core.models import RunIntent
from worker.core.vocabulary import IDEMPOTENCY_HEADER
from worker.runtime.compose import kafka_config

__all__ = [
    "committed_total",
    "group_by_idempotency_key",
    "group_committed",
    "produce_raw",
    "read_topic",
    "submit",
]


def read_topic(bootstrap: str, topic: str, *, until: Callable[[list[Record]], bool] | None = None,
               timeout: float = 60.0, settle: float = 0.0) -> list[Record]:
    """Read a topic from the beginning of every partition (no group) until ``until`` holds.

    With ``until=None`` it reads until ``timeout``. After ``until`` holds it keeps reading for
    ``settle`` seconds, so tests can assert nothing *extra* arrived.
    """
    with TopicReader(KafkaConfig(bootstrap=bootstrap), [topic]) as reader:
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        satisfied_at: float | None = None
        while time.monotonic() < deadline:
            records.extend(reader.poll(500, 0.2))
            if until is not None and satisfied_at is None and until(records):
                satisfied_at = time.monotonic()
            if satisfied_at is not None and time.monotonic() - satisfied_at >= settle:
                break
        return records


def produce_raw(env: SREnv, topic: str, items: Iterable[tuple[bytes | None, bytes]]) -> None:
    """Produce raw (key, value) pairs and wait for all acks."""
    with EventProducer(kafka_config(env.settings)) as producer:
        futures = [producer.send(topic, key=k, value=v) for k, v in items]
        for fut in futures:
            fut.result(60)


def submit(env: SREnv, intents: Iterable[RunIntent], *, key: Callable[[RunIntent], bytes] | None = None) -> None:
    """Publish intents (Avro single-object encoding) to the env's intents topic."""
    produce_raw(env, env.settings.topics.intents,
                [((key(i) if key else run_id_of(i).encode()), env.codec.encode_intent(i)) for i in intents])


def group_committed(bootstrap: str, group_id: str, topic: str, partitions: int | None = None) -> int:
    """Sum of ``group_id``'s committed offsets over ``topic`` (OffsetFetch; does not join the group).

    Args:
        partitions: the topic's partition count; None asks the broker's metadata.
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id, "enable.auto.commit": False})
    try:
        if partitions is None:
            numbers = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        else:
            numbers = list(range(partitions))
        committed = consumer.committed([TopicPartition(topic, p) for p in numbers], timeout=10)
        return sum(max(tp.offset, 0) for tp in committed)
    finally:
        consumer.close()


def committed_total(env: SREnv, topic: str) -> int:
    """Sum of the world's worker group's committed offsets over ``topic``'s partitions."""
    return group_committed(env.settings.kafka_bootstrap, env.settings.group_id, topic)


def group_by_idempotency_key(records: Iterable[Record]) -> dict[bytes, set[tuple[Any, ...]]]:
    """idempotency key → the distinct (key, value, headers) byte tuples published under it."""
    grouped: dict[bytes, set[tuple[Any, ...]]] = defaultdict(set)
    for r in records:
        header = r.header(IDEMPOTENCY_HEADER)
        assert header is not None, f"record without {IDEMPOTENCY_HEADER}: {r}"
        grouped[header].add((r.key, r.value, tuple(sorted(r.headers))))
    return grouped
