"""Connection settings of the Postgres adapter and the libpq parameters derived from them.

Everything here is pure: no connection is opened, no statement is sent.
"""

from __future__ import annotations

import math
from typing import Any, Final

import psycopg
import psycopg.conninfo
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from worker.errors import PostgresError

__all__ = ["DEFAULT_APPLICATION_NAME", "KEEPALIVE_PARAMS", "PgConfig", "connect_params"]

#: ``application_name`` reported to the server unless the DSN names one (shows in pg_stat_activity).
DEFAULT_APPLICATION_NAME: Final = "scenario-runner"

#: TCP keepalive parameters: a dead peer is noticed within ~11 s (5 s idle + 3 probes every 2 s).
KEEPALIVE_PARAMS: Final = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}


class PgConfig(BaseModel):
    """Connection settings shared by the run index and the lease manager.

    All durations are in **seconds** (converted to milliseconds only when handed to Postgres).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dsn: SecretStr
    #: Seconds to wait for a TCP connection + authentication (libpq rounds up to whole seconds).
    connect_timeout: float = Field(default=5.0, gt=0)
    #: Seconds after which the server cancels a single statement (``statement_timeout``).
    statement_timeout: float = Field(default=30.0, gt=0)
    #: Attempts (first try included) for an operation failing with a retryable error.
    max_attempts: int = Field(default=5, ge=1)
    #: Upper bound, in seconds, of one backoff pause between attempts.
    backoff_max: float = Field(default=5.0, gt=0)
    #: Connections per pool (the run index and the lease manager each have their own pool).
    pool_size: int = Field(default=8, ge=1)


def connect_params(config: PgConfig, *, keepalives: bool, with_statement_timeout: bool) -> dict[str, Any]:
    """libpq parameters added to the DSN when connecting.

    All of them take effect at connection start, so none costs a round trip: the connect
    timeout (whole seconds, at least 1), ``application_name`` (unless the DSN sets one), the
    ``statement_timeout`` (milliseconds, appended to any ``options`` of the DSN) and, with
    ``keepalives``, :data:`KEEPALIVE_PARAMS`.

    Raises:
        PostgresError: the DSN is not a valid libpq connection string (the message never
            quotes the DSN, which may hold a password).
    """
    try:
        given = psycopg.conninfo.conninfo_to_dict(config.dsn.get_secret_value())
    except psycopg.Error:
        # Deliberately not chained: the parser's message may quote parts of the secret DSN.
        raise PostgresError("invalid Postgres DSN (check SR_PG_DSN)") from None
    params: dict[str, Any] = {"connect_timeout": max(1, math.ceil(config.connect_timeout))}
    if "application_name" not in given:
        params["application_name"] = DEFAULT_APPLICATION_NAME
    if with_statement_timeout:
        timeout_ms = max(1, round(config.statement_timeout * 1000))
        options = str(given.get("options") or "").strip()
        params["options"] = f"{options} -c statement_timeout={timeout_ms}".strip()
    if keepalives:
        params.update(KEEPALIVE_PARAMS)
    return params
