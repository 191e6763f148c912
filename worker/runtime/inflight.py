"""The worker's in-flight window: which polled records are still running, per partition."""

from __future__ import annotations

import queue
from collections import defaultdict, deque
from collections.abc import Iterable
from concurrent.futures import Future

from worker.app.ports import Record

__all__ = ["InFlight"]


class InFlight:
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
