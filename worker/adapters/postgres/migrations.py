"""Schema migrations: versioned files ``sql/NNNN_name.sql`` applied once each, in order.

The bookkeeping statements (lock, bootstrap, lookup, record) are named blocks of
``sql/queries.sql`` like every other statement.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from pydantic import SecretStr

from worker.adapters.postgres.config import PgConfig
from worker.adapters.postgres.pool import close_quietly, connect
from worker.adapters.postgres.queries import (
    SQL_DIR,
    SQL_PACKAGE,
    Connection,
    Query,
    execute,
    query,
    retrying,
    translated,
)
from worker.errors import PermanentError, PostgresError

__all__ = ["MIGRATION_LOCK_KEY", "Migration", "MigrationError", "load_migrations", "migrate"]

_MIGRATION_RE: Final = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql")
#: Key of the transaction-level advisory lock that serialises migrators (ASCII "sr_migr8").
MIGRATION_LOCK_KEY: Final = 0x73725F6D69677238


class MigrationError(PostgresError, PermanentError):
    """The migration files and the database disagree (a changed or malformed migration)."""

    code = "MIGRATION_INVALID"


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned schema file ``NNNN_name.sql``."""

    version: int
    name: str  # the file stem, e.g. "0001_init"
    sql: str
    checksum: str  # sha256 hex of the file's bytes


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migration files in version order (default: the packaged ``sql/`` directory).

    Only files named ``NNNN_lower_snake.sql`` are migrations (``queries.sql`` is not).

    Raises:
        MigrationError: two files share a version.
    """
    root: Any = directory if directory is not None else resources.files(SQL_PACKAGE).joinpath(SQL_DIR)
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        match = _MIGRATION_RE.fullmatch(entry.name)
        if match is None:
            continue
        data: bytes = entry.read_bytes()
        version = int(match.group("version"))
        if version in found:
            raise MigrationError(f"two migrations share version {version:04d}")
        found[version] = Migration(
            version=version,
            name=entry.name.removesuffix(".sql"),
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


def _apply_one(conn: Connection, migration: Migration) -> bool:
    """Apply ``migration`` in its own transaction unless already recorded; True if applied.

    Raises:
        MigrationError: the recorded checksum or name differs from the file's.
        PostgresUnavailableError / PostgresError: a database error (the transaction is rolled back).
    """
    with conn.transaction():
        # Serialise concurrent migrators; the lock is released at commit/rollback.
        execute(conn, query("migration_lock"), {"key": MIGRATION_LOCK_KEY})
        rows = execute(conn, query("migration_applied"), {"version": migration.version})
        if rows:
            name, checksum = str(rows[0]["name"]), str(rows[0]["checksum"])
            if checksum != migration.checksum or name != migration.name:
                raise MigrationError(
                    f"migration {migration.version:04d} was applied as {name!r} with checksum {checksum[:12]}... "
                    f"but the file {migration.name}.sql now has checksum {migration.checksum[:12]}...: "
                    "applied migrations must never change; add a new migration instead"
                )
            return False
        # No parameters: the file may hold several statements (simple query protocol).
        execute(conn, Query(name=f"migrate {migration.name}", sql=migration.sql.encode("utf-8")))
        execute(conn, query("migration_record"), {"version": migration.version, "name": migration.name,
                                                  "checksum": migration.checksum})
        return True


def migrate(dsn: str, *, migrations: Sequence[Migration] | None = None, connect_timeout: float = 10.0) -> list[str]:
    """Bring the schema up to date; returns the names of the migrations applied by this call.

    Each migration runs in its own transaction holding a transaction-level advisory lock,
    so workers starting at once apply each migration exactly once; re-running is a no-op.
    Migrations recorded in the database but unknown to this build (a newer worker ran) are
    left alone. Statements sent here are not counted as round trips (start-up only).

    Args:
        dsn: libpq connection string of the target database.
        migrations: override the packaged migrations (tests).
        connect_timeout: seconds to wait for the connection (connecting is retried with the
            default bounded backoff; applying is not).

    Raises:
        MigrationError: an already-applied migration file was changed.
        PostgresUnavailableError: the server is unreachable or the connection dropped.
        PostgresError: a migration failed (its transaction is rolled back).
    """
    todo = list(migrations) if migrations is not None else load_migrations()
    config = PgConfig(dsn=SecretStr(dsn), connect_timeout=connect_timeout)
    applied: list[str] = []
    conn = retrying(config)(connect, config, autocommit=True, with_statement_timeout=False)
    try:
        with translated("migrate"):  # commit/rollback errors; statements translate themselves
            with conn.transaction():
                execute(conn, query("migration_lock"), {"key": MIGRATION_LOCK_KEY})
                execute(conn, query("migration_bootstrap"))
            for migration in todo:
                if _apply_one(conn, migration):
                    applied.append(migration.name)
    finally:
        close_quietly(conn)
    return applied
