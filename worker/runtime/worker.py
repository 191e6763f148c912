"""The worker loop (``sr run``): consume intents and triggers, drive runs, commit offsets.

Records flow through a bounded pool continuously: up to ``batch_size`` records are in flight
(polled, not finished) at any time, handled concurrently by ``run_concurrency`` threads (the
lease serialises work on one run), and a slot is refilled as soon as a record finishes — no
barrier where the pool waits for a batch's slowest run. Per partition, the offset after the
longest prefix of *finished* records is stored, and stored offsets are committed every
``commit_interval`` seconds, on revoke and on stop. A record's offset is therefore committed
only after its effects are durable — READY published, DLQ copy acknowledged, or a duplicate
recognised.

Rebalances: on revoke the loop waits (at most ``revoke_drain_timeout``) for the revoked
partitions' in-flight records, stores their finished prefix and lets the consumer commit it;
on lost it drops them. Whatever was not committed is re-driven by the next owner — every SR
effect is idempotent, so that costs a duplicate check, never a second READY.

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
import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import TopicPartition

from worker.adapters.avro import AvroCodec, HttpSchemaRegistry
from worker.adapters.kafka import EventProducer, IntakeConsumer, KafkaConfig
from worker.adapters.postgres import PgConfig, RoundTripCounter, RunIndex, migrate
from worker.adapters.postgres.leases import LeaseManager
from worker.adapters.s3 import ObjectStore, S3Config
from worker.app.crashpoints import CrashPoint, CrashPoints
from worker.app.ports import Record
from worker.app.processor import Outcome, RunProcessor, Topics
from worker.app.publisher import Publisher
from worker.app.truth import TruthStore
from worker.app.verifier import EvidenceVerifier
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
from worker.runtime.observability import (
    HealthServer,
    Metrics,
    flag_check,
    refresh_consumer_lag,
    refresh_runs_by_status,
    standard_checks,
)
from worker.settings import Settings

log = logging.getLogger("sr.worker")

RETRY_BACKOFF_START = 0.2  # seconds
RETRY_BACKOFF_MAX = 5.0  # seconds
OUTBOX_INTERVAL = 10.0  # seconds between sweeps for publications a crash left behind
GAUGE_INTERVAL = 5.0  # seconds between consumer-lag / runs-by-status refreshes
BUSY_POLL_TIMEOUT = 0.02  # seconds a poll may wait while records are in flight (completions wait)


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


class _InFlight:
    """Records handed to the run pool and not finished yet, tracked per partition in offset order.

    Offsets are stored only for the longest *finished prefix* of each partition, so a record
    is never marked consumed while an earlier one of its partition is still running (contract
    §6: the offset is the last step). Not thread-safe: only the consume loop touches it.
    """

    def __init__(self) -> None:
        self._order: dict[tuple[str, int], deque[int]] = defaultdict(deque)
        self._finished: set[tuple[str, int, int]] = set()
        self._touched: set[tuple[str, int]] = set()
        self.futures: dict[Future[bool], Record] = {}
        #: Futures as they finish (filled by pool threads): O(1) per record to collect.
        self.completed: queue.SimpleQueue[Future[bool]] = queue.SimpleQueue()

    def __len__(self) -> int:
        return len(self.futures)

    def add(self, record: Record, future: Future[bool]) -> None:
        """Track ``record``, just submitted as ``future``."""
        self._order[(record.topic, record.partition)].append(record.offset)
        self.futures[future] = record
        future.add_done_callback(self.completed.put)

    def reap_completed(self, timeout: float | None = None) -> None:
        """Reap every future finished so far; with ``timeout``, first wait that long for one."""
        done: list[Future[bool]] = []
        try:
            if timeout is not None:
                done.append(self.completed.get(timeout=timeout))
            while True:
                done.append(self.completed.get_nowait())
        except queue.Empty:
            pass
        self.reap(done)

    def reap(self, done: Iterable[Future[bool]]) -> None:
        """Forget finished futures; mark their records finished unless the worker stopped first."""
        for future in done:
            record = self.futures.pop(future, None)
            if record is not None and future.result():
                self._finished.add((record.topic, record.partition, record.offset))
                self._touched.add((record.topic, record.partition))

    def advance(self) -> list[tuple[str, int, int]]:
        """(topic, partition, next offset) for each partition whose finished prefix grew."""
        moved: list[tuple[str, int, int]] = []
        touched, self._touched = self._touched, set()
        for topic, partition in touched:
            offsets = self._order.get((topic, partition))
            if offsets is None:
                continue  # forgotten (revoked) meanwhile
            next_offset: int | None = None
            while offsets and (topic, partition, offsets[0]) in self._finished:
                offset = offsets.popleft()
                self._finished.discard((topic, partition, offset))
                next_offset = offset + 1
            if next_offset is not None:
                moved.append((topic, partition, next_offset))
        return moved

    def of(self, partitions: set[tuple[str, int]]) -> list[Future[bool]]:
        """The unfinished futures of records from ``partitions``."""
        return [f for f, r in self.futures.items() if (r.topic, r.partition) in partitions]

    def forget(self, partitions: set[tuple[str, int]]) -> None:
        """Stop tracking ``partitions`` (they moved to another member, which re-drives them).

        Their records still running finish on their own; their offsets are never stored here.
        """
        for key in partitions:
            self._order.pop(key, None)
        self._finished = {f for f in self._finished if (f[0], f[1]) not in partitions}
        for future in self.of(partitions):
            del self.futures[future]


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
            inflight = _InFlight()
            consumer = IntakeConsumer(
                kafka_config(s),
                group_id=s.group_id,
                topics=[s.topics.intents, s.topics.triggers],
                on_assign=lambda parts: log.info("partitions assigned", extra={"partitions": _names(parts)}),
                on_revoke=lambda parts: self._drain_revoked(consumer, inflight, parts),
                on_lost=lambda parts: self._drop_lost(inflight, parts),
            )
            with consumer:
                self._retrying(services.processor.flush_outbox)
                last_outbox = last_sweep = last_gauges = last_commit = time.monotonic()
                self.ready.set()
                log.info("worker started", extra={"group_id": s.group_id})
                uncommitted = False
                while not self._stop.is_set():
                    uncommitted |= self._pump(services, consumer, pool, inflight)
                    now = time.monotonic()
                    if uncommitted and now - last_commit >= s.commit_interval:
                        services.crash.hit(CrashPoint.BEFORE_OFFSET_COMMIT)
                        self._commit(consumer)
                        last_commit, uncommitted = now, False
                    if now - last_outbox > OUTBOX_INTERVAL:
                        self._retrying(services.processor.flush_outbox)
                        last_outbox = now
                    if now - last_sweep > s.sweep_interval:
                        self._sweep(services)
                        last_sweep = time.monotonic()
                    if now - last_gauges > GAUGE_INTERVAL:
                        self._refresh_gauges(services, consumer)
                        last_gauges = time.monotonic()
                # Stopping: in-flight records finish (or give up at their next retry wait).
                inflight.reap(wait(list(inflight.futures)).done)
                self._store(consumer, inflight)
                self._commit(consumer, final=True)
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

    def _pump(self, services: Services, consumer: IntakeConsumer, pool: ThreadPoolExecutor,
              inflight: _InFlight) -> bool:
        """One turn of the loop: top the pool up with new records, or wait for one to finish;
        then store the offsets of every partition whose finished prefix grew.

        Returns:
            True if an offset was stored (a commit is due).
        """
        s = self._settings
        free = s.batch_size - len(inflight)
        if not inflight or free >= max(1, s.batch_size // 4):
            # Idle: wait for records. Busy: only take what is buffered, and get back to
            # reaping completions quickly (their offsets and the free slots wait for it).
            # Refilling in steps of a quarter window keeps the pool fed at one poll per
            # batch_size/4 records instead of one per record.
            records = consumer.poll_batch(free, BUSY_POLL_TIMEOUT if inflight else s.poll_timeout)
            for record in records:
                inflight.add(record, pool.submit(self._handle, services, record))
            inflight.reap_completed()
        else:
            inflight.reap_completed(timeout=s.poll_timeout)
        return self._store(consumer, inflight)

    @staticmethod
    def _store(consumer: IntakeConsumer, inflight: _InFlight) -> bool:
        moved = inflight.advance()
        for topic, partition, next_offset in moved:
            consumer.store(topic, partition, next_offset)
        return bool(moved)

    @staticmethod
    def _commit(consumer: IntakeConsumer, *, final: bool = False) -> None:
        """Commit the stored offsets; a failure keeps them stored for the next commit."""
        try:
            consumer.commit()
        except RetryableError as exc:
            # The stored offsets stay stored; the next commit (next interval, revoke or stop)
            # carries them. Until then a crash only means idempotent re-deliveries.
            log.warning("final offset commit failed; records since the last commit will be re-driven" if final
                        else "offset commit failed; will retry at the next commit", extra={"error": str(exc)})

    def _drain_revoked(self, consumer: IntakeConsumer, inflight: _InFlight, parts: list[TopicPartition]) -> None:
        """Before revoked partitions move: let their in-flight records finish (bounded), store
        their finished prefix (the consumer commits it next), and stop tracking them."""
        revoked = {(p.topic, p.partition) for p in parts}
        pending = inflight.of(revoked)
        if pending:
            done, not_done = wait(pending, timeout=self._settings.revoke_drain_timeout)
            inflight.reap(done)
            if not_done:
                log.warning("revoked partitions still have records running; the new owner re-drives them",
                            extra={"partitions": _names(parts), "records": len(not_done)})
        self._store(consumer, inflight)
        inflight.forget(revoked)
        log.info("partitions revoked", extra={"partitions": _names(parts)})

    @staticmethod
    def _drop_lost(inflight: _InFlight, parts: list[TopicPartition]) -> None:
        """Partitions lost without a chance to commit: their in-flight work is not ours to commit."""
        inflight.forget({(p.topic, p.partition) for p in parts})
        log.warning("partitions lost", extra={"partitions": _names(parts)})

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
