"""``sr trigger RUN_ID --kind K``: publish a RunTrigger keyed by run_id."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from typing import Any

from worker.settings import Settings


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    p = sub.add_parser("trigger", help="publish a RunTrigger for a run")
    p.add_argument("run_id")
    p.add_argument("--kind", required=True, choices=["EVIDENCE_ARRIVED", "REEVALUATE", "REEMIT", "SUPERSEDE"])
    p.add_argument("--reason", default="", help="free text recorded in the run's ledger")
    p.add_argument("--requested-by", default=None, help="who asks (default: $SR_OPERATOR or the OS user)")
    p.set_defaults(handler=cmd_trigger)


def cmd_trigger(args: argparse.Namespace) -> int:
    """Publish one RunTrigger keyed by run_id."""
    from worker.app.operators import operator_name
    from worker.core.models import parse_trigger
    from worker.core.vocabulary import value_subject
    from worker.runtime.compose import event_producer, make_codec

    settings: Settings = args.settings
    trigger = parse_trigger({"run_id": args.run_id, "kind": args.kind, "reason": args.reason,
                             "requested_by": operator_name(args.requested_by, dict(os.environ)),
                             "requested_at": datetime.now(UTC)})
    value = make_codec(settings).encode_trigger(trigger, subject=value_subject(settings.topics.triggers))
    with event_producer(settings) as producer:
        where = producer.send_and_wait(settings.topics.triggers, key=trigger.run_id.encode(), value=value)
    print(json.dumps({"run_id": trigger.run_id, "kind": trigger.kind.value, "partition": where.partition,
                      "offset": where.offset}))
    return 0
