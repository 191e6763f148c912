"""``sr index rebuild|prune``: reconstruct the Postgres index from S3, prune superseded working data."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.cli.common import console_progress as _progress
from worker.cli.common import print_document
from worker.cli.main import ExitCode
from worker.cli.options import add_operator, add_output, resolve_output
from worker.cli.timespec import UNITS, duration_arg
from worker.settings import Settings

#: Rebuild skip reasons that mean a run could not be restored (the others are expected).
_REBUILD_FAILURES = frozenset({"ledger failed verification", "identity mismatch"})


def register(sub: Any) -> None:
    """Register ``index rebuild`` and ``index prune`` on ``sub`` (the top-level sub-parsers)."""
    index = sub.add_parser("index", help="index administration").add_subparsers(
        dest="index_cmd", required=True, help="rebuild: from S3; prune: superseded working data")
    p = index.add_parser(
        "rebuild", help="reconstruct the Postgres index from S3 alone",
        description="Restore every run (and its publications) from SR's truth in S3 into the Postgres index, "
                    "e.g. after a database loss (run `sr db migrate` first). Exit 6 if some runs could not be "
                    "restored (the table names why).",
        epilog="examples:\n  sr index rebuild --operator alice\n  sr index rebuild --tenant tenant-a -o json\n")
    p.add_argument("--tenant", help="only this tenant's runs")
    p.add_argument("--republish", action="store_true",
                   help="leave rebuilt READY facts unpublished so the worker re-sends them")
    add_operator(p)
    add_output(p)
    p.set_defaults(handler=cmd_index_rebuild)
    p = index.add_parser(
        "prune", help="delete superseded working data from the Postgres index (never S3 truth)",
        description="Delete published outbox rows older than --older-than days that no code path needs again: "
                    "READY/SUPERSEDE rows of superseded facts views and STATUS rows of runs in a final status. "
                    "Run rows, unpublished rows and the current facts' rows are never deleted; S3 is not touched. "
                    "Like every operator action it needs an operator in SR_OPERATORS and is audited.",
        epilog="examples:\n  sr index prune --older-than 30 --dry-run      # 30 days\n"
               "  sr index prune --older-than 12h --operator alice -o json\n",
    )
    p.add_argument("--older-than", type=duration_arg(bare_unit=UNITS["d"]), required=True, metavar="AGE",
                   help="only rows published longer ago than AGE (database clock): a plain number of days, "
                        "or a duration 30s, 15m, 2h, 7d")
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    p.add_argument("--batch-size", type=_positive_int, default=1000, help="rows deleted per transaction (default 1000)")
    add_operator(p)
    add_output(p)
    p.set_defaults(handler=cmd_prune)


def cmd_index_rebuild(args: argparse.Namespace) -> int:
    """Authorize, then rebuild the index from S3 with progress. Exit 6 if some runs could not
    be restored (a ledger that does not verify, an identity mismatch).

    Raises:
        AuthorizationError: the operator is not in ``SR_OPERATORS`` (the refusal is recorded).
        SRError: Postgres or S3 failed.
    """
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
    failed = sum(n for reason, n in summary.skipped.items() if reason in _REBUILD_FAILURES)

    def human() -> None:
        table = Table("", "count", title="index rebuild")
        table.add_row("runs found in S3", str(summary.runs))
        for status, count in sorted(summary.restored.items()):
            table.add_row(f"restored {status}", str(count))
        table.add_row("publications restored", str(summary.publications))
        for reason, count in sorted(summary.skipped.items()):
            table.add_row(f"skipped: {reason}", str(count))
        Console().print(table)

    print_document(resolve_output(args), {**summary.as_dict(), "failed": failed}, human)
    if failed:
        print(f"sr: error: {failed} run(s) could not be restored (see the summary)", file=sys.stderr)
        return ExitCode.PARTIAL
    if summary.skipped:
        print("sr: some runs were not restored yet (no ledger entries)", file=sys.stderr)
    return ExitCode.OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_prune(args: argparse.Namespace) -> int:
    """Authorize, then prune superseded working data from the Postgres index; never touches S3.

    Raises:
        AuthorizationError: the operator is not in ``SR_OPERATORS`` (the refusal is recorded).
        SRError: Postgres failed.
    """
    from worker.app.operators import authorize, operator_name
    from worker.runpack.retention import prune_index
    from worker.runtime.compose import pg_config, run_index

    settings: Settings = args.settings
    operator = operator_name(args.operator, dict(os.environ))
    older_than_days = args.older_than / UNITS["d"]
    with run_index(settings) as index:
        authorize(index, settings.operators, operator, "index prune",
                  {"older_than_days": older_than_days, "dry_run": args.dry_run})
        result = prune_index(pg_config(settings), older_than=timedelta(seconds=args.older_than),
                             dry_run=args.dry_run, batch_size=args.batch_size)
        doc = {"dry_run": result.dry_run, "cutoff": result.cutoff.isoformat(), "deleted": result.by_kind,
               "total": result.total}
        index.record_operator_action(operator, "index prune.done", allowed=True, detail=doc)

    def human() -> None:
        verb = "would delete" if result.dry_run else "deleted"
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(result.by_kind.items())) or "nothing"
        print(f"{verb} {result.total} publication row(s) published before {result.cutoff.isoformat()}: {kinds}")

    print_document(resolve_output(args), doc, human)
    return ExitCode.OK
