"""``sr runs``: list runs from the index."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.cli.common import print_rows
from worker.cli.options import add_output, resolve_output
from worker.cli.timespec import TIME_HELP, time_arg
from worker.settings import Settings

_STATUSES = ("ADMITTED", "WAITING", "READY", "FAILED", "QUARANTINED", "REJECTED")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    p = sub.add_parser(
        "runs", help="list runs from the index", description="List runs from the index, newest first.",
        epilog="examples:\n  sr runs --status WAITING --reason ENGINE_RUNNING\n"
               "  sr runs --tenant tenant-a --since 2h -o jsonl\n  sr runs --since 2026-12-01 --limit 1000 -o json\n")
    p.add_argument("--status", choices=_STATUSES, help="only runs in this status")
    p.add_argument("--reason", metavar="REASON_CODE",
                   help="only runs with this reason code, e.g. --status WAITING --reason ENGINE_RUNNING "
                        "(an engine attempt is open) or ENGINE_FAILED / ENGINE_TIMEOUT")
    p.add_argument("--tenant", help="only this tenant's runs")
    p.add_argument("--since", type=time_arg, metavar="TIME", help=f"only runs updated since TIME: {TIME_HELP}")
    p.add_argument("--limit", type=_positive_int, default=100, help="at most this many runs (default 100)")
    # --json always printed one object per line here: the alias keeps doing so.
    add_output(p, legacy_json="jsonl")
    p.set_defaults(handler=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    """List runs (table; ``-o json`` one array, ``-o jsonl`` one object per run).

    Raises:
        SRError: Postgres failed.
    """
    from worker.core.models import RunStatus
    from worker.runtime.compose import run_index

    settings: Settings = args.settings
    with run_index(settings) as index:
        rows = index.list_runs(status=RunStatus(args.status) if args.status else None, tenant=args.tenant,
                               since=args.since, limit=args.limit, reason=args.reason)
    docs = [{"run_id": row.run_id, "status": row.status.value, "reason_code": row.reason_code,
             "tenant_id": row.tenant_id, "namespace": row.namespace, "scenario_id": row.scenario_id,
             "facts_view_hash": row.facts_view_hash, "created_at": row.created_at.isoformat(),
             "updated_at": row.updated_at.isoformat()} for row in rows]

    def human() -> None:
        table = Table("run_id", "status", "reason", "tenant", "namespace", "scenario", "updated")
        for row in rows:
            table.add_row(row.run_id, row.status.value, row.reason_code or "", row.tenant_id, row.namespace,
                          row.scenario_id, row.updated_at.isoformat(timespec="seconds"))
        Console().print(table)

    print_rows(resolve_output(args), docs, human)
    return 0
