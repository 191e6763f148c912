"""The worker's in-flight tracker: offsets advance only over a finished prefix per partition."""

from __future__ import annotations

from concurrent.futures import Future

from worker.app.ports import Record
from worker.runtime.inflight import InFlight


def _record(partition: int, offset: int, topic: str = "intents") -> Record:
    return Record(topic=topic, partition=partition, offset=offset, key=None, value=b"", headers=(), timestamp_ms=0)


def _future(result: bool | None = None) -> Future[bool]:
    future: Future[bool] = Future()
    if result is not None:
        future.set_result(result)
    return future


def test_offsets_advance_over_the_finished_prefix_only() -> None:
    inflight = InFlight()
    futures = {offset: _future() for offset in (10, 11, 12)}
    for offset, future in futures.items():
        inflight.add(_record(0, offset), future)
    other = _future()
    inflight.add(_record(1, 5), other)

    futures[11].set_result(True)  # finished, but 10 is still running
    inflight.reap([futures[11]])
    assert inflight.advance() == []
    futures[10].set_result(True)
    inflight.reap([futures[10]])
    assert inflight.advance() == [("intents", 0, 12)]  # 10 and 11 done: next is 12
    assert inflight.advance() == []  # nothing new
    other.set_result(True)
    futures[12].set_result(True)
    inflight.reap([other, futures[12]])
    assert sorted(inflight.advance()) == [("intents", 0, 13), ("intents", 1, 6)]
    assert len(inflight) == 0


def test_a_record_left_unfinished_by_a_stop_blocks_its_partition() -> None:
    """``Worker._handle`` returns False when the worker stopped before the record's effects were
    durable: its offset must never be stored, nor any later one of that partition."""
    inflight = InFlight()
    stopped, later = _future(False), _future(True)
    inflight.add(_record(0, 1), stopped)
    inflight.add(_record(0, 2), later)
    inflight.reap([stopped, later])
    assert inflight.advance() == []
    assert len(inflight) == 0


def test_forgetting_revoked_partitions_drops_their_state_only() -> None:
    inflight = InFlight()
    running, done_elsewhere, mine = _future(), _future(True), _future(True)
    inflight.add(_record(0, 1), running)
    inflight.add(_record(0, 2), done_elsewhere)
    inflight.add(_record(1, 7), mine)
    assert inflight.of({("intents", 0)}) == [running, done_elsewhere]
    inflight.reap([done_elsewhere])
    inflight.forget({("intents", 0)})
    assert len(inflight) == 1 and inflight.of({("intents", 0)}) == []
    running.set_result(True)
    inflight.reap([running])  # finishes after the revoke: ignored, never stored
    inflight.reap([mine])
    assert inflight.advance() == [("intents", 1, 8)]
    # The partition can come back later and is tracked from scratch.
    again = _future(True)
    inflight.add(_record(0, 3), again)
    inflight.reap([again])
    assert inflight.advance() == [("intents", 0, 4)]


def test_topics_are_tracked_apart() -> None:
    inflight = InFlight()
    intent, trigger = _future(True), _future()
    inflight.add(_record(0, 4, topic="intents"), intent)
    inflight.add(_record(0, 4, topic="triggers"), trigger)
    inflight.reap([intent])
    assert inflight.advance() == [("intents", 0, 5)]


def test_completions_are_collected_from_the_queue_as_they_finish() -> None:
    inflight = InFlight()
    first, second = _future(), _future()
    inflight.add(_record(0, 0), first)
    inflight.add(_record(0, 1), second)
    inflight.reap_completed()  # nothing finished yet: returns at once
    assert len(inflight) == 2 and inflight.advance() == []
    second.set_result(True)  # the done-callback queues it (a pool thread would)
    first.set_result(True)
    inflight.reap_completed(timeout=1.0)
    assert len(inflight) == 0
    assert inflight.advance() == [("intents", 0, 2)]
