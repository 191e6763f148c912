"""Topic creation on the session's real broker (Tansu when embedded): replication factor and
topic configs as asked, idempotent re-runs, what the broker does with more replicas than
brokers, and SASL settings that reach the broker (and its refusal, in one line)."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]  # no __all__ upstream

from tests.harness.servers import Servers, unique
from worker.adapters.kafka import KafkaConfig, TopicAdmin, TopicRefusedError, TopicSpec
from worker.errors import KafkaFatalError, KafkaUnavailableError

CONFIGS = {"cleanup.policy": "delete", "retention.ms": "3600000", "min.insync.replicas": "1"}


def _embedded_tansu(servers: Servers) -> bool:
    return servers.embedded is not None and servers.embedded.config.kafka


def _described(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (fut,) = admin.describe_configs([ConfigResource("topic", topic)]).values()
    return {name: entry.value for name, entry in fut.result(15).items() if name in CONFIGS}


def test_topics_are_created_with_replication_factor_and_configs_then_left_alone(kafka_bootstrap: str) -> None:
    names = [unique("admin.a."), unique("admin.b.")]
    admin = TopicAdmin(KafkaConfig(bootstrap=kafka_bootstrap))
    specs = [TopicSpec(names[0], 3, 1, CONFIGS), TopicSpec(names[1], 1, 1, CONFIGS)]
    first = admin.ensure(specs)
    assert [(r.name, r.created, r.partitions, r.replication_factor) for r in first] == [
        (names[0], True, 3, 1), (names[1], True, 1, 1)]
    assert _described(kafka_bootstrap, names[0]) == CONFIGS
    # Re-running is harmless: nothing is created or changed, each topic reported as it is.
    again = admin.ensure([TopicSpec(names[0], 8, 1), TopicSpec(names[1], 1, 1)])
    assert [(r.created, r.partitions) for r in again] == [(False, 3), (False, 1)]
    assert again[0].describe() == f"topic {names[0]} already existed (3 partitions, replication factor 1)"


def test_more_replicas_than_brokers(kafka_bootstrap: str, servers: Servers) -> None:
    name = unique("admin.rf3.")
    admin = TopicAdmin(KafkaConfig(bootstrap=kafka_bootstrap))
    if _embedded_tansu(servers):
        # Tansu (memory storage, one broker) accepts it and reports three replicas, all on its
        # single node id: it does not check the factor against the broker count.
        (result,) = admin.ensure([TopicSpec(name, 2, 3)])
        assert (result.created, result.partitions, result.replication_factor) == (True, 2, 3)
        return
    brokers = len(AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).brokers)
    if brokers >= 3:
        pytest.skip(f"the cluster has {brokers} brokers: replication factor 3 is not a refusal there")
    with pytest.raises(TopicRefusedError) as caught:
        admin.ensure([TopicSpec(name, 2, 3)])
    message = str(caught.value)
    assert "\n" not in message and name in message and "INVALID_REPLICATION_FACTOR" in message


def test_sasl_settings_reach_the_broker_and_its_refusal_is_one_line(kafka_bootstrap: str,
                                                                     servers: Servers) -> None:
    if not _embedded_tansu(servers):
        pytest.skip("the refusal's wording is Tansu's; on other brokers a PLAINTEXT listener just drops the link")
    config = KafkaConfig(bootstrap=kafka_bootstrap, client_extra={
        "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
        "sasl.username": "sr-admin", "sasl.password": "not-a-real-password"})
    started = time.monotonic()
    with pytest.raises(KafkaFatalError) as caught:
        TopicAdmin(config).ensure([TopicSpec(unique("admin.sasl."), 1)], timeout=20)
    message = str(caught.value)
    # The client did speak SASL to the broker (the handshake is what the broker refused) ...
    assert message.startswith(f"Kafka at {kafka_bootstrap} refused the connection: sasl_plaintext://")
    assert "SASL PLAIN mechanism handshake failed" in message and "(_AUTHENTICATION)" in message
    # ... and the refusal is final at once, in one line, without the password.
    assert "\n" not in message and "not-a-real-password" not in message
    assert time.monotonic() - started < 15


def test_an_unreachable_cluster_is_one_unavailable_line() -> None:
    with pytest.raises(KafkaUnavailableError) as caught:
        TopicAdmin(KafkaConfig(bootstrap="127.0.0.1:1")).ensure([TopicSpec("t", 1)], timeout=2)
    message = str(caught.value)
    assert message.startswith("cannot reach Kafka at 127.0.0.1:1 within 2s: ")
    assert "Connection refused" in message and "\n" not in message
