"""The real servers the integration/e2e tests and the benchmarks talk to.

Order per server (contract §1): the ``SR_TEST_*`` environment variable; else, when allowed, a
testcontainers container if a Docker engine answers; else the embedded binaries. Tests ask
for Docker; the benchmarks do not (their figures are measured on the embedded stack or on
servers named explicitly). A server that cannot be had is recorded in
:attr:`Servers.problems`; :meth:`Servers.require_kafka` and friends raise
:class:`ServerUnavailable` for it, which a test turns into a skip (or, under ``CI=true``, a
failure) with :func:`unavailable`.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from worker.embedded.stack import DEV_ACCESS_KEY, DEV_REGION, DEV_SECRET_KEY, EmbeddedStack, StackConfig
from worker.errors import StackError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from worker.adapters.s3 import S3Config

__all__ = [
    "TEST_BUCKET",
    "ServerUnavailable",
    "Servers",
    "ensure_bucket",
    "in_ci",
    "resolve_servers",
    "s3_config_for",
    "unavailable",
    "unique",
]

TEST_BUCKET = "sr-test-bucket"


class ServerUnavailable(RuntimeError):
    """A server the caller needs was neither given nor could be started."""


def in_ci() -> bool:
    """True when running under CI (``CI=true``), where a missing server is a failure."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Fail the current test under CI, skip it locally (never returns)."""
    import pytest

    if in_ci():
        pytest.fail(f"required test server unavailable under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def unique(prefix: str) -> str:
    """A short unique name for per-test isolation (topics, groups, prefixes, databases)."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@dataclass
class Servers:
    """Endpoints of the session's servers, and the embedded stack when this process started one.

    An endpoint is None when that server could not be had; :attr:`problems` then says why
    (server name -> reason).
    """

    kafka_bootstrap: str | None = None
    pg_dsn: str | None = None
    s3_endpoint: str | None = None
    s3_bucket: str = TEST_BUCKET
    s3_access_key: str = DEV_ACCESS_KEY
    s3_secret_key: str = DEV_SECRET_KEY
    s3_region: str = DEV_REGION
    problems: dict[str, str] = field(default_factory=dict)
    embedded: EmbeddedStack | None = None

    @property
    def started_pids(self) -> list[int]:
        """PIDs of every server process this process started (alive or not)."""
        return self.embedded.pids if self.embedded is not None else []

    def server_pids(self) -> dict[str, int]:
        """Server name (``postgres``, ``seaweedfs``, ``kafka``) -> PID of each live embedded server."""
        if self.embedded is None:
            return {}
        return {p.name: p.pid for p in self.embedded.processes if p.alive()}

    def require_kafka(self) -> str:
        """The Kafka bootstrap servers.

        Raises:
            ServerUnavailable: there is no Kafka.
        """
        return self._require("kafka", self.kafka_bootstrap)

    def require_postgres(self) -> str:
        """The DSN of the Postgres server (its maintenance database).

        Raises:
            ServerUnavailable: there is no Postgres.
        """
        return self._require("postgres", self.pg_dsn)

    def require_s3(self) -> str:
        """The S3 endpoint URL.

        Raises:
            ServerUnavailable: there is no S3 server.
        """
        return self._require("s3", self.s3_endpoint)

    def _require(self, name: str, value: str | None) -> str:
        if not value:
            raise ServerUnavailable(f"{name}: {self.problems.get(name, 'not configured')}")
        return value

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


def _from_environment(bucket: str) -> Servers:
    servers = Servers(
        kafka_bootstrap=os.environ.get("SR_TEST_KAFKA_BOOTSTRAP") or None,
        pg_dsn=os.environ.get("SR_TEST_PG_DSN") or None,
        s3_endpoint=os.environ.get("SR_TEST_S3_ENDPOINT") or None,
        s3_bucket=bucket,
    )
    if servers.s3_endpoint:
        servers.s3_access_key = os.environ.get("AWS_ACCESS_KEY_ID", DEV_ACCESS_KEY)
        servers.s3_secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY", DEV_SECRET_KEY)
        servers.s3_region = os.environ.get("AWS_DEFAULT_REGION", DEV_REGION)
        servers.s3_bucket = os.environ.get("SR_TEST_S3_BUCKET", bucket)
    return servers


@contextlib.contextmanager
def resolve_servers(state_dir: Path, *, bucket: str = TEST_BUCKET, docker: bool = True,
                    progress: Callable[[str], None] | None = None) -> Iterator[Servers]:
    """Yield the servers (environment > Docker when ``docker`` > embedded); stop what this started.

    Args:
        state_dir: where an embedded stack keeps its data and logs.
        bucket: the bucket to use when ``SR_TEST_S3_BUCKET`` does not name one (the embedded
            stack creates it).
        docker: try testcontainers when a Docker engine answers (``SR_TEST_NO_DOCKER=1``
            turns it off too).
        progress: called with one line before and after starting an embedded stack.

    A server that cannot be started is not an error here: it is left None and its reason is
    recorded in :attr:`Servers.problems`.
    """
    servers = _from_environment(bucket)
    need = {
        name
        for name, have in (("kafka", servers.kafka_bootstrap), ("postgres", servers.pg_dsn),
                           ("s3", servers.s3_endpoint))
        if not have
    }
    with contextlib.ExitStack() as stack:
        if need and docker and os.environ.get("SR_TEST_NO_DOCKER") != "1" and _docker_available():
            stack.enter_context(_docker_servers(servers, need))
            need = set()
        if need:
            _start_embedded(servers, need, state_dir, stack, progress)
        yield servers


def _start_embedded(servers: Servers, need: set[str], state_dir: Path, stack: contextlib.ExitStack,
                    progress: Callable[[str], None] | None) -> None:
    embedded = EmbeddedStack(StackConfig(
        state_dir=state_dir,
        kafka="kafka" in need,
        postgres="postgres" in need,
        s3="s3" in need,
        bucket=servers.s3_bucket,
        topics=(),
    ))
    if progress is not None:
        progress(f"starting embedded stack ({', '.join(n for n in ('kafka', 'postgres', 's3') if n in need)})")
    started = time.monotonic()
    try:
        eps = embedded.start()
    except StackError as exc:
        for name in need:
            servers.problems[name] = str(exc)
        return
    if progress is not None:
        progress(f"embedded stack healthy in {time.monotonic() - started:.1f}s")
    servers.embedded = embedded
    servers.kafka_bootstrap = servers.kafka_bootstrap or eps.kafka_bootstrap
    servers.pg_dsn = servers.pg_dsn or eps.pg_dsn
    servers.s3_endpoint = servers.s3_endpoint or eps.s3_endpoint
    stack.callback(embedded.stop)


def s3_config_for(servers: Servers, **overrides: Any) -> S3Config:
    """SR's own :class:`~worker.adapters.s3.S3Config` for these servers (``overrides`` on top)."""
    from pydantic import SecretStr

    from worker.adapters.s3 import S3Config

    settings: dict[str, Any] = {
        "endpoint_url": servers.s3_endpoint,
        "region": servers.s3_region,
        "access_key_id": SecretStr(servers.s3_access_key),
        "secret_access_key": SecretStr(servers.s3_secret_key),
    }
    settings.update(overrides)
    return S3Config(**settings)


def ensure_bucket(client: S3Client, bucket: str) -> None:
    """Create ``bucket`` unless it exists (any HEAD failure means "create it")."""
    try:
        client.head_bucket(Bucket=bucket)
    except Exception:
        client.create_bucket(Bucket=bucket)
