"""``sr config show``: the effective settings, as this invocation resolved them, redacted.

What it prints is what every other command would run with: defaults, then the config file
(``--config`` / ``SR_CONFIG``), then the environment. Every secret — each ``SecretStr``
setting (``pg_dsn``, the AWS keys, ...) and every Kafka pass-through value, whatever its name
— is shown as ``**********``: the command is safe to paste into a ticket. Nothing is
contacted.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from enum import Enum
from pathlib import PurePath
from typing import Any, Final

from pydantic import BaseModel, SecretBytes, SecretStr
from rich.console import Console
from rich.table import Table

from worker.cli.common import print_document
from worker.cli.options import add_output, resolve_output
from worker.settings import Settings

__all__ = ["REDACTED", "cmd_show", "redacted_settings", "register"]

#: What a secret value prints as (pydantic's own spelling).
REDACTED: Final = "**********"

#: Settings whose every value is secret, whatever its type (librdkafka pass-through values:
#: a SASL password and a broker address look alike to SR).
_ALL_SECRET: Final = frozenset({"kafka_extra"})


def register(sub: Any) -> None:
    """Register ``config show`` on ``sub`` (the top-level argparse sub-parsers)."""
    p: argparse.ArgumentParser = sub.add_parser("config", help="show SR's effective configuration")
    config_sub = p.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND",
                                  help="show: the effective settings, secrets redacted")
    show = config_sub.add_parser(
        "show", help="print the effective settings (secrets as **********)",
        description="Print the settings this invocation resolved (defaults < config file < environment), every "
                    "secret and every SR_KAFKA_* pass-through value redacted. Contacts no server.",
        epilog="examples:\n  sr config show\n  sr --config sr.toml config show -o json | jq .topics\n"
               "  SR_CONFIG=sr.toml sr config show -o json\n")
    add_output(show, legacy_json=None)
    show.set_defaults(handler=cmd_show)


def _redact(value: Any, *, secret: bool = False) -> Any:  # noqa: PLR0911 - one return per kind of value
    """``value`` as plain JSON-able data, secrets replaced by :data:`REDACTED`."""
    if isinstance(value, SecretStr | SecretBytes):
        return REDACTED
    if isinstance(value, BaseModel):
        return {name: _redact(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, Mapping):
        return {str(k): REDACTED if secret else _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact(v) for v in value]
    if secret and value is not None:
        return REDACTED
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def redacted_settings(settings: Settings) -> dict[str, Any]:
    """Every setting by its field name (the TOML key), nested models as objects, every secret
    as :data:`REDACTED`."""
    return {name: _redact(getattr(settings, name), secret=name in _ALL_SECRET)
            for name in type(settings).model_fields}


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(_flatten(value, f"{name}."))
        else:
            rows.append((name, "-" if value is None else str(value)))
    return rows


def cmd_show(args: argparse.Namespace) -> int:
    """Print the effective settings, redacted (table: one setting per row; json: one object)."""
    doc = redacted_settings(args.settings)

    def human() -> None:
        table = Table("setting", "value", title="effective configuration (secrets redacted)")
        for name, value in _flatten(doc):
            table.add_row(name, value)
        Console(soft_wrap=True).print(table)

    print_document(resolve_output(args), doc, human)
    return 0
