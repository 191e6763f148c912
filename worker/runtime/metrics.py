"""Prometheus metrics of an SR worker (contract §7).

:class:`Metrics` holds every SR series on its **own**
:class:`~prometheus_client.CollectorRegistry` (never the process-global one, so several
workers/tests in one process never collide), together with prometheus_client's process,
platform and GC collectors (``process_*``, ``python_*``) registered on that same registry. Its
hook methods (:meth:`Metrics.observe_s3`, :meth:`Metrics.observe_pg`) plug straight into
:class:`~worker.adapters.s3.ObjectStore` ``on_request`` and
:class:`~worker.adapters.postgres.RoundTripCounter` ``on_query``; no hook ever raises. The
gauges that are not event-driven are refreshed by :mod:`worker.runtime.gauges`; ``/metrics``
is served by :mod:`worker.runtime.health`.

Names follow the Prometheus conventions: base units as a suffix (``_seconds``, ``_bytes``),
``_total`` on every counter, ``<thing>_duration_seconds`` for latency histograms,
``_info`` for the build pseudo-metric.

Units: durations in **seconds**, sizes in **bytes**, lag in **messages** (offsets).
"""

from __future__ import annotations

import functools
import platform
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

from worker.core.models import RunStatus
from worker.version import installed_version

__all__ = [
    "DLQ_OTHER",
    "ENGINE_ATTEMPT_EVENTS",
    "INDEX_STATUSES",
    "LEASE_LOST_REASONS",
    "METRIC_NAMES",
    "RENAMED_METRICS",
    "RUNTIME_FAMILY_PREFIXES",
    "RUN_TRANSITION_STATUSES",
    "S3_VERBS",
    "Metrics",
    "sr_version",
]

#: Statuses counted by ``sr_runs_total`` (a run *transition* into one of them).
RUN_TRANSITION_STATUSES: Final[tuple[str, ...]] = ("READY", "WAITING", "FAILED", "QUARANTINED", "REJECTED")
#: Statuses reported by ``sr_runs_by_status`` (every status a run can have in the index).
INDEX_STATUSES: Final[tuple[str, ...]] = tuple(s.value for s in RunStatus)
#: Verb label values of ``sr_s3_request_duration_seconds`` (anything else is reported as ``OTHER``).
S3_VERBS: Final[tuple[str, ...]] = ("PUT", "GET", "HEAD", "LIST", "DELETE")
#: Label value used for an error class / outcome that is not a safe, short identifier.
DLQ_OTHER: Final = "OTHER"
#: The exposed SR metric family names (as written in the Prometheus text, counters with
#: ``_total``). The ``process_*`` / ``python_*`` families of prometheus_client's collectors
#: come on top (see :data:`RUNTIME_FAMILY_PREFIXES`).
METRIC_NAMES: Final[tuple[str, ...]] = (
    "sr_build_info",
    "sr_consumer_lag",
    "sr_runs_total",
    "sr_runs_by_status",
    "sr_ready_published_total",
    "sr_ready_latency_seconds",
    "sr_dlq_total",
    "sr_evidence_verified_bytes_total",
    "sr_s3_request_duration_seconds",
    "sr_pg_query_duration_seconds",
    "sr_messages_total",
    "sr_engine_attempts_total",
    "sr_engine_attempt_duration_seconds",
    "sr_lease_lost_total",
    "sr_outbox_backlog",
    "sr_outbox_oldest_age_seconds",
)
#: Name prefixes of the families prometheus_client's process, platform and GC collectors add.
RUNTIME_FAMILY_PREFIXES: Final[tuple[str, ...]] = ("process_", "python_")
#: Old name -> new name of the families renamed to follow the Prometheus naming conventions
#: (a breaking change for dashboards and alerts written against the old names; contract §7).
RENAMED_METRICS: Final[Mapping[str, str]] = {
    "sr_evidence_bytes_verified_total": "sr_evidence_verified_bytes_total",
    "sr_s3_request_seconds": "sr_s3_request_duration_seconds",
    "sr_pg_query_seconds": "sr_pg_query_duration_seconds",
    "sr_engine_attempt_seconds": "sr_engine_attempt_duration_seconds",
}
#: Event label values of ``sr_engine_attempts_total``.
ENGINE_ATTEMPT_EVENTS: Final[tuple[str, ...]] = ("started", "succeeded", "failed", "timed_out")
#: Reason label values of ``sr_lease_lost_total``: the lease's session ended (``lost``) or a
#: newer holder's epoch rejected the write (``fenced``).
LEASE_LOST_REASONS: Final[tuple[str, ...]] = ("lost", "fenced")

