"""Structured JSON logs: one object per line, with run context on every run line.

Use :func:`run_logger` to get a logger bound to ``run_id`` (and tenant/epoch when known);
everything it emits carries those fields. Secrets never reach a log line: settings hold them
as ``SecretStr`` and only adapters reveal them to their clients.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

_RESERVED = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None)).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object: ts, level, logger, msg, then any context fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    """Install the JSON formatter on the root logger (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_sr_json", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._sr_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # librdkafka/botocore chatter is not ours to report at INFO.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
