"""Operator sub-commands: ``trigger``, ``runs``, ``reemit``, ``replay``, ``index rebuild``.

They run on :func:`worker.runtime.compose.open_operator_services` or a single client from
:mod:`worker.runtime.compose`: no command here applies migrations (``sr db migrate`` does)
or needs a policy file, and commands that never send (``--dry-run``, ``index rebuild``) open
no producer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.errors import InputError
from worker.settings import Settings


def register(sub: Any) -> Any:
    """Register the operator sub-commands; returns the ``index`` sub-parsers for more commands."""
    p = sub.add_parser("trigger", help="publish a RunTrigger for a run")
    p.add_argument("run_id")
    p.add_argument("--kind", required=True, choices=["EVIDENCE_ARRIVED", "REEVALUATE", "REEMIT", "SUPERSEDE"])
    p.add_argument("--reason", default="", help="free text recorded in the run's ledger")
    p.add_argument("--requested-by", default=None, help="who asks (default: $SR_OPERATOR or the OS user)")
    p.set_defaults(handler=cmd_trigger)

    p = sub.add_parser("runs", help="list runs from the index")
    p.add_argument("--status", choices=["ADMITTED", "WAITING", "READY", "FAILED", "QUARANTINED", "REJECTED"])
    p.add_argument("--tenant")
    p.add_argument("--since", help="ISO-8601 time or a duration like 2h / 30m / 7d")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_runs)

    p = sub.add_parser("reemit", help="re-publish a run's current READY from the ledger (byte-identical)")
    p.add_argument("run_id")
    p.add_argument("--operator", help="operator identity (default: $SR_OPERATOR or the OS user)")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(handler=cmd_reemit)

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

    index = sub.add_parser("index", help="index administration").add_subparsers(dest="index_cmd", required=True)
    p = index.add_parser("rebuild", help="reconstruct the Postgres index from S3 alone")
    p.add_argument("--tenant", help="only this tenant")
    p.add_argument("--republish", action="store_true",
                   help="leave rebuilt READY facts unpublished so the worker re-sends them")
    p.add_argument("--operator", help="operator identity (default: $SR_OPERATOR or the OS user)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_index_rebuild)
    return index


def _progress(console: Console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


# ----------------------------------------------------------------------------- trigger / runs
def cmd_trigger(args: argparse.Namespace) -> int:
    """Publish one RunTrigger keyed by run_id."""
    from worker.app.operators import operator_name
    from worker.core.models import RunTrigger, TriggerKind
    from worker.runtime.compose import event_producer, make_codec

    settings: Settings = args.settings
    trigger = RunTrigger(run_id=args.run_id, kind=TriggerKind(args.kind), reason=args.reason,
                         requested_by=operator_name(args.requested_by, dict(os.environ)),
                         requested_at=datetime.now(UTC))
    codec = make_codec(settings)
    with event_producer(settings) as producer:
        where = producer.send_and_wait(settings.topics.triggers, key=trigger.run_id.encode(),
                                       value=codec.encode_trigger(trigger, subject=f"{settings.topics.triggers}-value"))
    print(json.dumps({"run_id": trigger.run_id, "kind": trigger.kind.value, "partition": where.partition,
                      "offset": where.offset}))
    return 0


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
                               since=_since(args.since), limit=args.limit)
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


# ----------------------------------------------------------------------------- reemit / replay
def cmd_reemit(args: argparse.Namespace) -> int:
    """Authorize, then re-emit one run's current READY."""
    from worker.app.operators import authorize, operator_name, reemit_run
    from worker.runtime.compose import open_operator_services

    settings: Settings = args.settings
    operator = operator_name(args.operator, dict(os.environ))
    with open_operator_services(settings, need_producer=not args.dry_run) as services:
        authorize(services.index, settings.operators, operator, "reemit",
                  {"run_id": args.run_id, "dry_run": args.dry_run})
        fv = reemit_run(args.run_id, processor=services.processor, index=services.index, truth=services.truth,
                        dry_run=args.dry_run)
    verb = "would re-emit" if args.dry_run else "re-emitted"
    print(f"{verb} READY run_id={args.run_id} facts_view_hash={fv}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Authorize, read the slice with a progress bar, re-emit, print the summary table."""
    from worker.app.operators import authorize, operator_name, replay
    from worker.runtime.compose import open_operator_services, partition_reader

    settings: Settings = args.settings
    operator = operator_name(args.operator, dict(os.environ))
    from_time = datetime.fromisoformat(args.from_time) if args.from_time else None
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


# ----------------------------------------------------------------------------- rebuild
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
