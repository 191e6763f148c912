"""Resolution of the real servers the integration and e2e tests talk to.

Order per server (contract §1): the ``SR_TEST_*`` environment variable; else a
testcontainers container when a Docker engine answers; else the embedded binaries.
A server that cannot be had fails the run under ``CI=true`` and skips the test locally.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from worker.embedded.stack import (
    DEFAULT_TOPICS,
    DEV_ACCESS_KEY,
    DEV_REGION,
    DEV_SECRET_KEY,
    EmbeddedStack,
    StackConfig,
    create_topics,
)
from worker.errors import StackError

TEST_BUCKET = "sr-test-bucket"


def in_ci() -> bool:
    """True when running under CI (``CI=true``), where a missing server is a failure."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> None:
    """Fail under CI, skip locally."""
    if in_ci():
        pytest.fail(f"required test server unavailable under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def unique(prefix: str) -> str:
    """A short unique name for per-test isolation (topics, groups, prefixes, databases)."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@dataclass
class Servers:
    """Endpoints of the session's servers plus the PIDs the session started itself."""

    kafka_bootstrap: str | None = None
    pg_dsn: str | None = None
    s3_endpoint: str | None = None
    s3_bucket: str = TEST_BUCKET
    s3_access_key: str = DEV_ACCESS_KEY
    s3_secret_key: str = DEV_SECRET_KEY
    s3_region: str = DEV_REGION
    started_pids: list[int] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    embedded: EmbeddedStack | None = None

    def env(self) -> dict[str, str]:
        """``SR_*``/``AWS_*`` variables that point an ``sr`` subprocess at these servers."""
        env = {"SR_S3_BUCKET": self.s3_bucket}
        if self.kafka_bootstrap:
            env["SR_KAFKA_BOOTSTRAP"] = self.kafka_bootstrap
        if self.pg_dsn:
            env["SR_PG_DSN"] = self.pg_dsn
        if self.s3_endpoint:
            env.update(
                SR_S3_ENDPOINT=self.s3_endpoint,
                AWS_ACCESS_KEY_ID=self.s3_access_key,
                AWS_SECRET_ACCESS_KEY=self.s3_secret_key,
                AWS_DEFAULT_REGION=self.s3_region,
            )
        return env


def _docker_available() -> bool:
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:  # any failure to reach an engine means "no Docker"
        return False


@contextlib.contextmanager
def _docker_servers(servers: Servers, need: set[str]) -> Iterator[None]:
    """Start Apache Kafka (KRaft), Postgres and MinIO containers for the servers in ``need``."""
    with contextlib.ExitStack() as stack:
        if "kafka" in need:
            from testcontainers.kafka import KafkaContainer

            kafka = stack.enter_context(KafkaContainer("apache/kafka:3.9.1").with_kraft())
            servers.kafka_bootstrap = kafka.get_bootstrap_server()
        if "postgres" in need:
            from testcontainers.postgres import PostgresContainer

            pg = stack.enter_context(PostgresContainer("postgres:17", driver=None))
            servers.pg_dsn = pg.get_connection_url()
        if "s3" in need:
            from testcontainers.minio import MinioContainer

            minio = stack.enter_context(MinioContainer("minio/minio:latest"))
            cfg = minio.get_config()
            servers.s3_endpoint = f"http://{cfg['endpoint']}"
            servers.s3_access_key = cfg["access_key"]
            servers.s3_secret_key = cfg["secret_key"]
        yield


@contextlib.contextmanager
def resolve_servers(state_dir: Path) -> Iterator[Servers]:
    """Yield the session's servers; stop whatever this function started on exit."""
    servers = Servers(
        kafka_bootstrap=os.environ.get("SR_TEST_KAFKA_BOOTSTRAP") or None,
        pg_dsn=os.environ.get("SR_TEST_PG_DSN") or None,
        s3_endpoint=os.environ.get("SR_TEST_S3_ENDPOINT") or None,
    )
    if servers.s3_endpoint:
        servers.s3_access_key = os.environ.get("AWS_ACCESS_KEY_ID", DEV_ACCESS_KEY)
        servers.s3_secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY", DEV_SECRET_KEY)
        servers.s3_bucket = os.environ.get("SR_TEST_S3_BUCKET", TEST_BUCKET)
    need = {
        name
        for name, have in (("kafka", servers.kafka_bootstrap), ("postgres", servers.pg_dsn),
                           ("s3", servers.s3_endpoint))
        if not have
    }
    with contextlib.ExitStack() as stack:
        if need and os.environ.get("SR_TEST_NO_DOCKER") != "1" and _docker_available():
            stack.enter_context(_docker_servers(servers, need))
            need = set()
        if need:
            stack_cfg = StackConfig(
                state_dir=state_dir,
                kafka="kafka" in need,
                postgres="postgres" in need,
                s3="s3" in need,
                bucket=servers.s3_bucket,
                topics=(),
            )
            embedded = EmbeddedStack(stack_cfg)
            try:
                eps = embedded.start()
            except StackError as exc:
                for name in need:
                    servers.problems[name] = str(exc)
            else:
                servers.embedded = embedded
                servers.started_pids.extend(embedded.pids)
                servers.kafka_bootstrap = servers.kafka_bootstrap or eps.kafka_bootstrap
                servers.pg_dsn = servers.pg_dsn or eps.pg_dsn
                servers.s3_endpoint = servers.s3_endpoint or eps.s3_endpoint
                stack.callback(embedded.stop)
        yield servers


def make_topics(bootstrap: str, partitions: int = 4, names: tuple[str, ...] | None = None) -> dict[str, str]:
    """Create a unique set of SR topics; returns logical name -> unique topic name."""
    from worker.embedded.stack import TopicSpec

    suffix = uuid.uuid4().hex[:10]
    logical = names or tuple(t.name for t in DEFAULT_TOPICS)
    mapping = {name: f"{name}.{suffix}" for name in logical}
    create_topics(bootstrap, [TopicSpec(real, 1 if name == "sr.dlq" else partitions)
                              for name, real in mapping.items()])
    return mapping
