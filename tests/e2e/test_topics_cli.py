"""``sr topics create`` as a subprocess on the session's broker: one line per topic, the
replication factor and topic configs as asked, idempotent re-runs, SASL settings from the
environment reaching the broker, refusals as one ``sr: error:`` line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tests.harness.servers import Servers, unique

pytestmark = pytest.mark.e2e

SR = str(Path(sys.executable).parent / "sr")
LOGICAL = ("INTENTS", "TRIGGERS", "READY", "STATUS", "ENGINE_REQUESTS", "ENGINE_RESULTS", "DLQ")


def _env(servers: Servers, **extra: str) -> tuple[dict[str, str], list[str]]:
    names = [unique(f"cli.{name.lower()}.") for name in LOGICAL]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SR_")}
    env.update(servers.env())
    env.update({f"SR_TOPICS__{logical}": name for logical, name in zip(LOGICAL, names, strict=True)})
    env.update(extra)
    return env, names


def _sr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SR, "topics", "create", *args], env=env, capture_output=True, text=True, timeout=120)


def test_topics_create_then_again(kafka_bootstrap: str, servers: Servers) -> None:
    env, names = _env(servers)
    first = _sr(env, "--partitions", "2", "--replication-factor", "1", "--config", "retention.ms=3600000")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        *(f"topic {name} created (2 partitions, replication factor 1)" for name in names[:6]),
        f"topic {names[6]} created (1 partitions, replication factor 1)",
    ]
    assert first.stderr == ""
    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10)
    assert {len(metadata.topics[name].partitions) for name in names[:6]} == {2}
    again = _sr(env, "--partitions", "2")
    assert again.returncode == 0, again.stderr
    assert [line.split(" ")[2:4] for line in again.stdout.splitlines()] == [["already", "existed"]] * 7


def test_topics_create_speaks_sasl_from_the_environment(kafka_bootstrap: str, servers: Servers) -> None:
    if servers.embedded is None or not servers.embedded.config.kafka:
        pytest.skip("the refusal's wording is Tansu's")
    env, _names = _env(servers, SR_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", SR_KAFKA_SASL_MECHANISM="PLAIN",
                       SR_KAFKA_SASL_USERNAME="sr-admin", SR_KAFKA_SASL_PASSWORD="not-a-real-password")
    res = _sr(env, "--replication-factor", "3")
    assert res.returncode == 1  # KAFKA_FATAL: the broker refused the credentials
    assert res.stdout == ""
    assert res.stderr.startswith(f"sr: error: Kafka at {kafka_bootstrap} refused the connection: sasl_plaintext://")
    assert "SASL PLAIN mechanism handshake failed" in res.stderr
    assert res.stderr.count("\n") == 1 and "not-a-real-password" not in res.stderr and "Traceback" not in res.stderr
