"""Shared fixtures: session-scoped real servers, per-test isolation, evidence, orphan-process checks."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest

from tests.harness.evidence import Boto3Sink, EvidenceWriter, ExampleEvidence
from tests.harness.paths import shared_evidence_policy
from tests.harness.servers import Servers, ServerUnavailable, ensure_bucket, resolve_servers, unavailable, unique
from tests.harness.sr_env import SREnv, build_env, dsn_for_db, make_topics
from worker.adapters.kafka import TopicSpec
from worker.embedded.stack import create_topics

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytest_plugins: list[str] = []


# ----------------------------------------------------------------------------- servers
@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The session's Kafka, Postgres and S3 (env > Docker > embedded), stopped at the end.

    Teardown verifies that every process the session started is gone.
    """
    with resolve_servers(tmp_path_factory.mktemp("stack")) as found:
        started = found.started_pids
        yield found
    still_alive = [pid for pid in started if _alive(pid)]
    if still_alive:
        raise RuntimeError(f"server processes still alive after teardown: {still_alive}")


def _alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return False
    return proc.status() != psutil.STATUS_ZOMBIE


def _required(endpoint: Callable[[], str]) -> str:
    try:
        return endpoint()
    except ServerUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture
def kafka_bootstrap(servers: Servers) -> str:
    """Bootstrap servers of the session's Kafka (skips/fails when unavailable)."""
    return _required(servers.require_kafka)


@pytest.fixture
def topics(kafka_bootstrap: str) -> dict[str, str]:
    """A fresh, uniquely named set of the SR topics (logical name -> real name)."""
    return make_topics(kafka_bootstrap)


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Callable[..., str]:
    """Create a unique topic: ``topic_factory("hint", partitions=4) -> name``."""

    def _make(hint: str = "t", partitions: int = 1) -> str:
        name = unique(f"{hint}.")
        create_topics(kafka_bootstrap, [TopicSpec(name, partitions)])
        return name

    return _make


@pytest.fixture
def group_id() -> str:
    """A unique consumer group id."""
    return unique("g-")


@pytest.fixture
def pg_server_dsn(servers: Servers) -> str:
    """DSN of the session's Postgres server (the maintenance database)."""
    return _required(servers.require_postgres)


@pytest.fixture(scope="session")
def pg_template(servers: Servers) -> str | None:
    """Name of a template database with SR's migrations applied (built once per session)."""
    if not servers.pg_dsn:
        return None
    import psycopg

    from worker.adapters.postgres import migrate

    name = f"sr_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(servers.pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(dsn_for_db(servers.pg_dsn, name))
    return name


@pytest.fixture
def pg_dsn(pg_server_dsn: str, pg_template: str | None) -> Iterator[str]:
    """A fresh database for this test, copied from the migrated template; dropped afterwards."""
    import psycopg

    name = unique("sr_t_")
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"' if pg_template
                     else f'CREATE DATABASE "{name}"')
    yield dsn_for_db(pg_server_dsn, name)
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def s3_client(servers: Servers) -> S3Client:
    """A boto3 S3 client for the session's object store (the test bucket exists)."""
    endpoint = _required(servers.require_s3)
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=servers.s3_access_key,
        aws_secret_access_key=servers.s3_secret_key,
        region_name=servers.s3_region,
        config=Config(retries={"max_attempts": 2}, max_pool_connections=32),
    )
    ensure_bucket(client, servers.s3_bucket)
    return client


@pytest.fixture
def sr_env(request: pytest.FixtureRequest, servers: Servers, pg_dsn: str, s3_client: S3Client,  # noqa: PLR0917
           kafka_bootstrap: str, tmp_path: Path) -> SREnv:
    """An isolated SR world (topics, database, S3 prefix, tenant) on the session's servers.

    Its policy is the example policy; a test marked ``shared_evidence`` (many runs on one
    evidence root on purpose) gets it with gate_6B unscoped.
    """
    shared = request.node.get_closest_marker("shared_evidence") is not None
    return build_env(servers, pg_dsn, tmp_path, policy=shared_evidence_policy() if shared else None)


@pytest.fixture
def s3_prefix() -> str:
    """A unique key prefix for this test inside the shared test bucket."""
    return unique("t-")


@pytest.fixture
def write_evidence(sr_env: SREnv, s3_client: S3Client) -> EvidenceWriter:
    """``write_evidence(name, gates=("3A", "6B"), tamper=None, flag_6b="auto", extra_6b=None)``.

    Seeds the example policy's gates for the run ``name`` in ``sr_env`` (see
    :class:`~tests.harness.evidence.EvidenceWriter`).
    """
    return ExampleEvidence(Boto3Sink(s3_client), sr_env.bucket, sr_env.evidence_prefix)


# ----------------------------------------------------------------------------- orphan check
#: Leftover processes the xdist workers reported (collected by the controller).
_WORKER_LEFTOVERS: list[str] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any child process of the test session outlived it.

    Under pytest-xdist each worker checks its own children (it started the servers) and
    reports them to the controller, which fails the run; the controller's own children are
    the workers themselves and are not checked.
    """
    config = session.config
    worker_output = getattr(config, "workeroutput", None)
    if worker_output is None and getattr(config.option, "dist", "no") != "no":
        if _WORKER_LEFTOVERS:
            print(f"\nERROR: processes started by the test session are still alive: {_WORKER_LEFTOVERS}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    me = psutil.Process()
    leftovers = []
    for child in me.children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                leftovers.append(f"{child.pid}:{' '.join(child.cmdline()[:3])}")
        except psutil.NoSuchProcess:
            continue
    if leftovers:
        print(f"\nERROR: processes started by the test session are still alive: {leftovers}")
        for child in me.children(recursive=True):
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if worker_output is not None:
            worker_output["sr_leftovers"] = leftovers  # sent to the controller after this hook


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """(pytest-xdist controller) Collect the leftover processes a worker reported."""
    _WORKER_LEFTOVERS.extend(getattr(node, "workeroutput", {}).get("sr_leftovers", []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print what the reliability tests measured (crash points, re-sends, recoveries).

    The lines travel in each test's report (``user_properties``), so they are printed also
    when pytest-xdist ran the tests in other processes.
    """
    from tests.reliability.conftest import REPORT_PROPERTY

    lines = [value for reports in terminalreporter.stats.values() for rep in reports
             for key, value in getattr(rep, "user_properties", ()) if key == REPORT_PROPERTY]
    if lines:
        terminalreporter.section("reliability summary")
        for line in sorted(lines):
            terminalreporter.write_line(str(line))
