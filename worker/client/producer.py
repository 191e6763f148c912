"""Submitting intents (contract §9): keyed by run_id, in the framing SR reads, and signed
when a :class:`~worker.signing.Signer` is given (contract §10: with ``SR_SIGNING_KEYS`` set,
SR rejects an intent not signed by a key of its own tenant)."""

from __future__ import annotations

from collections.abc import Iterable

from worker.core.identity import run_id_of
from worker.core.models import RunIntent
from worker.core.signatures import SIGNATURE_HEADER
from worker.settings import Settings
from worker.signing import Signer

__all__ = ["submit", "submit_many"]


def submit(intent: RunIntent, settings: Settings, *, timeout: float = 60.0, signer: Signer | None = None) -> str:
    """Publish one intent to the intents topic and wait for the broker's ack; its run_id.

    With ``signer``, the message carries an ``sr-signature`` header over its exact value
    bytes (load one with :func:`worker.signing.signer_from` or :meth:`Signer.from_file`).

    Raises:
        EncodeError / MessageTooLargeError: the intent cannot be encoded.
        KafkaUnavailableError: no ack within ``timeout`` seconds.
    """
    return submit_many([intent], settings, timeout=timeout, signer=signer)[0]


def submit_many(intents: Iterable[RunIntent], settings: Settings, *, timeout: float = 60.0,
                signer: Signer | None = None) -> list[str]:
    """Publish intents (all encoded, and signed, before any is sent), keyed by run_id so every
    message of a run lands on one partition (murmur2, contract §2); their run_ids, in order.

    Raises:
        as :func:`submit`.
    """
    from worker.core.vocabulary import value_subject
    from worker.runtime.compose import event_producer, make_codec

    codec = make_codec(settings)
    subject = value_subject(settings.topics.intents)
    encoded = [(run_id_of(i), codec.encode_intent(i, subject=subject)) for i in intents]
    # Signed here, over the very bytes handed to the producer: SR checks the value as consumed.
    signed = [(run_id, value, None if signer is None else [(SIGNATURE_HEADER, signer.signature_header(value))])
              for run_id, value in encoded]
    with event_producer(settings) as producer:
        futures = [producer.send(settings.topics.intents, key=run_id.encode(), value=value, headers=headers)
                   for run_id, value, headers in signed]
        for future in futures:
            future.result(timeout)
    return [run_id for run_id, _ in encoded]
