"""Structured JSON logs: one object per line, with run context on every run line.

Use :func:`run_logger` to get a logger bound to ``run_id`` (and tenant/epoch when known);
everything it emits carries those fields. Secrets never reach a log line: settings hold them
as ``SecretStr`` and only adapters reveal them to their clients.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

_RESERVED = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None)).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object: ts, level, logger, message, then any context fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(_context(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """One human line per record: ``ts LEVEL logger: message key=value ...`` (for a terminal)."""

    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{key}={value}" for key, value in _context(record).items())
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if context:
            line = f"{line} {context}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _RESERVED and not key.startswith("_")}


class LibrdkafkaFilter(logging.Filter):
    """Shapes librdkafka's records and keeps an outage from flooding the log.

    librdkafka logs as ``("%s [%s] %s", facility, client, text)``; this turns that into the
    message ``text`` with ``facility`` and ``kafka_client`` fields. While a broker is down
    librdkafka repeats the same line on every reconnect (hundreds per minute): an identical
    line within ``window`` seconds of the last one shown is dropped and counted, and the next
    one shown carries ``repeated`` = how many were dropped in between.
    """

    def __init__(self, window: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 3 and record.msg == "%s [%s] %s":
            facility, client, text = (str(a) for a in args)
            record.msg, record.args = text, ()
            record.facility, record.kafka_client = facility, client
        key = (str(getattr(record, "facility", "")), record.getMessage())
        now = self._clock()
        with self._lock:
            last, dropped = self._seen.get(key, (now - self._window - 1.0, 0))
            if now - last < self._window:
                self._seen[key] = (last, dropped + 1)
                return False
            if len(self._seen) > 1000:  # bounded: distinct lines are few, so forgetting is cheap
                self._seen.clear()
            self._seen[key] = (now, 0)
        if dropped:
            record.repeated = dropped
        return True


def configure_logging(level: str = "INFO", stream: Any = None, *, fmt: str = "json") -> None:
    """Install SR's formatter on the root logger (idempotent).

    Args:
        level: the root level (``DEBUG`` ... ``CRITICAL``), e.g. ``SR_LOG_LEVEL``.
        stream: where lines go (default stderr).
        fmt: ``json`` (one object per line, key ``message``) or ``text`` (``SR_LOG_FORMAT``).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_sr_json", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    handler._sr_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # botocore chatter is not ours to report at INFO.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    kafka = logging.getLogger("sr.librdkafka")
    if not any(isinstance(f, LibrdkafkaFilter) for f in kafka.filters):
        kafka.addFilter(LibrdkafkaFilter())


class RunLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose every line carries the bound run context."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


def run_logger(name: str, **context: Any) -> RunLogger:
    """A :class:`RunLogger` bound to ``context`` (e.g. ``run_id=..., tenant_id=..., epoch=...``)."""
    return RunLogger(logging.getLogger(name), dict(context))


def bind(logger: RunLogger, **more: Any) -> RunLogger:
    """A copy of ``logger`` with additional context."""
    base: Mapping[str, Any] = logger.extra or {}
    return RunLogger(logger.logger, {**base, **more})
