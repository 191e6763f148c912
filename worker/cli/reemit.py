"""``sr reemit RUN_ID``: re-publish a run's current READY from the ledger, byte-identical."""

from __future__ import annotations

import argparse
import os
from typing import Any

from worker.settings import Settings


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    p = sub.add_parser("reemit", help="re-publish a run's current READY from the ledger (byte-identical)")
    p.add_argument("run_id")
    p.add_argument("--operator", help="operator identity (default: $SR_OPERATOR or the OS user)")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(handler=cmd_reemit)


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
