"""``sr replay``: re-emit the READY facts of the runs found in a partition slice (no recompute).

Exit 6 (partial) when some runs of the slice could not be re-emitted — a run a worker kept
leased, one missing from the index, an undecodable record — the summary says which and how
many; runs that simply have no READY fact are not failures.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.cli.common import console_progress as _progress
from worker.cli.common import print_document
from worker.cli.main import ExitCode
from worker.cli.options import add_operator, add_output, resolve_output
from worker.cli.timespec import DURATION_HELP, TIME_HELP, duration_arg, time_arg
from worker.settings import Settings

_EXAMPLES = """\
examples:
  sr replay --topic sr.ready --partition 0 --from-time 2h --dry-run
  sr replay --topic sr.run-intents --partition 3 --from-offset 1200 --to-offset 1300 --operator alice
  sr replay --topic sr.ready --partition 1 --from-time 2026-12-01T00:00:00Z -o json
"""


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    p = sub.add_parser("replay", help="re-emit the READY facts of the runs found in a partition slice",
                       epilog=_EXAMPLES)
    p.add_argument("--topic", required=True, help="the topic to read (any of SR's: intents, ready, status, ...)")
    p.add_argument("--partition", type=int, required=True, help="the partition of --topic to read")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-offset", type=int, metavar="N", help="start at this offset (default: the earliest)")
    start.add_argument("--from-time", type=time_arg, metavar="TIME",
                       help=f"start at the first record at or after this time: {TIME_HELP}")
    p.add_argument("--to-offset", type=int, metavar="M", help="stop before this offset")
    p.add_argument("--dry-run", action="store_true", help="show what would be re-emitted; emit nothing")
    add_operator(p)
    p.add_argument("--idle-timeout", type=duration_arg(), default=3.0, metavar="DURATION",
                   help=f"how long without records ends the slice ({DURATION_HELP}; default 3)")
    add_output(p)
    p.set_defaults(handler=cmd_replay)


def _is_failure(reason: str) -> bool:
    # A run without a READY fact has nothing to re-emit: that is an answer, not a failure.
    return not reason.startswith("no READY fact")


def cmd_replay(args: argparse.Namespace) -> int:
    """Authorize, read the slice with a progress bar, re-emit, print the summary; exit 6 if
    some runs could not be re-emitted.

    Raises:
        AuthorizationError: the operator is not in ``SR_OPERATORS``.
        SRError: a server failed.
    """
    from worker.app.operators import authorize, operator_name, replay
    from worker.runtime.compose import open_operator_services, partition_reader

    settings: Settings = args.settings
    operator = operator_name(args.operator, dict(os.environ))
    from_time = args.from_time
    console = Console(stderr=True)
    with open_operator_services(settings, need_producer=not args.dry_run) as services:
        authorize(services.index, settings.operators, operator, "replay", {
            "topic": args.topic, "partition": args.partition, "from_offset": args.from_offset,
            "from_time": None if from_time is None else from_time.isoformat(), "to_offset": args.to_offset,
            "dry_run": args.dry_run})
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
    failed = sum(n for reason, n in summary.skipped.items() if _is_failure(reason))

    def human() -> None:
        table = Table("", "count", title="replay" + (" (dry run: nothing emitted)" if args.dry_run else ""))
        table.add_row("records seen", str(summary.records))
        table.add_row("runs", str(summary.runs))
        table.add_row("would re-emit" if args.dry_run else "re-emitted", str(summary.reemitted))
        for reason, count in sorted(summary.skipped.items()):
            table.add_row(f"skipped: {reason}", str(count))
        Console().print(table)

    print_document(resolve_output(args), {**summary.as_dict(), "dry_run": args.dry_run, "failed": failed}, human)
    if failed:
        print(f"sr: error: {failed} record(s) or run(s) of the slice were not re-emitted (see the summary)",
              file=sys.stderr)
        return ExitCode.PARTIAL
    return ExitCode.OK
