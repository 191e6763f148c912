"""Operator surface of the worker (contract §7): Prometheus metrics, ``/healthz``, ``/readyz``.

* :class:`Metrics` — every SR series, on its **own** :class:`~prometheus_client.CollectorRegistry`
  (never the process-global one, so several workers/tests in one process never collide). Its
  hook methods (:meth:`Metrics.observe_s3`, :meth:`Metrics.observe_pg`) plug straight into
  :class:`~worker.adapters.s3.ObjectStore` ``on_request`` and
  :class:`~worker.adapters.postgres.RoundTripCounter` ``on_query``; no hook ever raises.
* :class:`HealthServer` — a small threaded HTTP server on its own daemon thread:
  ``/healthz`` (liveness: 200 while the process serves), ``/readyz`` (readiness: every check
  passed within ``check_timeout`` seconds, else 503 naming the failing checks) and
  ``/metrics`` (Prometheus text).
* Check builders — :func:`kafka_check`, :func:`postgres_check`, :func:`s3_check`,
  :func:`flag_check` — return callables that return ``None`` when healthy and raise an
  :class:`~worker.errors.SRError` otherwise. They do no I/O until called, use short timeouts
  and no retries, and never put a secret (DSN password, S3 secret key, SASL password) into
  an error message.
* :func:`consumer_lag` / :func:`refresh_consumer_lag` and :func:`refresh_runs_by_status` —
  the periodic refreshers of the two gauges that are not event-driven.

Units: durations in **seconds**, sizes in **bytes**, lag in **messages** (offsets).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Final, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from pydantic import SecretStr

from worker.adapters.kafka import KafkaConfig
from worker.adapters.postgres import PgConfig, connect, execute, query
from worker.adapters.s3 import ObjectStore, S3Config
from worker.core.models import RunStatus
from worker.errors import (
    HealthServerError,
    KafkaFatalError,
    KafkaUnavailableError,
    NotReadyError,
    S3AccessError,
    SRError,
)

if TYPE_CHECKING:
    from confluent_kafka import TopicPartition

__all__ = [
    "DLQ_OTHER",
    "INDEX_STATUSES",
    "METRIC_NAMES",
    "RUN_TRANSITION_STATUSES",
    "S3_VERBS",
    "Check",
    "HealthServer",
    "LagSource",
    "Metrics",
    "consumer_lag",
    "flag_check",
    "kafka_check",
    "postgres_check",
    "refresh_consumer_lag",
    "refresh_runs_by_status",
    "s3_check",
    "standard_checks",
]

log = logging.getLogger("sr.observability")

#: Statuses counted by ``sr_runs_total`` (a run *transition* into one of them).
RUN_TRANSITION_STATUSES: Final[tuple[str, ...]] = ("READY", "WAITING", "FAILED", "QUARANTINED", "REJECTED")
#: Statuses reported by ``sr_runs_by_status`` (every status a run can have in the index).
INDEX_STATUSES: Final[tuple[str, ...]] = tuple(s.value for s in RunStatus)
#: Verb label values of ``sr_s3_request_seconds`` (anything else is reported as ``OTHER``).
S3_VERBS: Final[tuple[str, ...]] = ("PUT", "GET", "HEAD", "LIST", "DELETE")
#: Label value used for an error class / outcome that is not a safe, short identifier.
DLQ_OTHER: Final = "OTHER"
#: The exposed metric family names (as written in the Prometheus text, counters with ``_total``).
METRIC_NAMES: Final[tuple[str, ...]] = (
    "sr_consumer_lag",
    "sr_runs_total",
    "sr_runs_by_status",
    "sr_ready_published_total",
    "sr_dlq_total",
    "sr_evidence_bytes_verified_total",
    "sr_s3_request_seconds",
    "sr_pg_query_seconds",
    "sr_messages_total",
)

# Histogram buckets, seconds. S3: a small object on a LAN is ~2-20 ms, a large member or a
# struggling server seconds. Postgres: one round trip is ~0.2-5 ms, a lock wait longer.
_S3_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_PG_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0)
_LABEL_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_MAX_ERROR_CHARS: Final = 200
_CHECK_NAME_RE: Final = re.compile(r"[a-z0-9_]{1,32}")

#: A readiness check: returns ``None`` when healthy, raises (preferably an ``SRError``) otherwise.
Check = Callable[[], None]


def _label(value: object) -> str:
    """A bounded-cardinality label value: short identifiers pass, anything else is ``OTHER``."""
    text = str(value)
    return text if _LABEL_RE.fullmatch(text) else DLQ_OTHER


# --------------------------------------------------------------------------- metrics
class _WithoutCreated:
    """A collector view of a registry without the ``*_created`` timestamp samples.

    prometheus_client adds a ``<name>_created`` gauge to every counter and histogram in the
    text format; it is noise for SR's dashboards and not part of SR's metric contract, and
    the only switch for it is process-global. Dropping it here keeps the choice local.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            if family.type in {"counter", "histogram", "summary"}:
                clone = Metric(family.name, family.documentation, family.type, family.unit)
                clone.samples = [s for s in family.samples if not s.name.endswith("_created")]
                yield clone
            else:
                yield family


