"""Connection settings shared by every SR Kafka client, turned into librdkafka property dicts.

One :class:`KafkaConfig` feeds the producer, the intake consumer, the topic admin and the
partition readers, so an operator's SASL/TLS settings (``SR_KAFKA_*`` → ``client_extra``)
reach every client the same way. The pass-through properties are applied *last*: SR's own
defaults never override a security setting the operator chose.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["LIBRDKAFKA_LOGGER", "KafkaConfig", "to_ms"]

#: Where librdkafka's own log lines go (instead of ``%3|...`` lines on stderr): every SR client
#: hands this logger to librdkafka, so they come out through SR's logging (JSON lines). The
#: client delivers them from its poll calls. Levels follow syslog: 3 → ERROR, 4 → WARNING,
#: 5/6 → INFO, 7 (``SR_KAFKA_DEBUG=...`` contexts) → DEBUG.
LIBRDKAFKA_LOGGER: Final = logging.getLogger("sr.librdkafka")
# Without a handler of its own, Python's last-resort handler would print these lines as bare
# text wherever SR's logging is not configured (a library user); configured handlers get them.
LIBRDKAFKA_LOGGER.addHandler(logging.NullHandler())

# Pass-through property names whose values must never appear in a message or a log line.
_SECRET_WORDS = ("password", "secret", "token", "jaas", "key.pem", "keystore")


def to_ms(seconds: float) -> int:
    """Seconds (SR's unit everywhere) to librdkafka milliseconds, at least 1."""
    return max(1, round(seconds * 1000))


@dataclass(frozen=True)
class KafkaConfig:
    """Connection settings shared by SR's Kafka clients.

    ``client_extra`` holds librdkafka pass-through properties (``security.protocol``,
    ``sasl.mechanism``, ``sasl.username``, ``sasl.password``, ``ssl.ca.location``, ...), built
    from the ``SR_KAFKA_*`` environment by :func:`worker.settings.kafka_passthrough`.
    Times are in seconds: ``session_timeout`` / ``max_poll_interval`` (consumer group),
    ``delivery_timeout`` (producer), ``fetch_wait_max`` (longest a consumer fetch waits for data).
    ``max_message_bytes`` is the largest message SR produces or must be able to fetch.
    ``client_id`` is every client's ``client.id`` (broker logs, quotas, ACL audit);
    ``group_instance_id`` makes the intake consumer a static group member (KIP-345).
    """

    bootstrap: str
    client_id: str = "sr"
    group_instance_id: str | None = None
    client_extra: Mapping[str, str] = field(default_factory=dict)
    session_timeout: float = 10.0
    max_poll_interval: float = 300.0
    delivery_timeout: float = 30.0
    max_message_bytes: int = 16 * 1024 * 1024
    fetch_wait_max: float = 0.1

    def base(self) -> dict[str, Any]:
        """librdkafka properties common to every client, pass-through properties included."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "client.id": self.client_id,
            "logger": LIBRDKAFKA_LOGGER,
            "socket.keepalive.enable": True,
            "reconnect.backoff.max.ms": 2000,
        }
        conf.update(self.client_extra)
        return conf

    def redact(self, text: str) -> str:
        """``text`` with the value of every secret pass-through property (SASL password,
        OAuth token, JAAS config, PEM key...) replaced by ``***``; for error messages."""
        for name, value in self.client_extra.items():
            if value and len(value) >= 3 and any(word in name.lower() for word in _SECRET_WORDS):
                text = text.replace(value, "***")
        return text

    def client_conf(self, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`base`, then a client's own ``defaults``, then the pass-through properties again.

        The second application of ``client_extra`` is deliberate: an operator-set property
        wins over a client default of the same name (e.g. a ``fetch.wait.max.ms`` tuned for
        a real cluster, or ``security.protocol``).
        """
        conf = self.base()
        conf.update(defaults)
        conf.update(self.client_extra)
        return conf
