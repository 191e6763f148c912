"""``sr schemas``: the Avro fingerprints SR accepts, per record, version and canonical-form variant."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.settings import Settings


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    p = sub.add_parser("schemas", help="list the Avro schema fingerprints SR writes and accepts (contract §2)")
    p.add_argument("--record", help="only this record, e.g. RunIntent")
    p.add_argument("--json", action="store_true", help="one JSON object per fingerprint")
    p.set_defaults(handler=cmd_schemas)


def cmd_schemas(args: argparse.Namespace) -> int:
    """Print every single-object fingerprint the codec decodes; ``writes`` marks the one SR writes."""
    from worker.errors import InputError
    from worker.runtime.compose import make_codec

    settings: Settings = args.settings
    rows = make_codec(settings).fingerprints()
    if args.record:
        rows = [r for r in rows if r.record == args.record]
        if not rows:
            raise InputError(f"--record: no record named {args.record!r}")
    if args.json:
        for r in rows:
            print(json.dumps({"record": r.record, "version": r.version, "current": r.current, "variant": r.variant,
                              "fingerprint": r.hex, "writes": r.current and r.variant == "spec"}))
        return 0
    table = Table("record", "version", "variant", "fingerprint", "SR writes")
    for r in rows:
        table.add_row(r.record, f"v{r.version}" + (" (current)" if r.current else ""), r.variant, r.hex,
                      "yes" if r.current and r.variant == "spec" else "")
    Console().print(table)
    return 0
