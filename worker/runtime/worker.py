"""The worker loop (``sr run``): consume intents and triggers, drive runs, commit offsets.

Per batch: every record is handled concurrently (a bounded pool; the lease serialises work
on one run), then, per partition, the offset after the longest prefix of finished records
is stored and committed. A record's offset is therefore committed only after its effects
are durable — READY published, DLQ copy acknowledged, or a duplicate recognised.

Fault handling:
* invalid input (any :class:`~worker.errors.PermanentError`, or an unexpected exception) →
  dead-lettered with error headers, then committed: nothing lost, the partition flows on;
* a transient fault (:class:`~worker.errors.RetryableError`, already retried with bounded
  backoff inside the adapters) → the record is retried with capped backoff until it succeeds
  or the worker is stopped; a stopped worker leaves that offset uncommitted so the next owner
  re-drives it.

:meth:`Worker.stop` only sets an event; ``run()`` finishes in-flight records, commits, and
releases everything on the way out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import TopicPartition

from worker.adapters.avro import AvroCodec, HttpSchemaRegistry
from worker.adapters.kafka import EventProducer, IntakeConsumer, KafkaConfig, Record
from worker.adapters.postgres import PgConfig, RoundTripCounter, RunIndex, migrate
from worker.adapters.s3 import ObjectStore, S3Config
from worker.core.policy import Policy, load_policy
from worker.errors import (
    ConfigError,
    LeaseLostError,
    MessageTooLargeError,
    PermanentError,
    RetryableError,
    SRError,
    StaleEpochError,
)
from worker.runtime.crashpoints import CrashPoint, CrashPoints
from worker.runtime.lease import LeaseManager
from worker.runtime.observability import (
    HealthServer,
    Metrics,
    flag_check,
    refresh_consumer_lag,
    refresh_runs_by_status,
    standard_checks,
)
from worker.runtime.processor import Outcome, RunProcessor, Topics
from worker.runtime.publisher import Publisher
from worker.runtime.truth import TruthStore
from worker.runtime.verifier import EvidenceVerifier
from worker.settings import Settings

log = logging.getLogger("sr.worker")

RETRY_BACKOFF_START = 0.2  # seconds
RETRY_BACKOFF_MAX = 5.0  # seconds
OUTBOX_INTERVAL = 10.0  # seconds between sweeps for publications a crash left behind
GAUGE_INTERVAL = 5.0  # seconds between consumer-lag / runs-by-status refreshes


def load_policy_file(path: Path | None) -> Policy:
    """Read and parse the gate policy.

    Raises:
        ConfigError: no policy configured or unreadable.
        PolicyError: the policy is invalid.
    """
    if path is None:
        raise ConfigError("no policy configured: set SR_POLICY_FILE (see schemas/policy.example.toml)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc}") from exc
    return load_policy(data)


def kafka_config(settings: Settings) -> KafkaConfig:
    """The Kafka client settings derived from SR's settings."""
    return KafkaConfig(
        bootstrap=settings.kafka_bootstrap,
        client_extra=settings.kafka_client_config(),
        session_timeout=settings.session_timeout,
        max_message_bytes=max(settings.max_message_bytes * 4, 16 * 1024 * 1024),
    )


def s3_config(settings: Settings) -> S3Config:
    """The object-store settings derived from SR's settings."""
    return S3Config(
        endpoint_url=settings.s3_endpoint,
        region=settings.s3_region,
        access_key_id=settings.aws_access_key_id,
        secret_access_key=settings.aws_secret_access_key,
        max_pool_connections=settings.s3_max_pool_connections,
        client_library=settings.s3_client_library,
    )


def pg_config(settings: Settings) -> PgConfig:
    """The Postgres settings derived from SR's settings."""
    return PgConfig(dsn=settings.pg_dsn, pool_size=settings.pg_pool_size)