class Metrics:
    """Every Prometheus series of an SR worker, on a private registry.

    All methods are thread-safe and cheap (no I/O) and none raises on odd input: label
    values outside their known sets are reported as ``OTHER`` (bounded cardinality), negative
    durations/sizes count as 0. That makes the hooks safe to call from ``finally`` blocks of
    the adapters.

    Series (label sets in braces):

    * ``sr_consumer_lag{topic,partition}`` gauge — messages between the committed offset and
      the high watermark (see :func:`consumer_lag` for the Tansu caveat);
    * ``sr_runs_total{status}`` counter — run transitions into READY/WAITING/FAILED/QUARANTINED/REJECTED;
    * ``sr_runs_by_status{status}`` gauge — runs per status in the index (:func:`refresh_runs_by_status`);
    * ``sr_ready_published_total`` counter — READY events acknowledged by the broker;
    * ``sr_dlq_total{error_class}`` counter — dead-lettered messages by ``sr-error-class``;
    * ``sr_evidence_bytes_verified_total`` counter — evidence bytes hashed (``rate()`` = verify bytes/s);
    * ``sr_s3_request_seconds{verb,outcome}`` histogram — every S3 request attempt, outcome
      ``ok`` or ``error`` (any non-2xx answer, including 404/412, or no answer);
    * ``sr_pg_query_seconds`` histogram — every Postgres statement (one round trip);
    * ``sr_messages_total{topic,outcome}`` counter — consumed messages by how they ended.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._lag = Gauge("sr_consumer_lag", "Messages between the group's committed offset and the high "
                          "watermark, per assigned partition", ["topic", "partition"], registry=reg)
        self._runs = Counter("sr_runs", "Run status transitions", ["status"], registry=reg)
        self._by_status = Gauge("sr_runs_by_status", "Runs in the index per status", ["status"], registry=reg)
        self._ready = Counter("sr_ready_published", "READY events acknowledged by the broker", registry=reg)
        self._dlq = Counter("sr_dlq", "Messages dead-lettered, by error class", ["error_class"], registry=reg)
        self._evidence = Counter("sr_evidence_bytes_verified", "Evidence bytes hashed by the verifier",
                                 registry=reg)
        self._s3 = Histogram("sr_s3_request_seconds", "S3 request attempt latency in seconds",
                             ["verb", "outcome"], buckets=_S3_BUCKETS, registry=reg)
        self._pg = Histogram("sr_pg_query_seconds", "Postgres statement (round trip) latency in seconds",
                             buckets=_PG_BUCKETS, registry=reg)
        self._messages = Counter("sr_messages", "Consumed messages by topic and outcome", ["topic", "outcome"],
                                 registry=reg)
        self._lag_lock = threading.Lock()
        self._lag_keys: set[tuple[str, str]] = set()
        self._view = _WithoutCreated(reg)
        # Pre-create the bounded label sets so every series exists (at 0) from the start and
        # rate()/increase() work from the first scrape.
        for status in RUN_TRANSITION_STATUSES:
            self._runs.labels(status=status)
        for status in INDEX_STATUSES:
            self._by_status.labels(status=status).set(0)
        for verb in S3_VERBS:
            for outcome in ("ok", "error"):
                self._s3.labels(verb=verb, outcome=outcome)

    # ------------------------------------------------------------------ event hooks
    def run_transition(self, status: RunStatus | str) -> None:
        """Count one run transition into ``status`` (READY, WAITING, FAILED, QUARANTINED, REJECTED)."""
        value = str(getattr(status, "value", status))
        self._runs.labels(status=value if value in RUN_TRANSITION_STATUSES else DLQ_OTHER).inc()

    def ready_published(self, n: int = 1) -> None:
        """Count ``n`` READY events acknowledged by the broker."""
        if n > 0:
            self._ready.inc(n)

    def dead_lettered(self, error_class: str) -> None:
        """Count one dead-lettered message; ``error_class`` is its ``sr-error-class`` code."""
        self._dlq.labels(error_class=_label(error_class)).inc()

    def evidence_bytes(self, n: int) -> None:
        """Count ``n`` evidence bytes verified (hashed)."""
        if n > 0:
            self._evidence.inc(n)

    def observe_s3(self, verb: str, seconds: float, ok: bool) -> None:
        """Record one S3 request attempt: ``ObjectStore(on_request=metrics.observe_s3)``.

        Args:
            verb: PUT, GET, HEAD, LIST or DELETE (others are reported as ``OTHER``).
            seconds: wall time of the attempt.
            ok: the server answered 2xx.
        """
        label = verb if verb in S3_VERBS else DLQ_OTHER
        self._s3.labels(verb=label, outcome="ok" if ok else "error").observe(max(0.0, seconds))

    def observe_pg(self, seconds: float) -> None:
        """Record one Postgres statement: ``RoundTripCounter(on_query=metrics.observe_pg)``."""
        self._pg.observe(max(0.0, seconds))

    def message(self, topic: str, outcome: str) -> None:
        """Count one consumed message of ``topic`` that ended with ``outcome``.

        Suggested outcomes: ``processed``, ``duplicate``, ``dead_lettered``, ``abandoned``
        (the worker stopped first; it will be re-driven).
        """
        self._messages.labels(topic=_label(topic), outcome=_label(outcome)).inc()

    # ------------------------------------------------------------------ gauges
    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Set the lag (messages) of one partition."""
        key = (_label(topic), str(int(partition)))
        with self._lag_lock:
            self._lag_keys.add(key)
            self._lag.labels(topic=key[0], partition=key[1]).set(max(0, int(lag)))

    def set_lags(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Replace every lag series: set those in ``lags``, drop partitions no longer assigned."""
        keep = {(_label(t), str(int(p))): max(0, int(v)) for (t, p), v in lags.items()}
        with self._lag_lock:
            for key in self._lag_keys - keep.keys():
                self._lag.remove(*key)
            for (topic, partition), value in keep.items():
                self._lag.labels(topic=topic, partition=partition).set(value)
            self._lag_keys = set(keep)

    def set_runs_by_status(self, counts: Mapping[str, int]) -> None:
        """Set ``sr_runs_by_status`` from a status -> count mapping; known statuses absent from it are 0."""
        for status in INDEX_STATUSES:
            self._by_status.labels(status=status).set(int(counts.get(status, 0)))
        for status, n in counts.items():
            if status not in INDEX_STATUSES:
                self._by_status.labels(status=_label(status)).set(int(n))

    # ------------------------------------------------------------------ exposition
    def render(self) -> bytes:
        """The current values in the Prometheus text exposition format (UTF-8 bytes)."""
        return generate_latest(self._view)

    #: Content-Type of :meth:`render`'s output.
    content_type: Final[str] = CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- error text
def _scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every (non-trivial) secret replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def _short_error(exc: BaseException) -> str:
    """A one-line, bounded description for /readyz.

    Only SR's own errors contribute their message (the adapters guarantee it holds no
    secret); anything else is reported by class name alone.
    """
    text = f"{exc.code}: {exc}" if isinstance(exc, SRError) else type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


# --------------------------------------------------------------------------- checks
class _KafkaCheck:
    """Metadata request through one lazily created, reused AdminClient."""

    def __init__(self, config: KafkaConfig, timeout: float, topics: tuple[str, ...]) -> None:
        self._config = config
        self._timeout = timeout
        self._topics = topics
        self._admin: Any = None
        self._lock = threading.Lock()
        self._secrets = [v for k, v in config.client_extra.items()
                         if any(w in k.lower() for w in ("password", "secret", "token", "key", "jaas"))]

    def _client(self) -> Any:
        with self._lock:
            if self._admin is None:
                from confluent_kafka.admin import AdminClient

                conf = self._config.base()
                conf.update({"socket.timeout.ms": max(10, round(self._timeout * 1000)),
                             "log.connection.close": False})
                self._admin = AdminClient(conf)
            return self._admin

    def __call__(self) -> None:
        from confluent_kafka import KafkaException

        try:
            metadata = self._client().list_topics(timeout=self._timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            detail = err.str() if hasattr(err, "str") else str(err)
            raise KafkaUnavailableError(_scrub(f"metadata request failed: {detail}", self._secrets)) from None
        if not metadata.brokers:
            raise KafkaUnavailableError("metadata lists no broker")
        missing = sorted(t for t in self._topics if t not in metadata.topics or metadata.topics[t].error)
        if missing:
            raise KafkaFatalError(f"missing topics: {', '.join(missing)}")

    def close(self) -> None:
        """Drop the AdminClient (librdkafka closes it when collected)."""
        with self._lock:
            self._admin = None


def kafka_check(kafka_config: KafkaConfig, *, timeout: float = 1.5, topics: Iterable[str] = ()) -> Check:
    """A readiness check of the Kafka cluster: one metadata request (``list_topics``).

    No I/O until the check is called; the AdminClient is created on the first call and
    reused (a reconnecting client, not a connection per probe).

    Args:
        kafka_config: SR's Kafka client settings (SASL/TLS pass-through included).
        timeout: seconds to wait for the metadata answer.
        topics: topics that must exist (optional).

    The returned check raises:
        KafkaUnavailableError: no broker answered within ``timeout``.
        KafkaFatalError: a required topic does not exist.
    """
    return _KafkaCheck(kafka_config, timeout, tuple(topics))


class _PostgresCheck:
    """Fresh connection + ``SELECT 1`` per call (never touches the worker's pools)."""

    def __init__(self, dsn: SecretStr, timeout: float) -> None:
        self._config = PgConfig(dsn=dsn, connect_timeout=timeout, statement_timeout=timeout, max_attempts=1)
        self._secrets: list[str] = []
        try:
            import psycopg.conninfo

            params = psycopg.conninfo.conninfo_to_dict(dsn.get_secret_value())
            self._secrets = [str(params[k]) for k in ("password", "sslpassword") if params.get(k)]
        except Exception:  # noqa: BLE001 - an invalid DSN fails (safely) when the check runs
            self._secrets = []

    def __call__(self) -> None:
        try:
            conn = connect(self._config, autocommit=True)
            try:
                execute(conn, query("ping"))
            finally:
                conn.close()
        except SRError as exc:
            raise type(exc)(_scrub(str(exc), self._secrets)) from None


def postgres_check(dsn_secret: SecretStr | str, *, timeout: float = 2.0) -> Check:
    """A readiness check of PostgreSQL: connect (TCP + auth) and ``SELECT 1`` on a fresh connection.

    Args:
        dsn_secret: the libpq DSN (kept secret: never in an error message).
        timeout: seconds for connecting (libpq/psycopg enforce at least 2 s) and for the statement.

    The returned check raises:
        PostgresUnavailableError: the server cannot be reached, refused, or timed out.
        PostgresError: the DSN is invalid or the statement failed.
    """
    dsn = dsn_secret if isinstance(dsn_secret, SecretStr) else SecretStr(dsn_secret)
    return _PostgresCheck(dsn, timeout)


class _S3Check:
    """``HEAD bucket`` through a private probe store: short timeouts, no retries."""

    def __init__(self, config: S3Config, bucket: str, timeout: float) -> None:
        self._config = config.model_copy(update={
            "connect_timeout": timeout, "read_timeout": timeout, "max_attempts": 1, "max_pool_connections": 2,
        })
        self._bucket = bucket
        self._store: ObjectStore | None = None
        self._lock = threading.Lock()
        self._secrets = [s.get_secret_value() for s in (config.secret_access_key,) if s is not None]

    def _probe(self) -> ObjectStore:
        with self._lock:
            if self._store is None:
                store = ObjectStore(self._config)
                store.open()
                self._store = store
            return self._store

    def __call__(self) -> None:
        try:
            exists = self._probe().bucket_exists(self._bucket)
        except SRError as exc:
            raise type(exc)(_scrub(str(exc), self._secrets)) from None
        if not exists:
            raise S3AccessError(f"bucket {self._bucket!r} does not exist")

    def close(self) -> None:
        """Release the probe client's connections."""
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()


def s3_check(store: ObjectStore | S3Config, bucket: str, *, timeout: float = 1.5) -> Check:
    """A readiness check of the object store: ``HEAD`` the bucket.

    The probe uses its own client built from ``store``'s configuration with ``timeout``
    seconds for connect and read and a single attempt, so a probe never waits through the
    worker's retry budget and never adds to the worker's S3 request counter (the cost tests
    count those).

    Args:
        store: the worker's store (only its configuration is used) or an ``S3Config``.
        bucket: the bucket SR keeps its truth in.
        timeout: seconds, per connect and per read.

    The returned check raises:
        S3UnavailableError: the server could not be reached, or timed out, or answered 5xx.
        S3AccessError: the bucket does not exist or access is denied.
    """
    config = store.config if isinstance(store, ObjectStore) else store
    return _S3Check(config, bucket, timeout)


def flag_check(flag: threading.Event, what: str) -> Check:
    """A readiness check that passes once ``flag`` is set (e.g. ``Worker.ready``).

    The returned check raises:
        NotReadyError: ``flag`` is not set yet (``what`` says which component).
    """

    def check() -> None:
        if not flag.is_set():
            raise NotReadyError(f"{what} not ready")

    return check


def standard_checks(kafka_config: KafkaConfig, pg_dsn: SecretStr | str, store: ObjectStore | S3Config,
                    bucket: str) -> dict[str, Check]:
    """The ``kafka``, ``postgres`` and ``s3`` checks with their default timeouts."""
    return {
        "kafka": kafka_check(kafka_config),
        "postgres": postgres_check(pg_dsn),
        "s3": s3_check(store, bucket),
    }


# --------------------------------------------------------------------------- consumer lag
class LagSource(Protocol):
    """What :func:`consumer_lag` needs: an :class:`~worker.adapters.kafka.IntakeConsumer`
    or a raw ``confluent_kafka.Consumer``."""

    def assignment(self) -> list[TopicPartition]: ...

    def committed(self, partitions: list[TopicPartition], timeout: float = ...) -> list[TopicPartition]: ...

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float = ...,
                              cached: bool = ...) -> tuple[int, int] | None: ...


