"""``sr db migrate``: apply SR's SQL migrations (the only command that does)."""

from __future__ import annotations

import argparse
from typing import Any

from worker.cli.common import print_document
from worker.cli.options import add_output, resolve_output
from worker.settings import Settings


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    db = sub.add_parser("db", help="database administration").add_subparsers(
        dest="db_cmd", required=True, help="migrate: apply SR's SQL migrations")
    p = db.add_parser("migrate", help="apply SR's SQL migrations (idempotent)",
                      epilog="examples:\n  sr db migrate\n  SR_PG_DSN=postgresql://sr@db/sr sr db migrate -o json\n")
    add_output(p, legacy_json=None)
    p.set_defaults(handler=cmd_db_migrate)


def cmd_db_migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations; prints the ones applied.

    Raises:
        PostgresUnavailableError: Postgres cannot be reached.
        MigrationError: a migration failed.
    """
    from worker.runtime.compose import migrate_database

    settings: Settings = args.settings
    applied = migrate_database(settings)
    print_document(resolve_output(args), {"applied": list(applied)},
                   lambda: print("applied: " + (", ".join(applied) if applied else "nothing (up to date)")))
    return 0
