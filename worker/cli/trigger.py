"""``sr trigger RUN_ID --kind K``: publish a RunTrigger keyed by run_id.

With ``--key FILE`` (else ``$SR_SIGNING_KEY``) the trigger carries an ``sr-signature`` header
over its exact value bytes (contract §10), and ``requested_by`` defaults to the key's
principal. With ``SR_OPERATOR_KEYS`` set, SR accepts a REEMIT / SUPERSEDE / RETRY trigger only
when it is signed by the operator named in ``requested_by`` (EVIDENCE_ARRIVED / REEVALUATE may
also be signed by the run's tenant), so an ``--operator`` other than the key's principal
gets a one-line warning; the trigger is still sent, and SR decides. ``--requested-by`` is the
deprecated spelling of ``--operator``.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from typing import Any

from worker.cli.common import print_document
from worker.cli.options import add_operator, add_output, resolve_output
from worker.core.models import TriggerKind
from worker.settings import Settings

_EXAMPLES = """\
examples:
  sr trigger 3f9c...e1a0 --kind EVIDENCE_ARRIVED
  sr trigger 3f9c...e1a0 --kind RETRY --reason "evidence restored" --operator alice --key alice.key
  sr trigger 3f9c...e1a0 --kind SUPERSEDE -o table
"""


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    p = sub.add_parser("trigger", help="publish a RunTrigger for a run", epilog=_EXAMPLES,
                       description="Ask the workers to act on a run; the trigger is recorded in the run's ledger "
                                   "with who asked. Prints one JSON object (run_id, kind, partition, offset).")
    p.add_argument("run_id", help="the run (32 lowercase hex)")
    p.add_argument("--kind", required=True, choices=[kind.value for kind in TriggerKind],
                   help="EVIDENCE_ARRIVED / REEVALUATE: re-check the evidence; REEMIT: re-send the READY; "
                        "SUPERSEDE: re-verify a READY run; RETRY: re-decide a FAILED or QUARANTINED run")
    p.add_argument("--reason", default="", help="free text recorded in the run's ledger")
    add_operator(p, "--requested-by", default_help="the signing key's principal, else $SR_OPERATOR, else the OS user")
    p.add_argument("--key", default=None, metavar="FILE",
                   help="sign the trigger with this private key file (default: $SR_SIGNING_KEY; "
                        "unsigned when neither is set)")
    add_output(p, default="jsonl", legacy_json=None)
    p.set_defaults(handler=cmd_trigger)


def cmd_trigger(args: argparse.Namespace) -> int:
    """Publish one RunTrigger keyed by run_id, signed when a key is given.

    Raises:
        ConfigError: the key file cannot be used.
        IntentInvalidError: the trigger is invalid (e.g. a malformed run id).
        KafkaUnavailableError: the trigger was not acknowledged.
    """
    from worker.app.authentication import OPERATOR_ONLY_TRIGGERS
    from worker.app.operators import operator_name
    from worker.core.models import parse_trigger
    from worker.core.signatures import SIGNATURE_HEADER
    from worker.core.vocabulary import value_subject
    from worker.runtime.compose import event_producer, make_codec
    from worker.signing import signer_from

    settings: Settings = args.settings
    signer = signer_from(args.key, os.environ)
    requested_by = args.operator or (signer.principal if signer is not None else None)
    trigger = parse_trigger({"run_id": args.run_id, "kind": args.kind, "reason": args.reason,
                             "requested_by": operator_name(requested_by, dict(os.environ)),
                             "requested_at": datetime.now(UTC)})
    if signer is not None and trigger.requested_by != signer.principal:
        who = "" if trigger.kind in OPERATOR_ONLY_TRIGGERS else " or by the run's tenant"
        print(f"sr: warning: --operator {trigger.requested_by!r} is not the key's principal "
              f"{signer.principal!r}; SR refuses a {trigger.kind.value} trigger not signed by the operator it "
              f"names{who}", file=sys.stderr)
    value = make_codec(settings).encode_trigger(trigger, subject=value_subject(settings.topics.triggers))
    # The signature covers exactly the bytes produced: SR checks the value as consumed.
    headers = None if signer is None else [(SIGNATURE_HEADER, signer.signature_header(value))]
    with event_producer(settings) as producer:
        where = producer.send_and_wait(settings.topics.triggers, key=trigger.run_id.encode(), value=value,
                                       headers=headers)
    doc = {"run_id": trigger.run_id, "kind": trigger.kind.value, "requested_by": trigger.requested_by,
           "partition": where.partition, "offset": where.offset}
    print_document(resolve_output(args), doc,
                   lambda: print(f"{trigger.kind.value} trigger for run {trigger.run_id} by {trigger.requested_by} "
                                 f"sent to partition {where.partition} at offset {where.offset}"))
    return 0
