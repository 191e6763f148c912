"""Decode a consumed record and hand it to the application layer: the runtime's one routing rule.

Records from the triggers topic are ``RunTrigger``, from the engine-results topic
``EngineResult``; everything else consumed is a ``RunIntent``. The codec enforces the message
size cap and schema (a poison record raises an :class:`~worker.errors.InputError`, which the
worker loop dead-letters).
"""

from __future__ import annotations

from worker.app.outcomes import Outcome
from worker.app.ports import Record
from worker.app.processor import RunProcessor

__all__ = ["dispatch"]


def dispatch(processor: RunProcessor, record: Record, *, triggers_topic: str,
             results_topic: str | None = None) -> Outcome:
    """Decode ``record`` and run its handler.

    Raises:
        InputError: not a valid message (DecodeError, MessageTooLargeError, ...).
        RetryableError: a server is unavailable.
    """
    codec = processor.codec
    if record.topic == triggers_topic:
        return processor.handle_trigger(codec.decode_trigger(record.value or b""), record)
    if record.topic == results_topic:
        return processor.handle_engine_result(codec.decode_engine_result(record.value or b""), record)
    return processor.handle_intent(codec.decode_intent(record.value or b""), record)
