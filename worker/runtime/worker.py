"""The worker loop (``sr run``): consume intents and triggers, drive runs, commit offsets.

Records flow through a bounded pool continuously: up to ``batch_size`` records are in flight
(polled, not finished) at any time, handled concurrently by ``run_concurrency`` threads (the
lease serialises work on one run), and a slot is refilled as soon as a record finishes — no
barrier where the pool waits for a batch's slowest run. Per partition, the offset after the
longest prefix of *finished* records is stored, and stored offsets are committed every
``commit_interval`` seconds, on revoke and on stop. A record's offset is therefore committed
only after its effects are durable — READY published, DLQ copy acknowledged, or a duplicate
recognised.

The poll thread only polls, hands records to the pool (whose threads decode and dispatch
them), reaps, stores and commits; every few seconds it also reads the two polled gauges
(consumer lag needs the consumer, which answers only the thread polling it). Periodic work
runs on side tasks (:mod:`worker.runtime.side_tasks`) so it never holds up offsets: the sweep
(due WAITING runs and abandoned ADMITTED runs, each driven under its lease, up to 100 with
full verification) and the outbox flush (publications a crash left behind; the first flush
still runs before consuming starts). They stop after the consumer left the group.

Rebalances: on revoke the loop waits (at most ``revoke_drain_timeout``) for the revoked
partitions' in-flight records, stores their finished prefix and lets the consumer commit it;
on lost it drops them. Whatever was not committed is re-driven by the next owner — every SR
effect is idempotent, so that costs a duplicate check, never a second READY.

Fault handling:
* invalid input (any :class:`~worker.errors.PermanentError`, or an unexpected exception) →
  dead-lettered with error headers, then committed: nothing lost, the partition flows on. The
  size cap is the codec's (``max_message_bytes``): decoding a larger value raises
  :class:`~worker.errors.MessageTooLargeError`, dead-lettered like any invalid input;
* a transient fault (:class:`~worker.errors.RetryableError`, already retried with bounded
  backoff inside the adapters) → the record is retried with capped backoff until it succeeds
  or the worker is stopped; a stopped worker leaves that offset uncommitted so the next owner
  re-drives it.

:meth:`Worker.stop` only sets an event; ``run()`` finishes in-flight records, commits, stops
the side tasks and releases everything on the way out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

from worker.adapters.kafka import IntakeConsumer, PartitionId
from worker.app.crashpoints import CrashPoint
from worker.app.ports import Record
from worker.app.processor import Outcome, RunProcessor
from worker.core.policy import Policy
from worker.core.vocabulary import value_subject
from worker.errors import LeaseLostError, PermanentError, RetryableError, SRError, StaleEpochError
from worker.runtime.compose import (
    Services,
    kafka_config,
    open_worker_services,
    s3_config,
)
from worker.runtime.dispatch import dispatch
from worker.runtime.gauges import refresh_consumer_lag, refresh_outbox, refresh_runs_by_status
from worker.runtime.health import HealthServer, flag_check, standard_checks
from worker.runtime.heartbeat import Heartbeat
from worker.runtime.inflight import InFlight
from worker.runtime.metrics import Metrics
from worker.runtime.side_tasks import SideTask, SideTasks
from worker.settings import Settings

__all__ = ["GAUGE_INTERVAL", "OUTBOX_INTERVAL", "Worker"]

log = logging.getLogger("sr.worker")

RETRY_BACKOFF_START = 0.2  # seconds
RETRY_BACKOFF_MAX = 5.0  # seconds
OUTBOX_INTERVAL = 10.0  # seconds between sweeps for publications a crash left behind
GAUGE_INTERVAL = 5.0  # seconds between consumer-lag / runs-by-status refreshes
BUSY_POLL_TIMEOUT = 0.02  # seconds a poll may wait while records are in flight (completions wait)


class Worker:
    """One SR worker process: a consumer-group member over intents and triggers.

    Args:
        settings: the configuration (read once).
        policy: the gate policy runs are planned under.
        on_outcome: called from a pool thread after each record ended (``None`` = dead-lettered).
        migrate_db: apply the database migrations at start (``sr run --no-migrate`` turns it off).
    """

    def __init__(self, settings: Settings, policy: Policy,
                 on_outcome: Callable[[Record, Outcome | None], None] | None = None, *,
                 migrate_db: bool = True) -> None:
        self._settings = settings
        self._policy = policy
        self._migrate_db = migrate_db
        self._stop = threading.Event()
        self._on_outcome = on_outcome
        self.ready = threading.Event()
        self.metrics = Metrics()
        #: Beaten by every turn of the poll loop; /healthz turns 503 when it is overdue.
        self.heartbeat = Heartbeat(settings.liveness_timeout)
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
        health = HealthServer(s.http_host, s.http_port, metrics=self.metrics, heartbeat=self.heartbeat, checks={
            **standard_checks(kafka_config(s), s.pg_conninfo(), s3_config(s), s.s3_bucket),
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
        with (
            open_worker_services(s, self._policy, migrate_db=self._migrate_db, metrics=self.metrics) as services,
            ThreadPoolExecutor(max_workers=s.run_concurrency, thread_name_prefix="sr-run") as pool,
        ):
            inflight = InFlight()
            consumer = IntakeConsumer(
                kafka_config(s),
                group_id=s.group_id,
                topics=[s.topics.intents, s.topics.triggers, s.topics.engine_results],
                on_assign=lambda parts: log.info("partitions assigned", extra={"partitions": _names(parts)}),
                on_revoke=lambda parts: self._drain_revoked(consumer, inflight, parts),
                on_lost=lambda parts: self._drop_lost(inflight, parts),
                close_timeout=s.consumer_close_timeout,
            )
            side = SideTasks(self._side_tasks(services))
            try:
                with consumer:
                    # Registry credentials and schemas are checked before any work: wrong ones
                    # stop the worker here instead of failing every decision it would publish.
                    self._retrying(lambda: services.codec.preflight(written_subjects(s)))
                    # Publications a crash left behind go out before new work is taken.
                    self._retrying(services.processor.flush_outbox)
                    side.start()
                    self.ready.set()
                    log.info("worker started", extra={"group_id": s.group_id})
                    self.heartbeat.arm()
                    try:
                        self._consume(services, consumer, pool, inflight)
                    finally:
                        self.heartbeat.disarm()  # a stop's drain has its own bounds
                    # Each stage of a stop is logged, so a stop that takes long says where.
                    log.info("stop requested; finishing in-flight records", extra={"in_flight": len(inflight)})
                    side.stop()  # a sweep in progress winds down while in-flight records finish
                    inflight.reap(wait(list(inflight.futures)).done)
                    self._store(consumer, inflight)
                    self._commit(consumer, final=True)
            finally:
                # After the consumer left the group (its partitions move on at once), before
                # the clients the side tasks use are closed.
                side.stop()
                side.join()
            self.ready.clear()
            # The real cost of the work done, for operators and the cost tests.
            log.info("worker stopped", extra={"s3_requests": services.store.counter.snapshot(),
                                              "pg_round_trips": services.pg_counter.snapshot()})

    def _side_tasks(self, services: Services) -> list[SideTask]:
        """The periodic work of a worker that may take long, off the poll thread."""
        processor = services.processor
        return [
            SideTask("sweep", self._settings.sweep_interval, lambda: self._sweep(processor)),
            SideTask("outbox", OUTBOX_INTERVAL, processor.flush_outbox),
        ]

    def _consume(self, services: Services, consumer: IntakeConsumer, pool: ThreadPoolExecutor,
                 inflight: InFlight) -> None:
        """The poll loop, until :meth:`stop`: poll, dispatch, reap, store, commit (and read the
        two polled gauges every ``GAUGE_INTERVAL``)."""
        s = self._settings
        last_gauges = last_commit = time.monotonic()
        uncommitted = False
        while not self._stop.is_set():
            self.heartbeat.beat()
            uncommitted |= self._pump(services, consumer, pool, inflight)
            now = time.monotonic()
            if uncommitted and now - last_commit >= s.commit_interval:
                services.crash.hit(CrashPoint.BEFORE_OFFSET_COMMIT)
                self._commit(consumer)
                last_commit, uncommitted = now, False
            if now - last_gauges > GAUGE_INTERVAL:
                # Here, not on a side task: the consumer answers only the thread polling it
                # (assignment() from another thread blocks while this one consumes).
                self._refresh_gauges(services, consumer)
                last_gauges = time.monotonic()

    def _refresh_gauges(self, services: Services, consumer: IntakeConsumer) -> None:
        """Consumer lag (watermarks from the last fetch; one committed-offsets round trip) and
        runs-by-status (one GROUP BY), together so a scrape shows both from the same moment;
        a failure only costs one refresh."""
        s = self._settings
        try:
            refresh_consumer_lag(consumer, [s.topics.intents, s.topics.triggers, s.topics.engine_results], self.metrics,
                                 cached=True)
            refresh_runs_by_status(services.index, self.metrics)
            refresh_outbox(services.index, self.metrics)
        except SRError as exc:
            log.debug("gauge refresh failed", extra={"error": str(exc)})

    def _pump(self, services: Services, consumer: IntakeConsumer, pool: ThreadPoolExecutor,
              inflight: InFlight) -> bool:
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
    def _store(consumer: IntakeConsumer, inflight: InFlight) -> bool:
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

    def _drain_revoked(self, consumer: IntakeConsumer, inflight: InFlight, parts: list[PartitionId]) -> None:
        """Before revoked partitions move: let their in-flight records finish (bounded), store
        their finished prefix (the consumer commits it next), and stop tracking them."""
        revoked = set(parts)
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
    def _drop_lost(inflight: InFlight, parts: list[PartitionId]) -> None:
        """Partitions lost without a chance to commit: their in-flight work is not ours to commit."""
        inflight.forget(set(parts))
        log.warning("partitions lost", extra={"partitions": _names(parts)})

    def _handle(self, services: Services, record: Record) -> bool:
        """Handle one record to a durable end. False only if the worker stopped first."""
        processor = services.processor
        backoff = RETRY_BACKOFF_START
        while True:
            try:
                outcome = self._dispatch(processor, record)
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
            if outcome is not None and outcome.dead_letter is not None \
                    and not self._dead_letter(processor, record, outcome.dead_letter):
                return False  # a REJECTED intent's DLQ copy: the offset waits for its ack
            self.metrics.message(record.topic, outcome.action.value if outcome is not None else "DLQ")
            if self._on_outcome is not None:
                self._on_outcome(record, outcome)
            return True

    def _sweep(self, processor: RunProcessor) -> None:
        """Deadline and re-check sweep (a side task); faults are logged and retried at the next sweep."""
        try:
            outcomes = processor.sweep(stale_admitted_after=self._settings.stale_admitted_after)
        except (RetryableError, LeaseLostError, StaleEpochError) as exc:
            log.warning("sweep interrupted by a transient fault", extra={"error": str(exc)})
            return
        except PermanentError:
            log.exception("sweep failed")
            return
        if outcomes:
            log.info("sweep done", extra={"runs": len(outcomes),
                                          "outcomes": sorted({o.action.value for o in outcomes})})

    def _dispatch(self, processor: RunProcessor, record: Record) -> Outcome:
        """Decode and route a record by topic (the codec enforces the size cap)."""
        topics = self._settings.topics
        return dispatch(processor, record, triggers_topic=topics.triggers, results_topic=topics.engine_results)

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


def written_subjects(settings: Settings) -> dict[str, str]:
    """Record name -> registry subject of every record a worker produces (contract §2)."""
    topics = settings.topics
    return {"ReadyEvent": value_subject(topics.ready), "RunStatusEvent": value_subject(topics.status),
            "EngineRequest": value_subject(topics.engine_requests)}


def _names(parts: list[PartitionId]) -> list[str]:
    return [f"{topic}[{partition}]" for topic, partition in parts]