def make_codec(settings: Settings) -> AvroCodec:
    """The Avro codec: single-object encoding, or the Confluent wire format with a registry."""
    registry = HttpSchemaRegistry(settings.schema_registry_url) if settings.schema_registry_url else None
    return AvroCodec(registry=registry, max_message_bytes=settings.max_message_bytes)


@dataclass
class Services:
    """The open clients a processor runs on (also used by CLI commands)."""

    settings: Settings
    codec: AvroCodec
    store: ObjectStore
    index: RunIndex
    leases: LeaseManager
    producer: EventProducer
    processor: RunProcessor
    pg_counter: RoundTripCounter
    crash: CrashPoints


@contextmanager
def open_services(settings: Settings, policy: Policy, *, migrate_db: bool = True,
                  metrics: Metrics | None = None) -> Iterator[Services]:
    """Open every client SR needs, in dependency order; close them in reverse.

    With ``metrics``, S3 and Postgres latencies, transitions, publications, DLQ writes and
    verified evidence bytes are recorded there.
    """
    if migrate_db:
        migrate(settings.pg_dsn.get_secret_value())
    codec = make_codec(settings)
    counter = RoundTripCounter(on_query=metrics.observe_pg if metrics is not None else None)
    crash = CrashPoints(settings.test_crash_point, settings.test_crash_after)
    with ExitStack() as stack:
        store = stack.enter_context(ObjectStore(s3_config(settings),
                                                on_request=metrics.observe_s3 if metrics is not None else None))
        index = stack.enter_context(RunIndex(pg_config(settings), counter))
        leases = stack.enter_context(LeaseManager(pg_config(settings), counter))
        producer = stack.enter_context(EventProducer(kafka_config(settings)))
        verifier = EvidenceVerifier(store, max_meta_bytes=settings.max_meta_bytes,
                                    max_member_bytes=settings.max_member_bytes,
                                    concurrency=settings.verify_concurrency)
        stack.callback(verifier.close)
        processor = RunProcessor(
            policy=policy,
            codec=codec,
            index=index,
            leases=leases,
            truth=TruthStore(store, settings.s3_bucket, settings.s3_prefix),
            verifier=verifier,
            publisher=Publisher(producer, index, dlq_topic=settings.topics.dlq, crash_points=crash,
                                on_fact_published=metrics.ready_published if metrics is not None else None),
            topics=Topics(ready=settings.topics.ready, status=settings.topics.status),
            s3_bucket=settings.s3_bucket,
            s3_prefix=settings.s3_prefix,
            tenant_prefixes=settings.tenant_evidence_prefixes,
            recheck_interval=settings.recheck_interval,
            lease_wait=settings.lease_wait,
            crash_points=crash,
            metrics=metrics,
        )
        yield Services(settings, codec, store, index, leases, producer, processor, counter, crash)


@dataclass
class _Tracker:
    """Completion of one batch's records per partition, for in-order offset storage."""

    offsets: dict[tuple[str, int], list[int]] = field(default_factory=lambda: defaultdict(list))
    done: set[tuple[str, int, int]] = field(default_factory=set)

    def add(self, record: Record) -> None:
        self.offsets[(record.topic, record.partition)].append(record.offset)

    def finish(self, record: Record) -> None:
        self.done.add((record.topic, record.partition, record.offset))

    def committable(self) -> Iterator[tuple[str, int, int]]:
        """(topic, partition, next offset) after the longest finished prefix of each partition."""
        for (topic, partition), offsets in self.offsets.items():
            next_offset: int | None = None
            for offset in sorted(offsets):
                if (topic, partition, offset) not in self.done:
                    break
                next_offset = offset + 1
            if next_offset is not None:
                yield topic, partition, next_offset


