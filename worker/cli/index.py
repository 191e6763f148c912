"""``sr index rebuild|prune``: reconstruct the Postgres index from S3, prune superseded working data."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.cli.common import console_progress as _progress
from worker.errors import InputError
from worker.settings import Settings


def register(sub: Any) -> None:
    """Register ``index rebuild`` and ``index prune`` on ``sub`` (the top-level sub-parsers)."""
    index = sub.add_parser("index", help="index administration").add_subparsers(dest="index_cmd", required=True)
    p = index.add_parser("rebuild", help="reconstruct the Postgres index from S3 alone")
    p.add_argument("--tenant", help="only this tenant")
    p.add_argument("--republish", action="store_true",
                   help="leave rebuilt READY facts unpublished so the worker re-sends them")
    p.add_argument("--operator", help="operator identity (default: $SR_OPERATOR or the OS user)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_index_rebuild)
    p = index.add_parser(
        "prune", help="delete superseded working data from the Postgres index (never S3 truth)",
        description="Delete published outbox rows older than --older-than days that no code path needs again: "
                    "READY/SUPERSEDE rows of superseded facts views and STATUS rows of runs in a final status. "
                    "Run rows, unpublished rows and the current facts' rows are never deleted; S3 is not touched. "
                    "Like every operator action it needs an operator in SR_OPERATORS and is audited.",
    )
    p.add_argument("--older-than", type=_days, required=True, metavar="DAYS",
                   help="only rows published more than DAYS days ago (database clock)")
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    p.add_argument("--batch-size", type=int, default=1000, help="rows deleted per transaction (default 1000)")
    p.add_argument("--operator", help="operator identity (default: $SR_OPERATOR or the OS user)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_prune)


def cmd_index_rebuild(args: argparse.Namespace) -> int:
    """Authorize, then rebuild the index from S3 with progress."""
    from worker.app.operators import authorize, operator_name, rebuild_index
    from worker.runtime.compose import open_operator_services

    settings: Settings = args.settings
    operator = operator_name(args.operator, dict(os.environ))
    console = Console(stderr=True)
    # Rebuilt READY facts are restored as published (or, with --republish, left for the
    # worker to send): this command itself never sends.
    with open_operator_services(settings, need_producer=False) as services:
        authorize(services.index, settings.operators, operator, "index rebuild",
                  {"tenant": args.tenant, "republish": args.republish})
        with _progress(console) as progress:
            task = progress.add_task("restoring runs from S3", total=None)
            summary = rebuild_index(truth=services.truth, index=services.index, processor=services.processor,
                                    republish=args.republish, tenant=args.tenant,
                                    on_run=lambda _r: progress.advance(task))
        services.index.record_operator_action(operator, "index rebuild.done", allowed=True, detail=summary.as_dict())
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        table = Table("", "count", title="index rebuild")
        table.add_row("runs found in S3", str(summary.runs))
        for status, count in sorted(summary.restored.items()):
            table.add_row(f"restored {status}", str(count))
        table.add_row("publications restored", str(summary.publications))
        for reason, count in sorted(summary.skipped.items()):
            table.add_row(f"skipped: {reason}", str(count))
        Console().print(table)
    if summary.skipped:
        print("sr: some runs were not restored (see the table)", file=sys.stderr)
    return 0


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("--older-than must be a finite number of days >= 0")
    return value


def cmd_prune(args: argparse.Namespace) -> int:
    """Authorize, then prune superseded working data from the Postgres index; never touches S3.

    Raises:
        AuthorizationError: the operator is not in ``SR_OPERATORS`` (the refusal is recorded).
        SRError: Postgres failed (exit 2).
    """
    import os

    from worker.app.operators import authorize, operator_name
    from worker.runpack.retention import prune_index
    from worker.runtime.compose import pg_config, run_index

    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    settings: Settings = args.settings
    operator = operator_name(args.operator, dict(os.environ))
    with run_index(settings) as index:
        authorize(index, settings.operators, operator, "index prune",
                  {"older_than_days": args.older_than, "dry_run": args.dry_run})
        result = prune_index(pg_config(settings), older_than=timedelta(days=args.older_than),
                             dry_run=args.dry_run, batch_size=args.batch_size)
        doc = {"dry_run": result.dry_run, "cutoff": result.cutoff.isoformat(), "deleted": result.by_kind,
               "total": result.total}
        index.record_operator_action(operator, "index prune.done", allowed=True, detail=doc)
    if args.json:
        print(json.dumps(doc))
    else:
        verb = "would delete" if result.dry_run else "deleted"
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(result.by_kind.items())) or "nothing"
        print(f"{verb} {result.total} publication row(s) published before {result.cutoff.isoformat()}: {kinds}")
    return 0
