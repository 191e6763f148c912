"""The READY follower (contract §9): only verified facts reach the handler.

It reads ``sr.ready``, decodes each event (both framings, every schema version SR accepts),
drops re-sends and stale history (:class:`~worker.core.follow.FactTracker`), fetches the facts
view a READY names, checks ``sha256 == facts_view_hash`` and that it is the run's, and only
then hands the fact over. Two modes:

* **offset mode** (no ``group``): every partition from ``start`` (``"beginning"``, ``"end"`` or
  a time); nothing is committed. :meth:`ReadyFollower.facts` yields the facts; with
  ``until_end`` it stops once the topic is drained.
* **group mode** (``group="my-service"``): a consumer group; :meth:`ReadyFollower.run` calls
  the handler and commits a record's offset only after the handler returned, so a crash
  re-delivers what was not handled (the handler must be idempotent; facts are keyed by
  ``(run_id, facts_view_hash)``).

A READY whose facts view does not verify is never handed over: it raises
:class:`~worker.errors.FactsViewMismatchError` (``on_mismatch="raise"``, the default) or is
reported to ``on_mismatch`` and skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

from worker.adapters.avro import AvroCodec
from worker.adapters.kafka import IntakeConsumer, TopicReader
from worker.adapters.s3 import ObjectStore
from worker.app.ports import Record
from worker.core.facts import MAX_FACTS_BYTES, FactsView, parse_facts_view
from worker.core.follow import Decision, FactTracker
from worker.core.keys import parse_s3_uri
from worker.core.models import EventType, ReadyEvent
from worker.errors import (
    ConfigError,
    DecodeError,
    FactsViewMismatchError,
    InputError,
    IntegrityError,
    ObjectNotFoundError,
    UnsafeKeyError,
)
from worker.settings import Settings

__all__ = ["Mismatch", "ReadyFollower", "VerifiedFact", "consume_committing", "drain", "verify_facts_view"]

#: Called with each READY whose facts view failed verification, and why.
Mismatch = Callable[[ReadyEvent, FactsViewMismatchError], None]


@dataclass(frozen=True)
class VerifiedFact:
    """One change of a run's current fact.

    ``event.event_type`` is READY (``facts_view`` verified: its bytes hash to
    ``event.facts_view_hash``) or REVOKED (``facts_view`` is None: stop reading that view).
    ``record`` says where the event was read (topic, partition, offset).
    """

    event: ReadyEvent
    facts_view: FactsView | None
    record: Record

    @property
    def run_id(self) -> str:
        """The run this fact is about."""
        return self.event.run_id


def drain(reader: TopicReader, *, until_end: bool, idle_timeout: float = 2.0, max_records: int = 500,
          stop: Callable[[], bool] = lambda: False) -> Iterator[Record]:
    """Records of an open reader as they arrive; with ``until_end``, stop once nothing arrived
    for ``idle_timeout`` seconds and every partition is at its end (or after three such idle
    periods: Tansu's watermarks can lag, contract §1). Also stops when ``stop()`` is true.

    Raises:
        KafkaUnavailableError / KafkaFatalError: from the reader.
    """
    idle_since: float | None = None
    idle_rounds = 0
    while not stop():
        records = reader.poll(max_records, 0.2)
        if records:
            idle_since, idle_rounds = None, 0
            yield from records
            continue
        now = time.monotonic()
        idle_since = now if idle_since is None else idle_since
        if until_end and now - idle_since >= idle_timeout:
            idle_rounds += 1
            if reader.at_end() or idle_rounds >= 3:
                return
            idle_since = now


def consume_committing(consumer: IntakeConsumer, handle: Callable[[Record], None], *,
                       stop: Callable[[], bool] = lambda: False, poll_timeout: float = 0.5,
                       max_records: int = 500) -> None:
    """Group mode: ``handle`` each record, then store its offset; commit after each batch. A
    record's offset is committed only after ``handle`` returned for it. Returns when ``stop()``
    is true between polls.

    Raises:
        whatever ``handle`` raises (nothing past the failing record is stored); KafkaUnavailableError.
    """
    while not stop():
        records = consumer.poll_batch(max_records, poll_timeout)
        for record in records:
            handle(record)
            consumer.store(record.topic, record.partition, record.offset + 1)
        if records:
            consumer.commit()


def verify_facts_view(store: ObjectStore, event: ReadyEvent) -> FactsView:
    """Fetch the facts view ``event`` names (at most 4 MiB) and check it is exactly that view.

    Raises:
        FactsViewMismatchError: missing, not hashing to ``facts_view_hash``, not canonical,
            or the view of another run.
        S3UnavailableError / S3AccessError: the store cannot be read (retry later).
    """
    what = f"run {event.run_id}: facts view {event.facts_view_hash}"
    try:
        location = parse_s3_uri(event.facts_view_uri)
        data = store.get(location.bucket, location.prefix, max_bytes=MAX_FACTS_BYTES)
        view = parse_facts_view(data, expected_hash=event.facts_view_hash)
    except ObjectNotFoundError as exc:
        raise FactsViewMismatchError(f"{what} does not exist at {event.facts_view_uri}") from exc
    except (IntegrityError, UnsafeKeyError) as exc:
        raise FactsViewMismatchError(f"{what} does not verify: {exc}") from exc
    if view.run_id != event.run_id:
        raise FactsViewMismatchError(f"{what} describes run {view.run_id}")
    return view


class ReadyFollower:
    """Follows ``sr.ready`` and yields :class:`VerifiedFact` values (see the module docstring).

    Args:
        settings: SR's settings (Kafka, S3, topic names, framing), e.g. ``load_settings()``.
        start: offset mode only: ``"beginning"``, ``"end"`` or epoch milliseconds.
        group: a consumer-group id for group mode (commits after the handler), else None.
        until_end: offset mode only: stop once every partition is drained.
        idle_timeout: seconds without a record before ``until_end`` checks for the end.
        on_mismatch: ``"raise"`` or a callback; a READY that fails verification is never yielded.
        max_records: records per poll.

    No network I/O until ``__enter__``.

    Raises:
        ConfigError: ``start`` or ``until_end`` given in group mode.
    """

    def __init__(self, settings: Settings, *, start: str | int = "beginning", group: str | None = None,
                 until_end: bool = False, idle_timeout: float = 2.0,
                 on_mismatch: Literal["raise"] | Mismatch = "raise", max_records: int = 500) -> None:
        if group is not None and (start != "beginning" or until_end):
            raise ConfigError("group mode resumes from the group's committed offsets: no start or until_end")
        self._settings = settings
        self._start = start
        self._group = group
        self._until_end = until_end
        self._idle = idle_timeout
        self._on_mismatch = on_mismatch
        self._max = max_records
        self.tracker = FactTracker()
        self.skipped: dict[Decision, int] = {d: 0 for d in Decision}
        self._stack = ExitStack()
        self._reader: TopicReader | None = None
        self._consumer: IntakeConsumer | None = None
        self._store: ObjectStore | None = None
        self._codec: AvroCodec | None = None

    def __enter__(self) -> Self:
        from worker.runtime.compose import group_consumer, kafka_config, make_codec, object_store

        try:
            self._codec = make_codec(self._settings)
            self._store = self._stack.enter_context(object_store(self._settings))
            topic = self._settings.topics.ready
            if self._group is None:
                self._reader = self._stack.enter_context(
                    TopicReader(kafka_config(self._settings), [topic], start=self._start))
            else:
                self._consumer = self._stack.enter_context(
                    group_consumer(self._settings, group_id=self._group, topics=[topic]))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.close()

    # ------------------------------------------------------------------ offset mode
    def facts(self) -> Iterator[VerifiedFact]:
        """Yield each change of a run's current fact (offset mode).

        Raises:
            FactsViewMismatchError: a READY's facts view does not verify (``on_mismatch="raise"``).
            KafkaUnavailableError / S3UnavailableError: a server cannot be reached.
            ConfigError: called in group mode, or outside ``with``.
        """
        if self._reader is None:
            raise ConfigError("facts() is the offset mode: open the follower with 'with' and no group")
        for record in drain(self._reader, until_end=self._until_end, idle_timeout=self._idle,
                            max_records=self._max):
            fact = self._judge(record)
            if fact is not None:
                yield fact

    # ------------------------------------------------------------------ group mode
    def run(self, handler: Callable[[VerifiedFact], None], *, stop: Callable[[], bool] = lambda: False,
            poll_timeout: float = 0.5) -> None:
        """Hand every change to ``handler``; commit each record's offset only after the handler
        returned for it (group mode). Returns when ``stop()`` is true between polls.

        Raises:
            whatever ``handler`` raises (nothing of that batch is committed past the failing
            record); FactsViewMismatchError as in :meth:`facts`; KafkaUnavailableError.
        """
        if self._consumer is None:
            raise ConfigError("run() is the group mode: open the follower with 'with' and a group")

        def handle(record: Record) -> None:
            fact = self._judge(record)
            if fact is not None:
                handler(fact)

        consume_committing(self._consumer, handle, stop=stop, poll_timeout=poll_timeout, max_records=self._max)

    # ------------------------------------------------------------------ one record
    def _judge(self, record: Record) -> VerifiedFact | None:
        if self._codec is None or self._store is None:
            raise ConfigError("the follower is not open")
        try:
            event = self._codec.decode_ready(record.value or b"")
        except InputError as exc:  # DecodeError, UnknownSchemaError, MessageTooLargeError...
            # Not a ReadyEvent SR could have written: fail closed, say where.
            raise DecodeError(f"{record.topic}[{record.partition}]@{record.offset} is not a ReadyEvent: {exc}") from exc
        decision = self.tracker.offer(event)
        if decision is not Decision.HAND:
            self.skipped[decision] += 1
            return None
        if event.event_type is EventType.REVOKED:
            return VerifiedFact(event, None, record)
        try:
            view = verify_facts_view(self._store, event)
        except FactsViewMismatchError as exc:
            self.tracker.reject(event)
            if self._on_mismatch == "raise":
                raise
            self._on_mismatch(event, exc)
            return None
        return VerifiedFact(event, view, record)
