"""Fast Kafka clients of the benchmarks: an intent publisher and a topic watcher (raw confluent-kafka)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tests.harness.servers import Servers

if TYPE_CHECKING:
    from worker.core.models import RunIntent

__all__ = ["IntentPublisher", "TopicWatcher"]


class IntentPublisher:
    """A fast confluent-kafka producer of encoded intents; records publish times by run_id."""

    def __init__(self, servers: Servers, topic: str) -> None:
        from confluent_kafka import Producer

        from worker.adapters.avro import AvroCodec

        self.topic = topic
        self.codec = AvroCodec()
        self._producer = Producer({"bootstrap.servers": servers.require_kafka(), "linger.ms": 1,
                                   "acks": "all", "enable.idempotence": True,
                                   "queue.buffering.max.messages": 200_000})
        self.delivered: dict[int, int] = {}  # partition -> highest offset delivered
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def _on_delivery(self, err: Any, msg: Any) -> None:
        with self._lock:
            if err is not None:
                self.errors.append(str(err))
                return
            part, off = msg.partition(), msg.offset()
            if off > self.delivered.get(part, -1):
                self.delivered[part] = off

    def send(self, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def encode(self, intent: RunIntent) -> tuple[bytes, bytes]:
        from worker.core.identity import run_id_of

        return run_id_of(intent).encode(), self.codec.encode_intent(intent)

    def flush(self, timeout: float = 120.0) -> None:
        left = self._producer.flush(timeout)
        if left or self.errors:
            raise RuntimeError(f"producer: {left} undelivered, errors {self.errors[:3]}")

    def end_offsets(self) -> dict[int, int]:
        """partition -> next offset after what this publisher delivered (Tansu's hwm is unreliable)."""
        with self._lock:
            return {p: o + 1 for p, o in self.delivered.items()}


class TopicWatcher:
    """Reads a topic from the beginning on a thread; first arrival time (monotonic) per key."""

    def __init__(self, servers: Servers, topic: str) -> None:
        self.topic = topic
        self.first_seen: dict[bytes, float] = {}
        self.count = 0
        self._servers = servers
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"watch-{topic}", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> TopicWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self._servers.require_kafka(),
                             "group.id": f"bench-watch-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                             "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10,
                             "enable.partition.eof": False})
        try:
            md = consumer.list_topics(self.topic, timeout=15)
            parts = sorted(md.topics[self.topic].partitions)
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
            while not self._stop.is_set():
                msg = consumer.poll(0.05)
                if msg is None or msg.error() is not None:
                    continue
                now = time.monotonic()
                key = msg.key() or b""
                with self._cond:
                    self.count += 1
                    self.first_seen.setdefault(key, now)
                    self._cond.notify_all()
        except BaseException as exc:
            self.error = exc
        finally:
            consumer.close()

    def distinct(self) -> int:
        with self._cond:
            return len(self.first_seen)

    def wait_distinct(self, n: int, timeout: float, *, alive: Callable[[], bool] | None = None) -> bool:
        """Wait until ``n`` distinct keys were seen; False on timeout (or ``alive()`` false)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.first_seen) < n:
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None:
                    return False
                if alive is not None and not alive():
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def times(self) -> dict[bytes, float]:
        with self._cond:
            return dict(self.first_seen)
