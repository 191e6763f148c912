"""confluent-kafka messages → the plain :class:`~worker.app.ports.Record` the application sees."""

from __future__ import annotations

from typing import Any, cast

from confluent_kafka import Message

from worker.app.ports import Record

__all__ = ["record_from_message"]


def record_from_message(msg: Message) -> Record:
    """Copy a confluent-kafka message into a :class:`~worker.app.ports.Record`.

    A header with no value becomes ``b""``; the timestamp is ``None`` when the broker gave none.
    """
    raw_headers: list[tuple[str, Any]] = list(cast(Any, msg.headers()) or [])
    headers = tuple((str(k), bytes(v) if v is not None else b"") for k, v in raw_headers)
    ts_type, ts = msg.timestamp()
    return Record(
        topic=str(msg.topic()),
        partition=int(msg.partition() or 0),
        offset=int(msg.offset() or 0),
        key=msg.key(),
        value=msg.value(),
        headers=headers,
        timestamp_ms=ts if ts_type else None,
    )
