"""librdkafka errors → SR's error hierarchy, decided once for every Kafka client.

A retriable or transport fault becomes :class:`~worker.errors.KafkaUnavailableError` (callers
retry with backoff), anything else :class:`~worker.errors.KafkaFatalError`. The code sets below
are the only place that says which broker answers are transient, which commit refusals mean
"the group moved on", and which store refusals mean "not our partition any more".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from confluent_kafka import KafkaError, KafkaException

from worker.errors import KafkaFatalError, KafkaUnavailableError

__all__ = [
    "GROUP_MOVED_ON",
    "NOT_OWNED",
    "TRANSIENT_CODES",
    "TopicRefusedError",
    "describe",
    "is_transient",
    "one_line",
    "translate",
    "translate_exception",
]

#: Codes that are transient whatever librdkafka's ``retriable()`` flag says.
TRANSIENT_CODES: frozenset[int] = frozenset({
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
})

#: Commit refusals that mean "the group moved on without us", not a broken client.
GROUP_MOVED_ON: frozenset[int] = frozenset({
    KafkaError._ASSIGNMENT_LOST,
    KafkaError._STATE,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError.STALE_MEMBER_EPOCH,
    KafkaError.FENCED_MEMBER_EPOCH,
})

#: Offset-store refusals for a partition this member no longer owns (its new owner redoes it).
NOT_OWNED: frozenset[int] = frozenset({
    KafkaError._STATE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
})

_WHITESPACE = re.compile(r"\s+")


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return _WHITESPACE.sub(" ", text).strip()


def describe(err: KafkaError) -> str:
    """The broker's or client's reason in one line, e.g. ``"Replication factor ... (INVALID_REPLICATION_FACTOR)"``."""
    reason = one_line(err.str() or "")
    name = err.name()
    return f"{reason} ({name})" if name and name not in reason else reason or name


def is_transient(err: KafkaError) -> bool:
    """True when retrying later may succeed (a transport fault, a timeout, a moving leader)."""
    return err.code() in TRANSIENT_CODES or (err.retriable() and not err.fatal())


def translate(err: KafkaError, what: str) -> KafkaUnavailableError | KafkaFatalError:
    """Map a librdkafka error to SR's retryable/permanent Kafka errors; ``what`` prefixes the message."""
    if is_transient(err):
        return KafkaUnavailableError(f"{what}: {err.str()}")
    return KafkaFatalError(f"{what}: {err.str()}")


def translate_exception(exc: KafkaException, what: str) -> KafkaUnavailableError | KafkaFatalError:
    """:func:`translate` for a raised :class:`KafkaException` (whose first argument is the error)."""
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError):
        return translate(err, what)
    return KafkaFatalError(f"{what}: {one_line(str(exc))}")


class TopicRefusedError(KafkaFatalError):
    """The broker refused to create one or more topics (replication factor larger than the
    cluster, a policy violation, missing authorization, an invalid topic config...).

    The message is one line naming each refused topic and the broker's reason. ``refusals``
    maps topic → reason; ``created`` / ``existed`` name what the same request did achieve.
    """

    code = "TOPIC_REFUSED"

    def __init__(self, refusals: Mapping[str, str], *, created: Sequence[str] = (),
                 existed: Sequence[str] = ()) -> None:
        self.refusals = dict(refusals)
        self.created = list(created)
        self.existed = list(existed)
        by_reason: dict[str, list[str]] = {}
        for topic, reason in self.refusals.items():
            by_reason.setdefault(reason, []).append(topic)
        parts = [f"{'topic' if len(topics) == 1 else 'topics'} {', '.join(topics)}: {reason}"
                 for reason, topics in by_reason.items()]
        super().__init__(one_line("Kafka refused to create " + "; ".join(parts)))
