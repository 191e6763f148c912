"""A stub broker: the ``EventSink`` and ``PartitionReader`` ports in memory."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass

from worker.app.ports import Delivered, Headers, Record
from worker.errors import KafkaUnavailableError

__all__ = ["SentMessage", "StubEventSink"]


# --------------------------------------------------------------------------- kafka
@dataclass(frozen=True)
class SentMessage:
    """One message the :class:`StubEventSink` acknowledged."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str | None:
        """A header's value as text, if present."""
        for key, value in self.headers:
            if key == name:
                return value.decode()
        return None

    def as_record(self) -> Record:
        """The message as a consumer would see it."""
        return Record(self.topic, self.partition, self.offset, self.key, self.value, self.headers, None)


class StubEventSink:
    """A broker stand-in: acknowledges every message at once and keeps it (implements ``EventSink``).

    Partition = crc32-free stable choice (sum of key bytes modulo ``partitions``), so one key
    always lands on one partition and per-key order is observable.
    """

    def __init__(self, partitions: int = 4) -> None:
        self.partitions = partitions
        self.sent: list[SentMessage] = []
        self._offsets: Counter[tuple[str, int]] = Counter()
        self._failures: list[BaseException] = []
        self._lock = threading.Lock()

    def fail_next(self, times: int = 1, error: BaseException | None = None) -> None:
        """Fail the next ``times`` deliveries (default: KafkaUnavailableError)."""
        with self._lock:
            self._failures.extend([error or KafkaUnavailableError("stub broker unavailable")] * times)

    def messages(self, topic: str) -> list[SentMessage]:
        """What was acknowledged on ``topic``, in order."""
        with self._lock:
            return [m for m in self.sent if m.topic == topic]

    def send(self, topic: str, *, key: bytes | None, value: bytes, headers: Headers | None = None) -> Future[Delivered]:
        """Acknowledge at once (or fail, if told to)."""
        future: Future[Delivered] = Future()
        with self._lock:
            if self._failures:
                future.set_exception(self._failures.pop(0))
                return future
            partition = sum(key or b"") % self.partitions
            offset = self._offsets[(topic, partition)]
            self._offsets[(topic, partition)] += 1
            encoded = tuple((k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in (headers or ()))
            self.sent.append(SentMessage(topic, partition, offset, key, bytes(value), encoded))
        future.set_result(Delivered(topic, partition, offset))
        return future

    def send_and_wait(self, topic: str, *, key: bytes | None, value: bytes, headers: Headers | None = None,
                      timeout: float | None = None) -> Delivered:
        """:meth:`send`, resolved."""
        return self.send(topic, key=key, value=value, headers=headers).result()

    def read_slice(self, topic: str, partition: int, *, from_offset: int | None = None,
                   from_time_ms: int | None = None, to_offset: int | None = None,
                   idle_timeout: float = 5.0) -> Iterator[Record]:
        """What was sent to ``topic[partition]`` (implements ``PartitionReader``)."""
        for message in self.messages(topic):
            if message.partition != partition or (from_offset is not None and message.offset < from_offset):
                continue
            if to_offset is not None and message.offset >= to_offset:
                return
            yield message.as_record()