def consumer_lag(consumer: LagSource, topics: Iterable[str] | None = None, *, timeout: float = 5.0,
                 cached: bool = False, use_committed: bool = True) -> dict[tuple[str, int], int]:
    """Lag in messages per assigned partition: high watermark − committed offset (or position).

    Call it from the thread that owns the consumer (the worker loop), every few seconds.

    A partition with nothing committed counts from its low watermark (the group starts at
    ``earliest``). A negative difference is reported as 0.

    The value is only as good as the broker's high watermark. Tansu (the local stand-in,
    contract §1) reports a wrong watermark after multi-record batches (hwm = 1 after 10
    records), so locally the lag can read 0 while messages are waiting; on Apache Kafka it
    is exact. Never use this to decide where a partition ends.

    Args:
        consumer: the group member whose assignment is measured.
        topics: only these topics (default: every assigned partition).
        timeout: seconds per broker query (committed offsets; watermarks unless ``cached``).
        cached: use the watermarks from the last fetch response instead of asking the broker
            (no I/O; partitions not fetched yet are left out).
        use_committed: measure from the committed offsets (what a new owner would redo);
            False measures from this member's fetch position (no I/O).

    Returns:
        ``{(topic, partition): lag}``.

    Raises:
        KafkaUnavailableError: the broker did not answer in time.
        KafkaFatalError: the broker refused a request.
    """
    from confluent_kafka import KafkaException, TopicPartition

    wanted = None if topics is None else set(topics)
    try:
        parts = [TopicPartition(tp.topic, tp.partition) for tp in consumer.assignment()
                 if wanted is None or tp.topic in wanted]
        if not parts:
            return {}
        base = consumer.committed(parts, timeout=timeout) if use_committed else consumer.position(parts)
        offsets = {(tp.topic, tp.partition): int(tp.offset) for tp in base}
        lags: dict[tuple[str, int], int] = {}
        for tp in parts:
            marks = consumer.get_watermark_offsets(tp, timeout=timeout, cached=cached)
            if marks is None:
                continue
            low, high = int(marks[0]), int(marks[1])
            if high < 0:
                continue  # unknown (cached and never fetched)
            offset = offsets.get((tp.topic, tp.partition), -1)
            if offset < 0:
                offset = max(low, 0)
            lags[(tp.topic, tp.partition)] = max(0, high - offset)
        return lags
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        detail = err.str() if err is not None and hasattr(err, "str") else str(exc)
        if err is not None and hasattr(err, "retriable") and not err.retriable():
            raise KafkaFatalError(f"consumer lag query failed: {detail}") from exc
        raise KafkaUnavailableError(f"consumer lag query failed: {detail}") from exc


