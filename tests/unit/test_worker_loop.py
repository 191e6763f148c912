"""The worker loop and its side tasks, on a scripted consumer and processor (no servers).

What is checked: the poll thread keeps storing and committing offsets while a sweep is
stuck; the sweep and the outbox flush run on their own threads, the first flush before the
first poll; the polled gauges are read on the poll thread (the consumer answers only it);
an oversized record reaches the DLQ through the codec's cap; stopping joins every side
thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from tests.unit.conftest import make_intent
from worker.adapters.avro import SINGLE_OBJECT_MAGIC
from worker.app.crashpoints import CrashPoints
from worker.app.ports import Record
from worker.app.processor import Action, Outcome
from worker.core.index import OutboxStats
from worker.core.models import RunIntent
from worker.core.policy import Policy
from worker.errors import KafkaUnavailableError, MessageTooLargeError
from worker.runtime import worker as worker_module
from worker.runtime.compose import make_codec
from worker.runtime.side_tasks import SideTask, SideTasks
from worker.runtime.worker import Worker
from worker.settings import Settings

INTENTS = "sr.run-intents"


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class ScriptedConsumer:
    """Stands in for IntakeConsumer: hands out fed records, records stores and commits."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self._queue: list[Record] = []
        self._lock = threading.Lock()
        self.stored: dict[tuple[str, int], int] = {}
        self.commits = 0
        self.lag_threads: set[str] = set()

    def __enter__(self) -> ScriptedConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.events.append("close")

    def feed(self, records: list[Record]) -> None:
        with self._lock:
            self._queue.extend(records)

    def poll_batch(self, max_messages: int, timeout: float) -> list[Record]:
        if "poll" not in self.events:
            self.events.append("poll")
        with self._lock:
            batch, self._queue = self._queue[:max_messages], self._queue[max_messages:]
        if not batch:
            time.sleep(min(timeout, 0.01))
        return batch

    def store(self, topic: str, partition: int, next_offset: int) -> None:
        self.stored[(topic, partition)] = next_offset

    def commit(self) -> None:
        self.commits += 1

    def assignment(self) -> list[Any]:
        self.lag_threads.add(threading.current_thread().name)
        return []


class ScriptedProcessor:
    """Stands in for RunProcessor: a sweep that blocks until released, counted flushes."""

    def __init__(self, settings: Settings, events: list[str]) -> None:
        self.codec = make_codec(settings)
        self.events = events
        self.release_sweep = threading.Event()
        self.sweep_started = threading.Event()
        self.threads: dict[str, set[str]] = {"sweep": set(), "flush": set()}
        self.handled: list[RunIntent] = []
        self.dead: list[tuple[Record, BaseException]] = []

    def handle_intent(self, intent: RunIntent, source: Record) -> Outcome:
        self.handled.append(intent)
        return Outcome(Action.READY, "r", "")

    def handle_trigger(self, trigger: Any, source: Record) -> Outcome:
        raise AssertionError("no triggers in these tests")

    def dead_letter(self, source: Record, error: BaseException) -> None:
        self.dead.append((source, error))

    def sweep(self, *, stale_admitted_after: float) -> list[Outcome]:
        self.threads["sweep"].add(threading.current_thread().name)
        self.sweep_started.set()
        self.release_sweep.wait(10)
        return []

    def flush_outbox(self) -> int:
        self.threads["flush"].add(threading.current_thread().name)
        if "flush" not in self.events:
            self.events.append("flush")
        return 0


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, policy: Policy) -> Iterator[SimpleNamespace]:
    """A Worker whose services and consumer are scripted, running on its own thread."""
    monkeypatch.setattr(worker_module, "OUTBOX_INTERVAL", 0.05)
    monkeypatch.setattr(worker_module, "GAUGE_INTERVAL", 0.05)
    settings = Settings(sweep_interval=0.05, commit_interval=0.05, poll_timeout=0.05, http_port=0,
                        max_message_bytes=4096, topics={"intents": INTENTS})
    events: list[str] = []
    consumer = ScriptedConsumer(events)
    processor = ScriptedProcessor(settings, events)
    gauge_threads: set[str] = set()

    def count_by_status() -> dict[str, int]:
        gauge_threads.add(threading.current_thread().name)
        return {"WAITING": 2}

    services = SimpleNamespace(processor=processor, index=SimpleNamespace(count_by_status=count_by_status,
                                                                       outbox_stats=lambda: OutboxStats(0, 0.0)),
                               crash=CrashPoints(), store=SimpleNamespace(counter=SimpleNamespace(snapshot=dict)),
                               pg_counter=SimpleNamespace(snapshot=lambda: 0),
                               codec=SimpleNamespace(preflight=lambda subjects: None))
    opened: list[dict[str, Any]] = []

    @contextmanager
    def open_worker_services(s: Settings, p: Policy, **kwargs: Any) -> Iterator[SimpleNamespace]:
        opened.append(kwargs)
        yield services

    monkeypatch.setattr(worker_module, "open_worker_services", open_worker_services)
    monkeypatch.setattr(worker_module, "IntakeConsumer", lambda *a, **k: consumer)
    worker = Worker(settings, policy, migrate_db=False)
    thread = threading.Thread(target=worker.run, name="sr-test-worker")
    thread.start()
    try:
        assert worker.ready.wait(5)
        yield SimpleNamespace(worker=worker, settings=settings, consumer=consumer, processor=processor, events=events,
                              gauge_threads=gauge_threads, opened=opened, thread=thread)
    finally:
        processor.release_sweep.set()
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()


