"""PostgreSQL's part of the worker's health surface: the readiness check.

:func:`postgres_check` opens a fresh connection per probe (never the worker's pools, so a
probe neither waits for a busy pool nor hides a server that stopped accepting connections)
and runs the named ``ping`` query. Errors are the adapter's own (already translated) with
the DSN's password scrubbed from their text.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg.conninfo
from pydantic import SecretStr

from worker.adapters.postgres import PgConfig, connect, execute, query
from worker.errors import SRError, redact

__all__ = ["postgres_check"]


class _PostgresCheck:
    """Fresh connection + ``SELECT 1`` per call (never touches the worker's pools)."""

    def __init__(self, dsn: SecretStr, timeout: float) -> None:
        self._config = PgConfig(dsn=dsn, connect_timeout=timeout, statement_timeout=timeout, max_attempts=1)
        self._secrets: list[str] = []
        try:
            params = psycopg.conninfo.conninfo_to_dict(dsn.get_secret_value())
            self._secrets = [str(params[k]) for k in ("password", "sslpassword") if params.get(k)]
        except Exception:  # noqa: BLE001 - an invalid DSN fails (safely) when the check runs
            self._secrets = []

    def __call__(self) -> None:
        try:
            conn = connect(self._config, autocommit=True)
            try:
                execute(conn, query("ping"))
            finally:
                conn.close()
        except SRError as exc:
            raise type(exc)(redact(str(exc), self._secrets)) from None


def postgres_check(dsn_secret: SecretStr | str, *, timeout: float = 2.0) -> Callable[[], None]:
    """A readiness check of PostgreSQL: connect (TCP + auth) and ``SELECT 1`` on a fresh connection.

    Args:
        dsn_secret: the libpq DSN (kept secret: never in an error message).
        timeout: seconds for connecting (libpq/psycopg enforce at least 2 s) and for the statement.

    The returned check raises:
        PostgresUnavailableError: the server cannot be reached, refused, or timed out.
        PostgresError: the DSN is invalid or the statement failed.
    """
    dsn = dsn_secret if isinstance(dsn_secret, SecretStr) else SecretStr(dsn_secret)
    return _PostgresCheck(dsn, timeout)
