"""``sr reemit RUN_ID``: re-publish a run's current READY from the ledger, byte-identical."""

from __future__ import annotations

import argparse
import os
from typing import Any

from worker.cli.common import print_document
from worker.cli.options import add_operator, add_output, resolve_output
from worker.settings import Settings


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    p = sub.add_parser(
        "reemit", help="re-publish a run's current READY from the ledger (byte-identical)",
        description="Re-publish the run's current READY, rebuilt from its S3 ledger under the run's lease. "
                    "Needs an operator in SR_OPERATORS; every attempt is audited. Exit 5 for an unknown run.",
        epilog="examples:\n  sr reemit 3f9c...e1a0 --dry-run\n  sr reemit 3f9c...e1a0 --operator alice -o json\n")
    p.add_argument("run_id", help="the run (32 lowercase hex)")
    add_operator(p)
    p.add_argument("--dry-run", action="store_true", help="check what would be re-emitted; send nothing")
    add_output(p, legacy_json=None)
    p.set_defaults(handler=cmd_reemit)


def cmd_reemit(args: argparse.Namespace) -> int:
    """Authorize, then re-emit one run's current READY.

    Raises:
        AuthorizationError: the operator is not in ``SR_OPERATORS``.
        RunNotFoundError: the run is not in the index.
        InputError: the run is not READY.
        SRError: a server failed, or the ledger and the outbox disagree.
    """
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
    print_document(resolve_output(args), {"run_id": args.run_id, "facts_view_hash": fv, "dry_run": args.dry_run},
                   lambda: print(f"{verb} READY run_id={args.run_id} facts_view_hash={fv}"))
    return 0