# Histogram buckets, seconds. S3: a small object on a LAN is ~2-20 ms, a large member or a
# struggling server seconds. Postgres: one round trip is ~0.2-5 ms, a lock wait longer.
_S3_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_PG_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0)
# Engine attempts: minutes to hours (the default attempt timeout is 900 s).
_ENGINE_BUCKETS: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0)
# READY latency (intent produced -> READY acknowledged): a run whose evidence is already there
# takes tens of milliseconds to a few seconds (S3 reads dominate); a backlog adds minutes.
_READY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                         600.0, 1800.0, 3600.0)
_LABEL_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


#: SR's version for ``sr_build_info`` (:func:`worker.version.installed_version`), read once per process.
sr_version = functools.cache(installed_version)


def _label(value: object) -> str:
    """A bounded-cardinality label value: short identifiers pass, anything else is ``OTHER``."""
    text = str(value)
    return text if _LABEL_RE.fullmatch(text) else DLQ_OTHER


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

    * ``sr_build_info{version,python}`` gauge — always 1; the labels say what runs;
    * ``sr_consumer_lag{topic,partition}`` gauge — messages between the committed offset and
      the high watermark (see
      :func:`worker.adapters.kafka.health.consumer_lag` for the Tansu caveat);
    * ``sr_runs_total{status}`` counter — run transitions into READY/WAITING/FAILED/QUARANTINED/REJECTED;
    * ``sr_runs_by_status{status}`` gauge — runs per status in the index
      (:func:`worker.runtime.gauges.refresh_runs_by_status`);
    * ``sr_ready_published_total`` counter — READY/SUPERSEDE events acknowledged by the broker;
    * ``sr_ready_latency_seconds`` histogram — intent record timestamp to the broker's ack of
      its READY, for READYs published while their intent record is handled (see
      :meth:`ready_latency`);
    * ``sr_dlq_total{error_class}`` counter — dead-lettered messages by ``sr-error-class``;
    * ``sr_evidence_verified_bytes_total`` counter — evidence bytes hashed (``rate()`` = verify bytes/s);
    * ``sr_s3_request_duration_seconds{verb,outcome}`` histogram — every S3 request attempt,
      outcome ``ok`` or ``error`` (any non-2xx answer, including 404/412, or no answer);
    * ``sr_pg_query_duration_seconds`` histogram — every Postgres statement (one round trip);
    * ``sr_messages_total{topic,outcome}`` counter — consumed messages by how they ended;
    * ``sr_engine_attempts_total{event}`` counter — engine attempts ``started``, ``succeeded``,
      ``failed`` (a FAILED result) and ``timed_out`` (no result by the attempt deadline);
    * ``sr_engine_attempt_duration_seconds`` histogram — request to recorded result, per attempt;
    * ``sr_lease_lost_total{reason}`` counter — run steps that lost their lease (``lost``: the
      session ended) or were fenced by a newer holder (``fenced``);
    * ``sr_outbox_backlog`` gauge — publication rows not yet acknowledged by the broker;
    * ``sr_outbox_oldest_age_seconds`` gauge — age of the oldest of them, 0 when there is none
      (both refreshed by :func:`worker.runtime.gauges.refresh_outbox`).

    Plus ``process_*`` (CPU, memory, file descriptors; Linux only) and ``python_*`` (version,
    garbage collector) from prometheus_client's collectors.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        # The standard runtime series, on this registry (the global one is never used).
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        self._build = Gauge("sr_build_info", "SR build: always 1, the labels name the version and the Python",
                            ["version", "python"], registry=reg)
        self._build.labels(version=sr_version(), python=platform.python_version()).set(1)
        self._lag = Gauge("sr_consumer_lag", "Messages between the group's committed offset and the high "
                          "watermark, per assigned partition", ["topic", "partition"], registry=reg)
        self._runs = Counter("sr_runs", "Run status transitions", ["status"], registry=reg)
        self._by_status = Gauge("sr_runs_by_status", "Runs in the index per status", ["status"], registry=reg)
        self._ready = Counter("sr_ready_published", "READY events acknowledged by the broker", registry=reg)
        self._dlq = Counter("sr_dlq", "Messages dead-lettered, by error class", ["error_class"], registry=reg)
        self._ready_latency = Histogram("sr_ready_latency_seconds", "Intent record timestamp to the broker's "
                                        "acknowledgement of its READY, in seconds", buckets=_READY_BUCKETS,
                                        registry=reg)
        self._evidence = Counter("sr_evidence_verified_bytes", "Evidence bytes hashed by the verifier",
                                 unit="bytes", registry=reg)
        self._s3 = Histogram("sr_s3_request_duration_seconds", "S3 request attempt latency in seconds",
                             ["verb", "outcome"], buckets=_S3_BUCKETS, registry=reg)
        self._pg = Histogram("sr_pg_query_duration_seconds", "Postgres statement (round trip) latency in seconds",
                             buckets=_PG_BUCKETS, registry=reg)
        self._messages = Counter("sr_messages", "Consumed messages by topic and outcome", ["topic", "outcome"],
                                 registry=reg)
        self._engine = Counter("sr_engine_attempts", "Engine attempts by event", ["event"], registry=reg)
        self._engine_seconds = Histogram("sr_engine_attempt_duration_seconds", "Engine attempt duration (request "
                                         "to recorded result) in seconds", buckets=_ENGINE_BUCKETS, registry=reg)
        self._lease_lost = Counter("sr_lease_lost", "Run steps whose lease was lost (session gone) or fenced "
                                   "(a newer epoch)", ["reason"], registry=reg)
        self._outbox_backlog = Gauge("sr_outbox_backlog", "Publication rows not yet acknowledged by the broker",
                                     registry=reg)
        self._outbox_age = Gauge("sr_outbox_oldest_age_seconds", "Age of the oldest unpublished publication row "
                                 "in seconds (0 when there is none)", registry=reg)
        self._lag_lock = threading.Lock()
        self._lag_keys: set[tuple[str, str]] = set()
        self._view = _WithoutCreated(reg)
        # Pre-create the bounded label sets so every series exists (at 0) from the start and
        # rate()/increase() work from the first scrape.
        for status in RUN_TRANSITION_STATUSES:
            self._runs.labels(status=status)
        for status in INDEX_STATUSES:
            self._by_status.labels(status=status).set(0)
        for event in ENGINE_ATTEMPT_EVENTS:
            self._engine.labels(event=event)
        for reason in LEASE_LOST_REASONS:
            self._lease_lost.labels(reason=reason)
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

    def ready_latency(self, seconds: float) -> None:
        """Observe one READY's end-to-end latency, in seconds: from its intent record's Kafka
        timestamp to the broker's acknowledgement of the READY.

        A negative value (the intent producer's clock ahead of SR's) is not observed at all:
        clamping it to 0 would report a latency nobody had.
        """
        if seconds >= 0:
            self._ready_latency.observe(seconds)

    def lease_lost(self, reason: str) -> None:
        """Count one run step that lost its lease: ``reason`` ``lost`` (the lease's session
        ended) or ``fenced`` (a newer holder's epoch rejected the write); others are ``OTHER``."""
        self._lease_lost.labels(reason=reason if reason in LEASE_LOST_REASONS else DLQ_OTHER).inc()

    def engine_attempt(self, event: str, seconds: float | None = None) -> None:
        """Count one engine attempt event (``started``, ``succeeded``, ``failed``, ``timed_out``;
        others are ``OTHER``) and observe its duration in seconds when given."""
        self._engine.labels(event=event if event in ENGINE_ATTEMPT_EVENTS else DLQ_OTHER).inc()
        if seconds is not None:
            self._engine_seconds.observe(max(0.0, seconds))

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

    def set_outbox(self, backlog: int, oldest_age_seconds: float) -> None:
        """Set the outbox gauges: ``backlog`` unpublished rows, the oldest ``oldest_age_seconds``
        old (both clamped at 0; the age is 0 when the backlog is)."""
        rows = max(0, int(backlog))
        self._outbox_backlog.set(rows)
        self._outbox_age.set(max(0.0, float(oldest_age_seconds)) if rows else 0.0)

    # ------------------------------------------------------------------ exposition
    def render(self) -> bytes:
        """The current values in the Prometheus text exposition format (UTF-8 bytes)."""
        return generate_latest(self._view)

    #: Content-Type of :meth:`render`'s output.
    content_type: Final[str] = CONTENT_TYPE_LATEST
