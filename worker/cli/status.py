"""``sr status RUN_ID``: a run's index row, its engine attempts and its verified ledger timeline."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.cli.common import print_document
from worker.cli.options import add_output, resolve_output
from worker.errors import RunNotFoundError
from worker.settings import Settings


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    p = sub.add_parser("status", help="show a run's status and its ledger timeline",
                       description="A run's index row, its engine attempts and its verified S3 ledger timeline. "
                                   "Exit 5 if the run is unknown.",
                       epilog="examples:\n  sr status 3f9c...e1a0\n  sr status 3f9c...e1a0 -o json | jq .ledger\n")
    p.add_argument("run_id", help="the run (32 lowercase hex, as sr submit prints)")
    add_output(p)
    p.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    """Print a run's index row and its verified S3 ledger timeline.

    Raises:
        RunNotFoundError: the run is not in the index (exit 5).
        SRError: a server failed, or the ledger does not verify.
    """
    from worker.app.truth import TruthStore
    from worker.core.keys import run_keys
    from worker.core.ledger import derive_state
    from worker.core.models import RunIntent, datetime_from_millis
    from worker.runtime.compose import object_store, run_index

    settings: Settings = args.settings
    console = Console()
    with run_index(settings) as index:
        row = index.get(args.run_id)
    if row is None:
        raise RunNotFoundError(f"run {args.run_id} not found")
    intent = RunIntent.from_avro(row.intent)
    keys = run_keys(settings.s3_prefix, intent.tenant_id, intent.namespace, row.run_id)
    with object_store(settings) as store:
        entries = TruthStore(store, settings.s3_bucket, settings.s3_prefix).read_ledger(keys) \
            if row.ledger_seq >= 0 else ()
    timeline = [
        {"seq": e.seq, "kind": e.kind.value, "at": datetime_from_millis(e.at_ms).isoformat(),
         "epoch": e.lease_epoch, "body": {k: v for k, v in e.body.items() if k != "intent"}}
        for e in entries
    ]

    def _at(ms: int | None) -> str | None:
        return None if ms is None else datetime_from_millis(ms).isoformat()

    attempts = [
        {"attempt_no": a.attempt_no, "attempt_id": a.attempt_id, "result": a.status.value if a.status else None,
         "requested_at": _at(a.requested_at_ms), "attempt_deadline": _at(a.deadline_ms),
         "result_at": _at(a.result_at_ms), "detail": a.detail}
        for a in (derive_state(entries).attempts if entries else ())
    ]
    summary = {
        "run_id": row.run_id, "status": row.status, "reason_code": row.reason_code,
        "tenant_id": row.tenant_id, "namespace": row.namespace, "scenario_id": row.scenario_id,
        "strategy": intent.strategy.value, "plan_hash": row.plan_hash, "facts_view_hash": row.facts_view_hash,
        "lease_epoch": row.lease_epoch, "engine_attempts": attempts, "ledger": timeline,
    }
    print_document(resolve_output(args), summary, lambda: _print_human(console, row.run_id, summary))
    return 0


def _print_human(console: Console, run_id: str, summary: dict[str, Any]) -> None:
    attempts: list[dict[str, Any]] = summary["engine_attempts"]
    timeline: list[dict[str, Any]] = summary["ledger"]
    console.print(f"[bold]{run_id}[/] {summary['status']} {summary['reason_code'] or ''}", highlight=False)
    if attempts:
        engine = Table("attempt", "attempt_id", "result", "requested_at", "deadline", "result_at", "detail",
                       title="engine attempts")
        for a in attempts:
            engine.add_row(str(a["attempt_no"]), str(a["attempt_id"]), str(a["result"] or "open"),
                           str(a["requested_at"]), str(a["attempt_deadline"]), str(a["result_at"] or ""),
                           str(a["detail"]))
        console.print(engine)
    table = Table("seq", "kind", "at", "epoch", "details")
    for item in timeline:
        body: dict[str, object] = item["body"]
        details = ", ".join(f"{k}={v}" for k, v in body.items())
        table.add_row(str(item["seq"]), str(item["kind"]), str(item["at"]), str(item["epoch"]), details)
    console.print(table)
