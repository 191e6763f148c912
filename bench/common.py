"""Shared plumbing of the benchmark suite: servers, isolated worlds, workers, figures.

The servers, the evidence writer and the worker subprocess are the test harness's
(:mod:`tests.harness`), so the benchmarks measure on exactly what the tests exercise;
``python -m bench.run`` runs from the repository root, where ``tests`` is importable.

* :func:`open_servers` — the servers to measure on: ``SR_TEST_KAFKA_BOOTSTRAP`` /
  ``SR_TEST_PG_DSN`` / ``SR_TEST_S3_ENDPOINT`` when set, the embedded stack otherwise
  (started here and stopped, by PID, on exit); never Docker.
* :class:`World` — one scenario's isolation: its own topics, Postgres database, S3 key prefix,
  tenant and consumer group, and the ``SR_*`` environment of an ``sr run`` subprocess.
* :func:`start_worker` — an ``sr run`` subprocess (:class:`~tests.harness.workers.WorkerProc`)
  killed with the bench if the bench dies; :func:`~tests.harness.workers.stop_all` stops them by PID.
* :func:`figure` / :func:`percentile` — how every scenario reports.

Kafka clients are in :mod:`bench.clients`, CPU accounting in :mod:`bench.cpu`, what a result
was measured on in :mod:`bench.provenance`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.harness.kafka import group_committed
from tests.harness.paths import EXAMPLE_POLICY, REPO
from tests.harness.servers import Servers, ensure_bucket, resolve_servers, s3_config_for
from tests.harness.sr_env import dsn_for_db, worker_environ
from tests.harness.workers import WorkerProc, stop_all

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from worker.adapters.s3 import S3Config
    from worker.core.models import RunIntent
    from worker.settings import Settings

__all__ = [
    "BENCH_BUCKET",
    "RESULTS_DIR",
    "InProcessScenario",
    "OneWorkerScenario",
    "World",
    "committed_total",
    "figure",
    "log",
    "make_intent",
    "make_world",
    "open_servers",
    "percentile",
    "s3_client",
    "s3_config",
    "start_worker",
    "sum_stop_stats",
    "temp_state_dir",
    "wait_assigned",
]

RESULTS_DIR = REPO / "bench" / "results"
BENCH_BUCKET = "sr-bench"
KiB = 1024
MiB = 1024 * KiB


def log(msg: str) -> None:
    """Progress line on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- figures
def figure(name: str, value: float | int | None, unit: str, *, limit: float | None = None,
           limit_unit: str | None = None, limit_name: str | None = None, ratio: float | None = None,
           target: str | None = None, met: bool | None = None, note: str = "") -> dict[str, Any]:
    """One reported figure. ``ratio`` defaults to value/limit when both are known."""
    if ratio is None and limit and value is not None:
        ratio = value / limit
    return {
        "name": name,
        "value": _round(value),
        "unit": unit,
        "limit": _round(limit),
        "limit_unit": limit_unit or (unit if limit is not None else None),
        "limit_name": limit_name,
        "ratio": _round(ratio, 3),
        "target": target,
        "met": met,
        "note": note,
    }


def _round(value: float | int | None, digits: int = 2) -> float | int | None:
    if value is None or isinstance(value, int):
        return value
    return round(float(value), digits)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of a non-empty sequence."""
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


# ----------------------------------------------------------------------------- servers
@contextlib.contextmanager
def open_servers(state_dir: Path) -> Iterator[Servers]:
    """Env-var servers where given, the embedded stack for the rest; stopped on exit.

    Raises:
        ServerUnavailable: a server was neither given nor could be started.
    """
    with resolve_servers(state_dir, bucket=BENCH_BUCKET, docker=False, progress=log) as servers:
        try:
            servers.require_kafka()
            servers.require_postgres()
            servers.require_s3()
            ensure_bucket(s3_client(servers), servers.s3_bucket)
            yield servers
        finally:
            if servers.embedded is not None:
                log("stopping embedded stack")


# ----------------------------------------------------------------------------- S3
def s3_config(servers: Servers, pool: int = 32) -> S3Config:
    """The worker's own :class:`~worker.adapters.s3.S3Config` for these servers."""
    return s3_config_for(servers, max_pool_connections=pool)


def s3_client(servers: Servers, pool: int = 32) -> S3Client:
    """A boto3 client configured exactly like the worker's (checksums off, no botocore retry)."""
    from worker.adapters.s3 import raw_boto3_client

    client: S3Client = raw_boto3_client(s3_config(servers, pool))
    return client