class Worker:
    """One SR worker process: a consumer-group member over intents and triggers."""

    def __init__(self, settings: Settings, policy: Policy,
                 on_outcome: Callable[[Record, Outcome | None], None] | None = None) -> None:
        self._settings = settings
        self._policy = policy
        self._stop = threading.Event()
        self._on_outcome = on_outcome
        self.ready = threading.Event()
        self.metrics = Metrics()
        self.health: HealthServer | None = None

    def stop(self) -> None:
        """Ask the loop to finish in-flight work, commit and exit. Only sets an event."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def run(self) -> None:
        """Run until :meth:`stop`.

        The HTTP endpoints (``/healthz``, ``/readyz``, ``/metrics``) come up first, so a
        liveness probe answers during migrations; ``/readyz`` turns ready once the loop runs
        and Kafka, Postgres and S3 all answer.

        Raises:
            SRError: start-up failed (configuration, migrations, clients).
        """
        s = self._settings
        health = HealthServer(s.http_host, s.http_port, metrics=self.metrics, checks={
            **standard_checks(kafka_config(s), s.pg_dsn, s3_config(s), s.s3_bucket),
            "worker": flag_check(self.ready, "worker loop"),
        })
        health.start()
        self.health = health
        log.info("http endpoints up", extra={"url": health.url})
        try:
            self._run_loop()
        finally:
            health.stop()

    def _run_loop(self) -> None:
        s = self._settings
        with open_services(s, self._policy, metrics=self.metrics) as services, ThreadPoolExecutor(
            max_workers=s.run_concurrency, thread_name_prefix="sr-run"
        ) as pool:
            consumer = IntakeConsumer(
                kafka_config(s),
                group_id=s.group_id,
                topics=[s.topics.intents, s.topics.triggers],
                on_assign=lambda parts: log.info("partitions assigned", extra={"partitions": _names(parts)}),
                on_revoke=lambda parts: log.info("partitions revoked", extra={"partitions": _names(parts)}),
                on_lost=lambda parts: log.warning("partitions lost", extra={"partitions": _names(parts)}),
            )
            with consumer:
                self._retrying(services.processor.flush_outbox)
                last_outbox = last_sweep = last_gauges = time.monotonic()
                self.ready.set()
                log.info("worker started", extra={"group_id": s.group_id})
                while not self._stop.is_set():
                    records = consumer.poll_batch(s.batch_size, s.poll_timeout)
                    if records:
                        self._process_batch(services, consumer, pool, records)
                    now = time.monotonic()
                    if now - last_outbox > OUTBOX_INTERVAL:
                        self._retrying(services.processor.flush_outbox)
                        last_outbox = now
                    if now - last_sweep > s.sweep_interval:
                        self._sweep(services)
                        last_sweep = time.monotonic()
                    if now - last_gauges > GAUGE_INTERVAL:
                        self._refresh_gauges(services, consumer)
                        last_gauges = time.monotonic()
                try:
                    consumer.commit()
                except RetryableError as exc:
                    log.warning("final offset commit failed; records since the last commit will be re-driven",
                                extra={"error": str(exc)})
            self.ready.clear()
            # The real cost of the work done, for operators and the cost tests.
            log.info("worker stopped", extra={"s3_requests": services.store.counter.snapshot(),
                                              "pg_round_trips": services.pg_counter.snapshot()})

    def _refresh_gauges(self, services: Services, consumer: IntakeConsumer) -> None:
        """Consumer lag and runs-by-status gauges; a failure only costs one refresh."""
        s = self._settings
        try:
            refresh_consumer_lag(consumer, [s.topics.intents, s.topics.triggers], self.metrics, cached=True)
            refresh_runs_by_status(services.index, self.metrics)
        except SRError as exc:
            log.debug("gauge refresh failed", extra={"error": str(exc)})

    def _process_batch(self, services: Services, consumer: IntakeConsumer, pool: ThreadPoolExecutor,
                       records: list[Record]) -> None:
        tracker = _Tracker()
        for record in records:
            tracker.add(record)
        futures = [(record, pool.submit(self._handle, services, record)) for record in records]
        for record, fut in futures:
            if fut.result():
                tracker.finish(record)
        for topic, partition, next_offset in tracker.committable():
            consumer.store(topic, partition, next_offset)
        services.crash.hit(CrashPoint.BEFORE_OFFSET_COMMIT)
        try:
            consumer.commit()
        except RetryableError as exc:
            # The stored offsets stay stored; the next commit (next batch, revoke or stop)
            # carries them. Until then a crash only means idempotent re-deliveries.
            log.warning("offset commit failed; will retry with the next batch", extra={"error": str(exc)})

    def _handle(self, services: Services, record: Record) -> bool:
        """Handle one record to a durable end. False only if the worker stopped first."""
        processor = services.processor
        backoff = RETRY_BACKOFF_START
        while True:
            try:
                outcome = self._dispatch(services, record)
            except (RetryableError, LeaseLostError, StaleEpochError) as exc:
                # A lost/fenced lease means another worker owns the run now: handling the record
                # again re-reads the index and sees what that worker did (never a DLQ case).
                if self._stop.is_set():
                    log.warning("stopping with a record unfinished; it will be re-driven",
                                extra={"topic": record.topic, "partition": record.partition,
                                       "offset": record.offset, "error": str(exc)})
                    return False
                log.warning("transient fault, retrying in %.1fs", backoff, extra={"error": str(exc)})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RETRY_BACKOFF_MAX)
                continue
            except PermanentError as exc:
                if not self._dead_letter(processor, record, exc):
                    return False
                outcome = None
            except Exception as exc:
                # A bug must not block the partition or lose the message: dead-letter it
                # (fail closed: nothing was published for it) and keep the traceback.
                log.exception("unexpected error handling a record; dead-lettering it")
                if not self._dead_letter(processor, record, exc):
                    return False
                outcome = None
            self.metrics.message(record.topic, outcome.action.value if outcome is not None else "DLQ")
            if self._on_outcome is not None:
                self._on_outcome(record, outcome)
            return True

    def _sweep(self, services: Services) -> None:
        """Deadline and re-check sweep; faults are logged and retried at the next sweep."""
        try:
            outcomes = services.processor.sweep(stale_admitted_after=self._settings.stale_admitted_after)
        except (RetryableError, LeaseLostError, StaleEpochError) as exc:
            log.warning("sweep interrupted by a transient fault", extra={"error": str(exc)})
            return
        except PermanentError:
            log.exception("sweep failed")
            return
        if outcomes:
            log.info("sweep done", extra={"runs": len(outcomes),
                                          "outcomes": sorted({o.action.value for o in outcomes})})

    def _dispatch(self, services: Services, record: Record) -> Outcome:
        size = len(record.value or b"")
        if size > self._settings.max_message_bytes:
            raise MessageTooLargeError(f"message of {size} bytes exceeds the cap of "
                                       f"{self._settings.max_message_bytes} bytes")
        if record.topic == self._settings.topics.triggers:
            return services.processor.handle_trigger(record)
        return services.processor.handle_intent(record)

    def _dead_letter(self, processor: RunProcessor, record: Record, error: BaseException) -> bool:
        """DLQ ``record``; False if the worker stopped before the DLQ write was acknowledged."""
        log.warning("dead-lettering record", extra={
            "topic": record.topic, "partition": record.partition, "offset": record.offset,
            "error_class": getattr(error, "code", "INTERNAL"),
        })
        try:
            self._retrying(lambda: processor.dead_letter(record, error))
        except RetryableError:
            return False
        return True

    def _retrying(self, action: Callable[[], object]) -> None:
        """Run ``action`` until it stops raising RetryableError (or the worker stops)."""
        backoff = RETRY_BACKOFF_START
        while True:
            try:
                action()
                return
            except RetryableError as exc:
                if self._stop.is_set():
                    raise
                log.warning("transient fault, retrying in %.1fs", backoff, extra={"error": str(exc)})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RETRY_BACKOFF_MAX)


def _names(parts: list[TopicPartition]) -> list[str]:
    return [f"{p.topic}[{p.partition}]" for p in parts]
