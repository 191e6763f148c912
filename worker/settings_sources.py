"""Where SR's settings come from, checked strictly: the TOML file, ``SR_*`` variables, secret files.

:func:`worker.settings.load_settings` builds the one :class:`~worker.settings.Settings` from
these pieces, in this priority (highest first): explicit overrides, the environment, the TOML
file, built-in defaults. Everything here is pure (no I/O beyond reading the files it is told
about) and reports problems as one-line :class:`~worker.errors.ConfigError` messages that name
the setting, never its value (values may be secrets).

* **The file is strict**: an unknown top-level key (``pg_dns = ...``) is an error with a
  "did you mean" hint, not silently ignored.
* **Secret files**: ``SR_<NAME>_FILE=/path`` reads the value of ``SR_<NAME>`` from a file (the
  Docker/Kubernetes secrets convention), trailing newline removed; setting both is an error.
  ``SR_KAFKA_<PROP>_FILE`` works the same for pass-through properties.
* **Pass-through Kafka properties** (``SR_KAFKA_SASL_PASSWORD`` → ``sasl.password``) may not
  override a property SR owns (idempotence, offset commits, isolation, group id, ...): those
  carry SR's guarantees, and a silent override would break them.
* **Unknown ``SR_*`` variables** are reported (:func:`unknown_variables`) so a typo like
  ``SR_PG_DNS`` is visible in the first log lines instead of silently doing nothing.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from worker.errors import ConfigError

__all__ = [
    "KAFKA_OWNED_PROPERTIES",
    "KAFKA_PASSTHROUGH_PREFIX",
    "NON_SETTING_VARIABLES",
    "SECRET_FILE_SUFFIX",
    "expand_secret_files",
    "kafka_passthrough",
    "read_config_file",
    "unknown_variables",
]

KAFKA_PASSTHROUGH_PREFIX: Final = "SR_KAFKA_"
SECRET_FILE_SUFFIX: Final = "_FILE"  # noqa: S105 (a variable-name suffix, not a secret)
#: The largest secret file SR reads (a DSN, a password, a JAAS line or a PEM chain is far smaller).
MAX_SECRET_FILE_BYTES: Final = 64 * 1024

#: librdkafka properties SR sets itself, each with why (the reason is the error message's tail).
#: An ``SR_KAFKA_*`` variable naming one of them is refused: the guarantee would silently go.
KAFKA_OWNED_PROPERTIES: Final[Mapping[str, str]] = {
    "bootstrap.servers": "set SR_KAFKA_BOOTSTRAP instead",
    "group.id": "set SR_GROUP_ID instead",
    "group.instance.id": "set SR_GROUP_INSTANCE_ID instead",
    "client.id": "set SR_CLIENT_ID instead",
    "session.timeout.ms": "set SR_SESSION_TIMEOUT (seconds) instead",
    "enable.idempotence": "exactly-once publication of READY depends on the idempotent producer",
    "acks": "a READY is acknowledged only once every in-sync replica has it",
    "max.in.flight.requests.per.connection": "per-run ordering depends on the idempotent producer's limit",
    "transactional.id": "SR does not use transactions; its outbox makes publication idempotent",
    "enable.auto.commit": "offsets are committed only after a record's effect is durable",
    "enable.auto.offset.store": "offsets are stored only after a record's effect is durable",
    "isolation.level": "SR reads only committed records",
    "auto.offset.reset": "a new consumer group must start at the earliest intent, or intents are lost",
    "partitioner": "run_id keys must land where Java producers put them (murmur2)",
    "partition.assignment.strategy": "SR's revoke handling is built for cooperative-sticky assignment",
    "enable.partition.eof": "SR's readers decide when a partition is drained",
    "logger": "librdkafka's log lines go through SR's JSON logging",
}

#: ``SR_*`` variables that are read, but not as settings (so never reported as unknown).
NON_SETTING_VARIABLES: Final = frozenset({
    "SR_CONFIG",  # the config file of the sr command
    "SR_OPERATOR",  # the sr command's default --operator
    "SR_SIGNING_KEY",  # the key file producers sign with (worker.signing)
    "SR_DEBUG",  # the sr command prints tracebacks of unexpected errors
    "SR_SOAK",  # long variants of the reliability tests
    "SR_BENCH_QUICK",  # the quick benchmark profile
})


def read_config_file(path: Path, known_fields: Iterable[str]) -> dict[str, Any]:
    """The TOML config file as a dict of settings, every top-level key a known setting.

    Raises:
        ConfigError: the file cannot be read or parsed, or a key is not a setting.
    """
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    known = sorted(known_fields)
    unknown = [key for key in values if key not in known]
    if unknown:
        hints = []
        for key in sorted(unknown):
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        raise ConfigError(f"config file {path}: unknown setting {', '.join(hints)}")
    return values


def expand_secret_files(environ: Mapping[str, str], settings: Iterable[str] = ()) -> dict[str, str]:
    """``environ`` with every ``SR_<NAME>_FILE`` replaced by ``SR_<NAME>`` = the file's content.

    The content loses one trailing newline (``echo secret > file`` writes one). Only ``SR_*``
    variables are expanded, and never one that is itself a setting (``SR_POLICY_FILE`` is the
    policy's path, not a secret file of ``SR_POLICY``): ``settings`` are those variable names.

    Raises:
        ConfigError: both ``SR_<NAME>`` and ``SR_<NAME>_FILE`` are set, the file cannot be read,
            is not UTF-8 text or is larger than 64 KiB.
    """
    own = frozenset(settings)

    def is_secret_file(key: str) -> bool:
        return key.startswith("SR_") and key.endswith(SECRET_FILE_SUFFIX) and len(key) > len("SR_") + 5 \
            and key not in own

    out = {key: value for key, value in environ.items() if not is_secret_file(key)}
    for key, path in environ.items():
        if not is_secret_file(key):
            continue
        target = key[: -len(SECRET_FILE_SUFFIX)]
        if target in environ:
            raise ConfigError(f"both {target} and {key} are set; set one")
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
        if len(raw) > MAX_SECRET_FILE_BYTES:
            raise ConfigError(f"{key}: {path} is larger than {MAX_SECRET_FILE_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
        out[target] = text[:-1] if text.endswith("\n") else text
    return out


def kafka_passthrough(environ: Mapping[str, str], own_variables: Iterable[str] = ()) -> dict[str, str]:
    """``SR_KAFKA_*`` variables (except SR's own settings) as librdkafka property names.

    ``SR_KAFKA_SASL_PASSWORD`` becomes ``sasl.password``.

    Raises:
        ConfigError: a variable names a property SR owns (:data:`KAFKA_OWNED_PROPERTIES`).
    """
    own = frozenset(own_variables)
    extra: dict[str, str] = {}
    for key, value in environ.items():
        if not key.startswith(KAFKA_PASSTHROUGH_PREFIX) or key in own:
            continue
        prop = key[len(KAFKA_PASSTHROUGH_PREFIX):].lower().replace("_", ".")
        if not prop:
            continue
        check_kafka_property(prop, source=key)
        extra[prop] = value
    return extra


def check_kafka_property(prop: str, *, source: str) -> None:
    """Refuse a pass-through property SR owns.

    Raises:
        ConfigError: ``prop`` is in :data:`KAFKA_OWNED_PROPERTIES` (the message says why).
    """
    reason = KAFKA_OWNED_PROPERTIES.get(prop)
    if reason is not None:
        raise ConfigError(f"{source}: librdkafka property {prop!r} is set by SR and cannot be overridden ({reason})")


def unknown_variables(environ: Mapping[str, str], known: Iterable[str]) -> list[str]:
    """``SR_*`` variables that configure nothing, each with a "did you mean" hint when one fits.

    ``known`` are the setting variables (``SR_PG_DSN``, ...); nested settings
    (``SR_TOPICS__READY``), their ``_FILE`` forms, pass-through ``SR_KAFKA_*`` properties and
    :data:`NON_SETTING_VARIABLES` are not unknown.
    """
    names = sorted(set(known))
    nested_prefixes = tuple(f"{name}__" for name in names)
    found = []
    for key in sorted(environ):
        if not key.startswith("SR_") or key.startswith(KAFKA_PASSTHROUGH_PREFIX):
            continue
        base = key[: -len(SECRET_FILE_SUFFIX)] if key.endswith(SECRET_FILE_SUFFIX) else key
        if base in names or key in names or key in NON_SETTING_VARIABLES or key.startswith(nested_prefixes) \
                or key.startswith("SR_TEST_"):
            continue
        close = difflib.get_close_matches(key, names, n=1)
        found.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return found
