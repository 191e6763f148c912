"""Prometheus metrics of an SR worker (contract §7).

:class:`Metrics` holds every SR series on its **own**
:class:`~prometheus_client.CollectorRegistry` (never the process-global one, so several
workers/tests in one process never collide). Its hook methods (:meth:`Metrics.observe_s3`,
:meth:`Metrics.observe_pg`) plug straight into :class:`~worker.adapters.s3.ObjectStore`
``on_request`` and :class:`~worker.adapters.postgres.RoundTripCounter` ``on_query``; no hook
ever raises. The two gauges that are not event-driven are refreshed by
:mod:`worker.runtime.gauges`; ``/metrics`` is served by :mod:`worker.runtime.health`.

Units: durations in **seconds**, sizes in **bytes**, lag in **messages** (offsets).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

from worker.core.models import RunStatus

__all__ = [
    "DLQ_OTHER",
    "ENGINE_ATTEMPT_EVENTS",
    "INDEX_STATUSES",
    "METRIC_NAMES",
    "RUN_TRANSITION_STATUSES",
    "S3_VERBS",
    "Metrics",
]

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
    "sr_engine_attempts_total",
    "sr_engine_attempt_seconds",
)
#: Event label values of ``sr_engine_attempts_total``.
ENGINE_ATTEMPT_EVENTS: Final[tuple[str, ...]] = ("started", "succeeded", "failed", "timed_out")

# Histogram buckets, seconds. S3: a small object on a LAN is ~2-20 ms, a large member or a
# struggling server seconds. Postgres: one round trip is ~0.2-5 ms, a lock wait longer.
_S3_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_PG_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0)
# Engine attempts: minutes to hours (the default attempt timeout is 900 s).
_ENGINE_BUCKETS: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0)
_LABEL_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


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

    * ``sr_consumer_lag{topic,partition}`` gauge — messages between the committed offset and
      the high watermark (see
      :func:`worker.adapters.kafka.health.consumer_lag` for the Tansu caveat);
    * ``sr_runs_total{status}`` counter — run transitions into READY/WAITING/FAILED/QUARANTINED/REJECTED;
    * ``sr_runs_by_status{status}`` gauge — runs per status in the index
      (:func:`worker.runtime.gauges.refresh_runs_by_status`);
    * ``sr_ready_published_total`` counter — READY events acknowledged by the broker;
    * ``sr_dlq_total{error_class}`` counter — dead-lettered messages by ``sr-error-class``;
    * ``sr_evidence_bytes_verified_total`` counter — evidence bytes hashed (``rate()`` = verify bytes/s);
    * ``sr_s3_request_seconds{verb,outcome}`` histogram — every S3 request attempt, outcome
      ``ok`` or ``error`` (any non-2xx answer, including 404/412, or no answer);
    * ``sr_pg_query_seconds`` histogram — every Postgres statement (one round trip);
    * ``sr_messages_total{topic,outcome}`` counter — consumed messages by how they ended;
    * ``sr_engine_attempts_total{event}`` counter — engine attempts ``started``, ``succeeded``,
      ``failed`` (a FAILED result) and ``timed_out`` (no result by the attempt deadline);
    * ``sr_engine_attempt_seconds`` histogram — request to recorded result, per attempt.
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
        self._engine = Counter("sr_engine_attempts", "Engine attempts by event", ["event"], registry=reg)
        self._engine_seconds = Histogram("sr_engine_attempt_seconds", "Engine attempt duration (request to "
                                         "recorded result) in seconds", buckets=_ENGINE_BUCKETS, registry=reg)
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

    # ------------------------------------------------------------------ exposition
    def render(self) -> bytes:
        """The current values in the Prometheus text exposition format (UTF-8 bytes)."""
        return generate_latest(self._view)

    #: Content-Type of :meth:`render`'s output.
    content_type: Final[str] = CONTENT_TYPE_LATEST