def refresh_consumer_lag(consumer: LagSource, topics: Iterable[str] | None, metrics: Metrics, *,
                         timeout: float = 5.0, cached: bool = False) -> dict[tuple[str, int], int]:
    """Measure :func:`consumer_lag` and replace the ``sr_consumer_lag`` series with it.

    Raises:
        KafkaUnavailableError / KafkaFatalError: as :func:`consumer_lag` (the gauge is unchanged).
    """
    lags = consumer_lag(consumer, topics, timeout=timeout, cached=cached)
    metrics.set_lags(lags)
    return lags


class _CountsByStatus(Protocol):
    def count_by_status(self) -> dict[str, int]: ...


def refresh_runs_by_status(index: _CountsByStatus, metrics: Metrics) -> dict[str, int]:
    """Refresh ``sr_runs_by_status`` from the index with one GROUP BY query.

    Returns:
        The counts read (status -> runs).

    Raises:
        PostgresUnavailableError / PostgresError: the query failed (the gauge is unchanged).
    """
    counts = index.count_by_status()
    metrics.set_runs_by_status(counts)
    return counts


# --------------------------------------------------------------------------- the HTTP server
class _CheckRunner:
    """Runs one check on a daemon thread, at most one execution in flight.

    A hung check (e.g. a black-holed TCP connection) therefore costs one thread, not one
    per probe: later evaluations wait on the same execution.
    """

    def __init__(self, name: str, check: Check) -> None:
        self.name = name
        self.check = check
        self._lock = threading.Lock()
        self._future: Future[None] | None = None

    def submit(self) -> Future[None]:
        with self._lock:
            if self._future is None or self._future.done():
                future: Future[None] = Future()
                future.set_running_or_notify_cancel()
                threading.Thread(target=self._run, args=(future,), name=f"sr-check-{self.name}",
                                 daemon=True).start()
                self._future = future
            return self._future

    def _run(self, future: Future[None]) -> None:
        try:
            self.check()
        except BaseException as exc:  # noqa: BLE001 - reported as the check's failure
            future.set_exception(exc)
        else:
            future.set_result(None)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: HealthServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "sr-worker"
    sys_version = ""
    timeout = 10  # seconds a client may take to send its request

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        owner = self.server.owner
        try:
            if path == "/healthz":
                status, ctype, body = HTTPStatus.OK, "text/plain; charset=utf-8", b"ok\n"
            elif path == "/readyz":
                ready, results = owner.readiness()
                status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
                ctype, body = "application/json", json.dumps(results, sort_keys=True).encode()
            elif path == "/metrics":
                status, ctype, body = HTTPStatus.OK, owner.metrics.content_type, owner.metrics.render()
            else:
                status, ctype, body = HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n"
        except Exception:
            log.exception("health endpoint %s failed", path)
            status, ctype, body = HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", b"internal error\n"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http " + format, *args)


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on a daemon thread.

    No network I/O in ``__init__``: the socket is bound by :meth:`start`. Use as a context
    manager or call :meth:`start` / :meth:`stop`.

    ``/readyz`` runs every check concurrently (one daemon thread per check, at most one
    execution of a check in flight) and waits at most ``check_timeout`` seconds; a check
    still running then counts as failed ("timed out"). The result is cached for
    ``cache_seconds`` and computed by one request at a time, so aggressive probing never
    multiplies the load on the servers. The body is a JSON object ``{check: "ok" | error}``
    — errors are short and never hold a secret.

    Args:
        host: interface to bind (``127.0.0.1`` by default in settings; ``0.0.0.0`` in a pod).
        port: TCP port; 0 picks a free one (see :attr:`port` after :meth:`start`).
        metrics: what ``/metrics`` renders.
        checks: name -> check; names are lower-case identifiers (``kafka``, ``postgres``, ``s3``).
        check_timeout: seconds ``/readyz`` waits for the checks.
        cache_seconds: seconds a readiness result is reused.

    Raises:
        ValueError: a bad check name or a non-positive timeout.
    """

    def __init__(self, host: str, port: int, *, metrics: Metrics, checks: Mapping[str, Check],
                 check_timeout: float = 2.0, cache_seconds: float = 1.0) -> None:
        if check_timeout <= 0 or cache_seconds < 0:
            raise ValueError("check_timeout must be > 0 and cache_seconds >= 0")
        for name in checks:
            if not _CHECK_NAME_RE.fullmatch(name):
                raise ValueError(f"check name {name!r} must match {_CHECK_NAME_RE.pattern}")
        self.host = host
        self._port = port
        self.metrics = metrics
        self.check_timeout = check_timeout
        self.cache_seconds = cache_seconds
        self._runners = [_CheckRunner(name, check) for name, check in checks.items()]
        self._checks = dict(checks)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._life = threading.Lock()
        self._eval_lock = threading.Lock()
        self._cached: tuple[float, bool, dict[str, str]] | None = None
        self._last_failing: frozenset[str] | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Bind and start serving on a daemon thread (idempotent).

        Raises:
            HealthServerError: the address cannot be bound (port in use, bad host).
        """
        with self._life:
            if self._server is not None:
                return
            try:
                server = _Server((self.host, self._port), _Handler)
            except OSError as exc:
                raise HealthServerError(f"cannot serve health endpoints on {self.host}:{self._port}: "
                                        f"{exc.strerror or exc}") from exc
            server.owner = self
            self._server = server
            self._port = int(server.server_address[1])
            self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                            name="sr-health-http", daemon=True)
            self._thread.start()
            log.info("health endpoints listening", extra={"host": self.host, "port": self._port})

    def stop(self) -> None:
        """Stop serving, close the socket and release the checks' clients (idempotent)."""
        with self._life:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)
        for check in self._checks.values():
            close = getattr(check, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    log.debug("closing a readiness check failed", exc_info=True)

    @property
    def port(self) -> int:
        """The bound port (the requested one before :meth:`start`)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the server."""
        host = "127.0.0.1" if self.host in {"", "0.0.0.0"} else self.host  # noqa: S104 - only formatting
        return f"http://{host}:{self._port}"

    # ------------------------------------------------------------------ readiness
    def readiness(self) -> tuple[bool, dict[str, str]]:
        """Evaluate the checks (or reuse a result younger than ``cache_seconds``).

        Returns:
            ``(all passed, {check name: "ok" or a short error})``.
        """
        with self._eval_lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.cache_seconds:
                return self._cached[1], dict(self._cached[2])
            ready, results = self._evaluate()
            self._cached = (time.monotonic(), ready, results)
            self._log_transition(results)
            return ready, dict(results)

    def _evaluate(self) -> tuple[bool, dict[str, str]]:
        futures = {runner.name: runner.submit() for runner in self._runners}
        wait_futures(list(futures.values()), timeout=self.check_timeout)
        results: dict[str, str] = {}
        for name, future in futures.items():
            if not future.done():
                results[name] = f"timed out after {self.check_timeout:g} s"
                continue
            exc = future.exception()
            results[name] = "ok" if exc is None else _short_error(exc)
        return all(v == "ok" for v in results.values()), results

    def _log_transition(self, results: Mapping[str, str]) -> None:
        failing = frozenset(name for name, value in results.items() if value != "ok")
        if failing == self._last_failing:
            return
        if failing:
            log.warning("not ready", extra={"failing": {n: results[n] for n in sorted(failing)}})
        elif self._last_failing is not None:
            log.info("ready again")
        self._last_failing = failing

