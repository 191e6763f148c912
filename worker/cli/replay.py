"""``sr replay``: re-emit the READY facts of the runs found in a partition slice (no recompute)."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.cli.common import console_progress as _progress
from worker.errors import InputError
from worker.settings import Settings


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    p = sub.add_parser("replay", help="re-emit the READY facts of the runs found in a partition slice")
    p.add_argument("--topic", required=True)
    p.add_argument("--partition", type=int, required=True)
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-offset", type=int)
    start.add_argument("--from-time", help="ISO-8601 timestamp")
    p.add_argument("--to-offset", type=int, help="stop before this offset")
    p.add_argument("--dry-run", action="store_true", help="show what would be re-emitted; emit nothing")
    p.add_argument("--operator", help="operator identity (default: $SR_OPERATOR or the OS user)")
    p.add_argument("--idle-timeout", type=float, default=3.0, help="seconds without records that end the slice")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    """Authorize, read the slice with a progress bar, re-emit, print the summary table."""
    from worker.app.operators import authorize, operator_name, replay
    from worker.runtime.compose import open_operator_services, partition_reader

    settings: Settings = args.settings
    operator = operator_name(args.operator, dict(os.environ))
    try:
        from_time = datetime.fromisoformat(args.from_time) if args.from_time else None
    except ValueError as exc:
        raise InputError(f"--from-time: not an ISO-8601 time: {args.from_time!r}") from exc
    if from_time is not None and from_time.tzinfo is None:
        from_time = from_time.replace(tzinfo=UTC)
    console = Console(stderr=True)
    with open_operator_services(settings, need_producer=not args.dry_run) as services:
        authorize(services.index, settings.operators, operator, "replay", {
            "topic": args.topic, "partition": args.partition, "from_offset": args.from_offset,
            "from_time": args.from_time, "to_offset": args.to_offset, "dry_run": args.dry_run})
        from_time_ms = None if from_time is None else int(from_time.timestamp() * 1000)
        records = partition_reader(settings).read_slice(args.topic, args.partition, from_offset=args.from_offset,
                                                        from_time_ms=from_time_ms, to_offset=args.to_offset,
                                                        idle_timeout=args.idle_timeout)
        with _progress(console) as progress:
            total = (args.to_offset - (args.from_offset or 0)) if args.to_offset is not None else None
            task = progress.add_task(f"reading {args.topic}[{args.partition}]", total=total)
            summary = replay(records, processor=services.processor, index=services.index, truth=services.truth,
                             dry_run=args.dry_run, on_record=lambda _r: progress.advance(task))
        services.index.record_operator_action(operator, "replay.done", allowed=True, detail=summary.as_dict())
    if args.json:
        print(json.dumps({**summary.as_dict(), "dry_run": args.dry_run}))
        return 0
    table = Table("", "count", title="replay" + (" (dry run: nothing emitted)" if args.dry_run else ""))
    table.add_row("records seen", str(summary.records))
    table.add_row("runs", str(summary.runs))
    table.add_row("would re-emit" if args.dry_run else "re-emitted", str(summary.reemitted))
    for reason, count in sorted(summary.skipped.items()):
        table.add_row(f"skipped: {reason}", str(count))
    Console().print(table)
    return 0