def _record(offset: int, value: bytes) -> Record:
    return Record(topic=INTENTS, partition=0, offset=offset, key=None, value=value, headers=(), timestamp_ms=0)


def test_offsets_are_stored_and_committed_while_a_sweep_is_running(world: SimpleNamespace) -> None:
    processor, consumer = world.processor, world.consumer
    assert processor.sweep_started.wait(5)  # the sweep is now stuck until released
    commits_before = consumer.commits
    value = make_codec(world.settings).encode_intent(make_intent())
    consumer.feed([_record(offset, value) for offset in range(5)])
    assert wait_until(lambda: consumer.stored.get((INTENTS, 0)) == 5 and consumer.commits > commits_before)
    assert not processor.release_sweep.is_set() and len(processor.handled) == 5
    assert processor.threads["sweep"] == {"sr-side-sweep"}
    assert world.opened == [{"migrate_db": False, "metrics": world.worker.metrics}]


def test_the_outbox_flush_runs_on_a_side_thread_after_a_first_flush_before_polling(world: SimpleNamespace) -> None:
    processor = world.processor
    assert world.events[:2] == ["flush", "poll"]
    assert wait_until(lambda: "sr-side-outbox" in processor.threads["flush"] and bool(world.gauge_threads))
    assert processor.threads["flush"] == {"sr-test-worker", "sr-side-outbox"}  # first flush: before the loop
    assert world.gauge_threads == world.consumer.lag_threads == {"sr-test-worker"}  # the poll thread
    assert 'sr_runs_by_status{status="WAITING"} 2.0' in world.worker.metrics.render().decode()


def test_an_oversized_record_is_dead_lettered_through_the_codec_cap(world: SimpleNamespace) -> None:
    processor, consumer = world.processor, world.consumer
    consumer.feed([_record(0, SINGLE_OBJECT_MAGIC + b"x" * 4095)])
    assert wait_until(lambda: consumer.stored.get((INTENTS, 0)) == 1)
    ((source, error),) = processor.dead
    assert source.offset == 0 and isinstance(error, MessageTooLargeError)


def test_stopping_joins_every_side_thread(world: SimpleNamespace) -> None:
    world.processor.release_sweep.set()
    world.worker.stop()
    world.thread.join(10)
    assert not world.thread.is_alive()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("sr-side-")]
    assert world.events[-1] == "close"


# ----------------------------------------------------------------------------- SideTasks
def test_side_tasks_wait_an_interval_survive_failures_and_stop(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[float] = []
    faults: list[BaseException] = [KafkaUnavailableError("broker away"), RuntimeError("bug")]

    def action() -> None:
        calls.append(time.monotonic())
        if faults:
            raise faults.pop(0)

    tasks = SideTasks([SideTask("probe", 0.05, action)])
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="sr.worker"):
        tasks.start()
        assert wait_until(lambda: len(calls) >= 4)
        tasks.stop()
        assert tasks.join(5)
    assert calls[0] - started >= 0.04  # the first run waits one interval
    done = len(calls)
    time.sleep(0.15)
    assert len(calls) == done  # nothing runs after stop
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("WARNING", "side task hit a transient fault; retrying at the next interval") in messages
    assert ("ERROR", "side task failed") in messages


def test_a_run_in_progress_finishes_before_join_returns() -> None:
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow() -> None:
        entered.set()
        release.wait(5)
        finished.set()

    tasks = SideTasks([SideTask("slow", 0.01, slow)])
    tasks.start()
    assert entered.wait(5)
    tasks.stop()
    assert not tasks.join(0.05)  # still running: join with a timeout gives up and says so
    release.set()
    assert tasks.join(5) and finished.is_set()


def test_side_tasks_refuse_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        SideTasks([SideTask("bad", 0.0, lambda: None)])
