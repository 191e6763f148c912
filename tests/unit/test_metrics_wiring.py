"""Where the new series are observed, on the in-memory ports (issue 15): READY latency from the
intent record's timestamp to the READY's ack, leases lost or fenced during a step, and the
outbox gauges' refresh."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.app_world import DLQ, World
from worker.app.crashpoints import CrashPoint, CrashPoints
from worker.app.outcomes import Action
from worker.app.processor import RunProcessor
from worker.app.publisher import Publisher
from worker.app.testing import StubEventSink
from worker.core.identity import run_id_of, run_lock_key
from worker.core.index import OutboxStats
from worker.core.models import RunIntent
from worker.errors import KafkaUnavailableError, LeaseLostError, PostgresUnavailableError, StaleEpochError
from worker.runtime.gauges import refresh_outbox
from worker.runtime.metrics import Metrics

#: The wall clock of these tests, epoch seconds.
NOW = 1_780_000_000.0


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(m.render().decode()) for s in f.samples}


def _latency(m: Metrics) -> tuple[float, float]:
    s = _samples(m)
    return s[("sr_ready_latency_seconds_count", ())], s[("sr_ready_latency_seconds_sum", ())]


class AtPoint(CrashPoints):
    """Runs ``action`` when the run step passes ``point`` (instead of killing the process)."""

    def __init__(self, point: CrashPoint, action: Callable[[], None]) -> None:
        super().__init__()
        self._at, self._action = point, action

    def hit(self, point: CrashPoint) -> None:
        if point is self._at:
            self._action()


def _processor(world: World, metrics: Metrics, *, crash: CrashPoints | None = None) -> RunProcessor:
    """A processor that reports to ``metrics`` as the composition root wires it."""
    publisher = Publisher(world.sink, world.index, dlq_topic=DLQ, on_fact_published=metrics.ready_published,
                          on_ready_latency=metrics.ready_latency, wall_clock=lambda: NOW)
    base = world.processor(crash=crash) if crash is not None else world.processor()
    return base.replace(publisher=publisher, observer=metrics)


def _handle(world: World, processor: RunProcessor, intent: RunIntent, timestamp_ms: int | None) -> Action:
    record = dataclasses.replace(world.intent_record(intent), timestamp_ms=timestamp_ms)
    return processor.handle_intent(intent, record).action


# ----------------------------------------------------------------------------- READY latency
def test_ready_latency_runs_from_the_intent_timestamp_to_the_ready_ack() -> None:
    world, metrics = World(), Metrics()
    processor = _processor(world, metrics)
    intent = world.intent("lat")
    world.write_complete(intent)
    assert _handle(world, processor, intent, int((NOW - 1.5) * 1000)) is Action.READY
    count, total = _latency(metrics)
    assert count == 1 and total == pytest.approx(1.5)
    assert _samples(metrics)[("sr_ready_published_total", ())] == 1


def test_ready_latency_is_not_observed_without_a_usable_timestamp() -> None:
    world, metrics = World(), Metrics()
    processor = _processor(world, metrics)
    for name, timestamp_ms in (("none", None), ("zero", 0), ("missing", -1), ("future", int((NOW + 30) * 1000))):
        intent = world.intent(name)
        world.write_complete(intent)
        assert _handle(world, processor, intent, timestamp_ms) is Action.READY, name
    # Four READYs acknowledged, none with a latency that would be a guess.
    assert _samples(metrics)[("sr_ready_published_total", ())] == 4
    assert _latency(metrics) == (0, 0)


def test_only_a_ready_is_timed_not_the_status_events_of_the_same_record() -> None:
    world, metrics = World(), Metrics()
    processor = _processor(world, metrics)
    intent = world.intent("waits")  # no evidence: WAITING, a status event is acknowledged
    assert _handle(world, processor, intent, int((NOW - 2) * 1000)) is Action.WAITING
    assert world.sink.messages("sr.run-status")
    assert _latency(metrics) == (0, 0)


def test_a_ready_sent_later_by_the_outbox_flush_is_not_timed() -> None:
    world, metrics = World(), Metrics()
    processor = _processor(world, metrics)
    intent = world.intent("flushed")
    world.write_complete(intent)
    world.sink.fail_next(1)  # the READY's produce fails while the intent is handled
    with pytest.raises(KafkaUnavailableError):
        _handle(world, processor, intent, int((NOW - 1) * 1000))
    assert processor.flush_outbox() == 1  # on the side task: no intent record in hand
    assert world.ready_events()
    assert _samples(metrics)[("sr_ready_published_total", ())] == 1
    assert _latency(metrics) == (0, 0)


@dataclasses.dataclass(frozen=True)
class _Pub:
    """A stored publication, as the publisher sees it."""

    pub_key: str
    kind: str
    topic: str = "sr.ready"
    msg_key: bytes | None = None
    payload: bytes = b"fact"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


class _Marks:
    def mark_published(self, pub_key: str, partition: int, offset: int) -> None:
        """Nothing to record."""


def test_only_readys_acked_inside_the_block_are_timed_and_a_nested_block_restores() -> None:
    metrics = Metrics()
    publisher = Publisher(StubEventSink(), _Marks(), dlq_topic=DLQ, on_ready_latency=metrics.ready_latency,
                          wall_clock=lambda: NOW)
    ready, supersede = _Pub("k-ready", "READY"), _Pub("k-supersede", "SUPERSEDE")
    publisher.publish([ready])  # no record in hand
    with publisher.measuring_from(int((NOW - 2) * 1000)):
        with publisher.measuring_from(None):  # a record without a timestamp inside: nothing
            publisher.publish([ready])
        publisher.publish([supersede, ready])  # the outer record again: its READY only
    publisher.publish([ready])  # the block ended
    count, total = _latency(metrics)
    assert count == 1 and total == pytest.approx(2.0)


# ----------------------------------------------------------------------------- leases
def _bump_epoch(world: World, intent: RunIntent) -> Callable[[], None]:
    def bump() -> None:  # another worker took the lease over: a newer epoch in the index
        row = world.db.runs[run_id_of(intent)]
        world.db.runs[row.run_id] = dataclasses.replace(row, lease_epoch=row.lease_epoch + 1)
    return bump


def _drop_lock(world: World, intent: RunIntent) -> Callable[[], None]:
    def drop() -> None:  # the lease's session died: the advisory lock is gone
        del world.db.locks[run_lock_key(run_id_of(intent))]
    return drop


@pytest.mark.parametrize(("make", "error", "reason"), [
    (_bump_epoch, StaleEpochError, "fenced"),
    (_drop_lock, LeaseLostError, "lost"),
])
def test_a_step_that_loses_its_lease_is_counted_once_and_still_raises(
        make: Callable[[World, RunIntent], Callable[[], None]], error: type[Exception], reason: str) -> None:
    world, metrics = World(), Metrics()
    intent = world.intent(f"lease-{reason}")
    world.write_complete(intent)
    processor = _processor(world, metrics, crash=AtPoint(CrashPoint.AFTER_LEDGER_READY, make(world, intent)))
    with pytest.raises(error):
        _handle(world, processor, intent, None)
    s = _samples(metrics)
    assert s[("sr_lease_lost_total", (("reason", reason),))] == 1
    assert s[("sr_lease_lost_total", (("reason", "fenced" if reason == "lost" else "lost"),))] == 0
    assert s[("sr_ready_published_total", ())] == 0  # fail closed: nothing was published


def test_a_step_that_keeps_its_lease_counts_nothing() -> None:
    world, metrics = World(), Metrics()
    processor = _processor(world, metrics)
    intent = world.intent("kept")
    world.write_complete(intent)
    assert _handle(world, processor, intent, None) is Action.READY
    assert sum(v for (name, _), v in _samples(metrics).items() if name == "sr_lease_lost_total") == 0


# ----------------------------------------------------------------------------- outbox gauges
class _Outbox:
    def __init__(self, *answers: OutboxStats | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    def outbox_stats(self) -> OutboxStats:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_refresh_outbox_sets_both_gauges_from_one_query_and_keeps_them_on_failure() -> None:
    metrics = Metrics()
    source = _Outbox(OutboxStats(backlog=4, oldest_age_seconds=75.0), PostgresUnavailableError("down"),
                     OutboxStats(backlog=0, oldest_age_seconds=0.0))
    assert refresh_outbox(source, metrics) == OutboxStats(4, 75.0)
    assert source.calls == 1
    s: dict[Any, float] = _samples(metrics)
    assert (s[("sr_outbox_backlog", ())], s[("sr_outbox_oldest_age_seconds", ())]) == (4, 75.0)
    with pytest.raises(PostgresUnavailableError):
        refresh_outbox(source, metrics)
    s = _samples(metrics)
    assert (s[("sr_outbox_backlog", ())], s[("sr_outbox_oldest_age_seconds", ())]) == (4, 75.0)
    refresh_outbox(source, metrics)
    s = _samples(metrics)
    assert (s[("sr_outbox_backlog", ())], s[("sr_outbox_oldest_age_seconds", ())]) == (0, 0)
