"""``sr schemas``: the Avro fingerprints SR accepts, per record, version and canonical-form variant."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.cli.common import print_rows
from worker.cli.options import add_output, resolve_output
from worker.settings import Settings


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    p = sub.add_parser("schemas", help="list the Avro schema fingerprints SR writes and accepts (contract §2)",
                       epilog="examples:\n  sr schemas\n  sr schemas --record RunIntent -o jsonl\n")
    p.add_argument("--record", help="only this record, e.g. RunIntent")
    # --json always printed one object per fingerprint per line: the alias keeps doing so.
    add_output(p, legacy_json="jsonl")
    p.set_defaults(handler=cmd_schemas)


def cmd_schemas(args: argparse.Namespace) -> int:
    """Print every single-object fingerprint the codec decodes; ``writes`` marks the one SR writes.

    Raises:
        InputError: ``--record`` names no record.
    """
    from worker.errors import InputError
    from worker.runtime.compose import make_codec

    settings: Settings = args.settings
    rows = make_codec(settings).fingerprints()
    if args.record:
        rows = [r for r in rows if r.record == args.record]
        if not rows:
            raise InputError(f"--record: no record named {args.record!r}")
    docs = [{"record": r.record, "version": r.version, "current": r.current, "variant": r.variant,
             "fingerprint": r.hex, "writes": r.current and r.variant == "spec"} for r in rows]

    def human() -> None:
        table = Table("record", "version", "variant", "fingerprint", "SR writes")
        for r in rows:
            table.add_row(r.record, f"v{r.version}" + (" (current)" if r.current else ""), r.variant, r.hex,
                          "yes" if r.current and r.variant == "spec" else "")
        Console().print(table)

    print_rows(resolve_output(args), docs, human)
    return 0
