"""Submitting intents (contract §9): keyed by run_id, in the framing SR reads."""

from __future__ import annotations

from collections.abc import Iterable

from worker.core.identity import run_id_of
from worker.core.models import RunIntent
from worker.settings import Settings

__all__ = ["submit", "submit_many"]


def submit(intent: RunIntent, settings: Settings, *, timeout: float = 60.0) -> str:
    """Publish one intent to the intents topic and wait for the broker's ack; its run_id.

    Raises:
        EncodeError / MessageTooLargeError: the intent cannot be encoded.
        KafkaUnavailableError: no ack within ``timeout`` seconds.
    """
    return submit_many([intent], settings, timeout=timeout)[0]


def submit_many(intents: Iterable[RunIntent], settings: Settings, *, timeout: float = 60.0) -> list[str]:
    """Publish intents (all encoded before any is sent), keyed by run_id so every message of a
    run lands on one partition (murmur2, contract §2); their run_ids, in order.

    Raises:
        as :func:`submit`.
    """
    from worker.core.vocabulary import value_subject
    from worker.runtime.compose import event_producer, make_codec

    codec = make_codec(settings)
    subject = value_subject(settings.topics.intents)
    encoded = [(run_id_of(i), codec.encode_intent(i, subject=subject)) for i in intents]
    with event_producer(settings) as producer:
        futures = [(run_id, producer.send(settings.topics.intents, key=run_id.encode(), value=value))
                   for run_id, value in encoded]
        for _run_id, future in futures:
            future.result(timeout)
    return [run_id for run_id, _ in encoded]