@dataclass
class World:
    """One scenario's isolated SR world on the shared servers."""

    servers: Servers
    name: str
    suffix: str
    topics: dict[str, str]  # logical -> real
    pg_dsn: str
    db_name: str | None
    policy_path: Path
    tenant: str
    s3_prefix: str
    group_id: str
    partitions: int

    @property
    def bucket(self) -> str:
        return self.servers.s3_bucket

    def evidence_prefix(self, name: str) -> str:
        """Key prefix (no bucket) of an evidence root inside the tenant's allowed prefix."""
        return f"evidence/{self.tenant}/{name}"

    def evidence_root(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.evidence_prefix(name)}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of an ``sr run`` subprocess on this world (default worker settings).

        The bench's own ``SR_*``/``AWS_*`` variables are not passed on: only this world's.
        """
        from worker.settings import Topics

        env = {k: v for k, v in os.environ.items() if not k.startswith(("SR_", "AWS_"))}
        env.update(worker_environ(self.servers, pg_dsn=self.pg_dsn, s3_prefix=self.s3_prefix,
                                  policy_path=self.policy_path, group_id=self.group_id,
                                  topics=Topics(**self.topics)))
        env.update(extra)
        return env

    def settings(self, **overrides: Any) -> Settings:
        """In-process :class:`~worker.settings.Settings` for this world (for B3/B4)."""
        from worker.settings import Settings, Topics

        return Settings(
            kafka_bootstrap=self.servers.require_kafka(),
            pg_dsn=self.pg_dsn,
            s3_endpoint=self.servers.require_s3(),
            s3_bucket=self.bucket,
            s3_prefix=self.s3_prefix,
            s3_region=self.servers.s3_region,
            aws_access_key_id=self.servers.s3_access_key,
            aws_secret_access_key=self.servers.s3_secret_key,
            policy_file=self.policy_path,
            group_id=self.group_id,
            session_timeout=6.0,
            topics=Topics(**self.topics),
            **overrides,
        )

    def drop(self) -> None:
        """Drop the world's database (topics and S3 objects die with the embedded stack)."""
        if self.db_name is None:
            return
        import psycopg

        with contextlib.suppress(psycopg.Error), \
                psycopg.connect(self.servers.require_postgres(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')


def make_world(servers: Servers, name: str, work_dir: Path, *, partitions: int = 4,
               policy: bytes | None = None) -> World:
    """Create unique topics, a fresh database (when allowed), prefix, tenant and group."""
    import psycopg

    from worker.adapters.kafka import TopicSpec
    from worker.embedded.stack import create_topics

    server_dsn = servers.require_postgres()
    suffix = uuid.uuid4().hex[:8]
    topics = {logical: f"bench.{name}.{logical}.{suffix}"
              for logical in ("intents", "triggers", "ready", "status", "dlq", "engine_requests", "engine_results")}
    create_topics(servers.require_kafka(),
                  [TopicSpec(real, 1 if logical == "dlq" else partitions) for logical, real in topics.items()])
    db_name: str | None = f"srbench_{name}_{suffix}".lower()
    try:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        dsn = dsn_for_db(server_dsn, db_name or "")
    except psycopg.Error as exc:
        log(f"cannot create a database ({type(exc).__name__}); sharing the given one")
        db_name, dsn = None, server_dsn
    from worker.adapters.postgres import migrate

    migrate(dsn)
    work_dir.mkdir(parents=True, exist_ok=True)
    # The example policy scopes gate_6B to each run (contract §4); worlds whose runs share one
    # evidence root pass shared_evidence_policy() (gate_6B unscoped) and say so in their results.
    policy_path = work_dir / f"policy-{name}-{suffix}.toml"
    policy_path.write_bytes(policy if policy is not None else EXAMPLE_POLICY.read_bytes())
    return World(servers=servers, name=name, suffix=suffix, topics=topics, pg_dsn=dsn, db_name=db_name,
                 policy_path=policy_path, tenant=f"bench{suffix[:6]}", s3_prefix=f"bench-{name}-{suffix}",
                 group_id=f"sr-bench-{name}-{suffix}", partitions=partitions)


# ----------------------------------------------------------------------------- intents
_BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def receipt_for(scenario: str, seed: int) -> dict[str, str | int]:
    """gate_6B's scope values of ``make_intent(world, scenario, seed, ...)`` (for its receipt)."""
    return {"manifest_fingerprint": "a" * 64, "parameter_hash": "b" * 64, "scenario_id": scenario, "seed": seed}


def make_intent(world: World, scenario: str, seed: int, evidence_root: str, *,
                request_id: str | None = None, deadline: datetime | None = None,
                strategy: str = "REUSE") -> RunIntent:
    """A valid intent for output ``transactions`` (gates 3A and 6B); runs differ by scenario/seed.
    Strategy REUSE (verify only) unless ``strategy`` says otherwise."""
    from worker.core.models import Pins, RunIntent, Strategy

    return RunIntent(
        request_id=request_id or f"req-{scenario}-{seed}",
        tenant_id=world.tenant,
        namespace="bench",
        scenario_id=scenario,
        pins=Pins(manifest_fingerprint="a" * 64, parameter_hash="b" * 64, seed=seed),
        window_start=_BASE_TIME,
        window_end=_BASE_TIME + timedelta(days=1),
        output_ids=("transactions",),
        strategy=Strategy(strategy),
        evidence_root=evidence_root,
        deadline=deadline,
        submitted_at=datetime.now(UTC),
        submitted_by="bench",
    )


def committed_total(servers: Servers, group_id: str, topic: str, partitions: int) -> int:
    """Sum of the group's committed offsets on ``topic`` (OffsetFetch; does not join the group)."""
    return group_committed(servers.require_kafka(), group_id, topic, partitions)


# ----------------------------------------------------------------------------- workers
def start_worker(world: World, log_path: Path, **extra_env: str) -> WorkerProc:
    """Start ``sr run`` on ``world`` with its JSON log in ``log_path``.

    Stop it with :func:`~tests.harness.workers.stop_all` (by PID).

    Started from the calling (main) thread with a parent-death signal: even a ``kill -9`` of
    the bench cannot leave a worker behind.
    """
    return WorkerProc(world, log_path, extra_env, kill_with_parent=True).start()


def wait_assigned(procs: Sequence[WorkerProc], world: World, timeout: float = 60.0) -> bool:
    """Until every worker owns ≥ 1 intents partition and together they own all, stable for 1 s."""
    want = set(range(world.partitions))
    settle = 1.0 if len(procs) > 1 else 0.0
    deadline = time.monotonic() + timeout
    stable_since: float | None = None
    while time.monotonic() < deadline:
        owned = [p.assigned(world.topics["intents"]) for p in procs]
        ok = all(owned) and set().union(*owned) == want
        if ok:
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since >= settle:
                return True
        else:
            stable_since = None
        time.sleep(0.1)
    return False


def sum_stop_stats(stats: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    """Add up the workers' stop counters."""
    s3: dict[str, int] = {}
    pg = 0
    for st in stats:
        if not st:
            continue
        for k, v in (st.get("s3_requests") or {}).items():
            s3[k] = s3.get(k, 0) + int(v)
        pg += int(st.get("pg_round_trips") or 0)
    return {"s3_requests": s3, "pg_round_trips": pg}


def temp_state_dir() -> Path:
    """A fresh directory for the embedded stack, worlds and logs (removed by the caller)."""
    return Path(tempfile.mkdtemp(prefix="sr-bench-"))


class OneWorkerScenario:
    """A scenario that drives ``sr run`` worker processes over one fresh world of its own.

    Subclasses set ``name`` and ``log_tag`` and build ``self.world`` in ``prepare()``;
    :meth:`start` starts the first worker, :meth:`close` stops every worker in ``self.procs``
    (SIGTERM, then by PID) and drops the world.
    """

    name = ""
    log_tag = ""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.world: Any = None
        self.procs: list[WorkerProc] = []

    def prepare(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.prepare()
        if not self.procs:
            self.procs.append(start_worker(self.world, self.ctx.log_dir / f"{self.name.lower()}-{self.world.suffix}-"
                                                                        f"{self.log_tag}.log"))

    def close(self) -> None:
        stop_all(self.procs)
        if self.world is not None:
            self.world.drop()


class InProcessScenario:
    """A scenario measured inside the bench process: nothing to start ahead or to stop.

    Subclasses set ``name`` and ``measure`` (a function of the bench context).
    """

    name = ""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def prepare(self) -> None:
        return

    def start(self) -> None:
        return

    def close(self) -> None:
        return

    def measure(self, ctx: Any) -> dict[str, Any]:
        raise NotImplementedError

    def run(self) -> dict[str, Any]:
        return self.measure(self.ctx)
