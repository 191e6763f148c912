"""The idempotent event producer (``enable.idempotence``, ``acks=all``) with delivery futures.

:meth:`EventProducer.send` returns a future resolved by the delivery report; a background
thread serves delivery callbacks so many callers can wait concurrently.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from types import TracebackType

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from worker.adapters.kafka.config import KafkaConfig, to_ms
from worker.adapters.kafka.errors import translate, translate_exception
from worker.app.ports import Delivered, Headers
from worker.errors import KafkaFatalError, KafkaUnavailableError

__all__ = ["EventProducer", "Headers"]

_QUEUE_FULL_ATTEMPTS = 100  # x 0.1 s of draining before a full local queue counts as "broker away"


class EventProducer:
    """Idempotent producer with per-message delivery futures (implements :class:`~worker.app.ports.EventSink`).

    No I/O in ``__init__``; the client is created in ``__enter__`` and flushed in ``__exit__``.
    ``linger`` is in seconds.
    """

    def __init__(self, config: KafkaConfig, *, linger: float = 0.005) -> None:
        self._config = config
        self._linger = linger
        self._producer: Producer | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def __enter__(self) -> EventProducer:
        conf = self._config.client_conf({
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": to_ms(self._linger),
            "delivery.timeout.ms": to_ms(self._config.delivery_timeout),
            "message.max.bytes": self._config.max_message_bytes + 64 * 1024,
            "compression.type": "none",
            # Java's default partitioner for keyed records (contract §2): a run_id lands where a
            # Java producer puts it, so per-run order holds across SR and other services.
            "partitioner": "murmur2_random",
        })
        try:
            self._producer = Producer(conf)
        except KafkaException as exc:
            raise KafkaFatalError(f"cannot create producer: {exc}") from exc
        self._stop.clear()
        self._poller = threading.Thread(target=self._serve_callbacks, name="sr-producer-poll", daemon=True)
        self._poller.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        """Flush outstanding messages (up to ``timeout`` seconds) and stop the poll thread."""
        if self._producer is None:
            return
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout)
        self._producer.flush(timeout)
        self._producer = None

    def _serve_callbacks(self) -> None:
        while not self._stop.is_set():
            producer = self._producer
            if producer is None:
                return
            producer.poll(0.05)

    def send(self, topic: str, *, key: bytes | None, value: bytes, headers: Headers | None = None) -> Future[Delivered]:
        """Queue one message; the future resolves when the broker acknowledged it (acks=all).

        Raises:
            KafkaUnavailableError: the local queue stayed full (broker unreachable).
            KafkaFatalError: the message was refused outright (e.g. too large).
        """
        producer = self._require()
        fut: Future[Delivered] = Future()

        def _on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                fut.set_exception(translate(err, f"delivery to {topic} failed"))
            else:
                fut.set_result(Delivered(str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)))

        for _attempt in range(_QUEUE_FULL_ATTEMPTS):
            try:
                producer.produce(topic, value=value, key=key, headers=list(headers or ()),
                                 on_delivery=_on_delivery)
                return fut
            except BufferError:
                producer.poll(0.1)  # local queue full: let deliveries drain, then try again
            except KafkaException as exc:
                raise translate_exception(exc, f"produce to {topic} refused") from exc
        raise KafkaUnavailableError(f"producer queue for {topic} stayed full")

    def send_and_wait(
        self, topic: str, *, key: bytes | None, value: bytes, headers: Headers | None = None,
        timeout: float | None = None,
    ) -> Delivered:
        """:meth:`send` and block until acknowledged (``timeout`` in seconds).

        Raises:
            KafkaUnavailableError: not acknowledged within ``timeout`` (default: the delivery timeout).
            KafkaFatalError: permanently refused.
        """
        fut = self.send(topic, key=key, value=value, headers=headers)
        wait = timeout if timeout is not None else self._config.delivery_timeout + 5.0
        try:
            return fut.result(wait)
        except TimeoutError as exc:
            raise KafkaUnavailableError(f"no delivery report from {topic} within {wait:.0f}s") from exc

    def flush(self, timeout: float = 10.0) -> int:
        """Wait up to ``timeout`` seconds for outstanding deliveries; returns how many are still queued."""
        return int(self._require().flush(timeout))

    def _require(self) -> Producer:
        if self._producer is None:
            raise KafkaFatalError("producer is not open (use it as a context manager)")
        return self._producer
