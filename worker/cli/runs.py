"""``sr runs``: list runs from the index."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.errors import InputError
from worker.settings import Settings


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    p = sub.add_parser("runs", help="list runs from the index")
    p.add_argument("--status", choices=["ADMITTED", "WAITING", "READY", "FAILED", "QUARANTINED", "REJECTED"])
    p.add_argument("--reason", metavar="REASON_CODE",
                   help="only runs with this reason code, e.g. --status WAITING --reason ENGINE_RUNNING "
                        "(an engine attempt is open) or ENGINE_FAILED / ENGINE_TIMEOUT")
    p.add_argument("--tenant")
    p.add_argument("--since", help="ISO-8601 time or a duration like 2h / 30m / 7d")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_runs)


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"--since: not an ISO time or duration: {text!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def cmd_runs(args: argparse.Namespace) -> int:
    """List runs (table, or --json lines)."""
    from worker.core.models import RunStatus
    from worker.runtime.compose import run_index

    settings: Settings = args.settings
    with run_index(settings) as index:
        rows = index.list_runs(status=RunStatus(args.status) if args.status else None, tenant=args.tenant,
                               since=_since(args.since), limit=args.limit, reason=args.reason)
    if args.json:
        for row in rows:
            print(json.dumps({"run_id": row.run_id, "status": row.status.value, "reason_code": row.reason_code,
                              "tenant_id": row.tenant_id, "namespace": row.namespace,
                              "scenario_id": row.scenario_id, "facts_view_hash": row.facts_view_hash,
                              "created_at": row.created_at.isoformat(), "updated_at": row.updated_at.isoformat()}))
        return 0
    table = Table("run_id", "status", "reason", "tenant", "namespace", "scenario", "updated")
    for row in rows:
        table.add_row(row.run_id, row.status.value, row.reason_code or "", row.tenant_id, row.namespace,
                      row.scenario_id, row.updated_at.isoformat(timespec="seconds"))
    Console().print(table)
    return 0
