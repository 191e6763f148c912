"""``sr submit``: publish JSON intents as Avro to the intents topic, keyed by run_id.

With ``--key FILE`` (else ``$SR_SIGNING_KEY``) every intent carries an ``sr-signature``
header over its exact value bytes (contract §10). SR accepts only a key of the intent's own
tenant, so an intent of another tenant than the key's principal gets a one-line warning
(it is still sent: the key set may list the key under another name, and SR decides).

Output: one JSON object per intent (``-o jsonl``, the default, as it always printed), one
array (``-o json``) or a table. If some intents were acknowledged and others not, the
acknowledged ones are printed and the command exits 6 (partial); none acknowledged is the
broker's error (75 when it is unavailable).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from worker.cli.common import print_rows
from worker.cli.main import ExitCode
from worker.cli.options import add_output, resolve_output
from worker.errors import InputError, SRError
from worker.settings import Settings


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    p = sub.add_parser("submit", help="publish a JSON intent (file or - for stdin) as Avro to the intents topic",
                       epilog="examples:\n  sr submit intent.json\n"
                              "  cat intents.jsonl | sr submit - --key tenant-a.key\n"
                              "  sr submit schemas/samples/complete.json -o table\n")
    p.add_argument("file", help="JSON file with one intent object, an array of intents, or JSON Lines "
                                "(one intent per line); - reads stdin. Every intent is validated before any is sent")
    p.add_argument("--key", default=None, metavar="FILE",
                   help="sign every intent with this private key file (default: $SR_SIGNING_KEY; "
                        "unsigned when neither is set)")
    add_output(p, default="jsonl", legacy_json=None)
    p.set_defaults(handler=cmd_submit)


def parse_documents(raw: str) -> list[Any]:
    """The intents in ``raw``: one JSON value (an object, or an array of them), else JSON Lines.

    Raises:
        InputError: neither form parses; for JSON Lines the message names the bad line.
    """
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as whole:
        lines = [(n, line) for n, line in enumerate(raw.splitlines(), start=1) if line.strip()]
        if len(lines) < 2:
            raise InputError(f"intent file is not JSON: {whole}") from whole
        items = []
        for number, line in lines:
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputError(f"intent file is neither JSON nor JSON Lines: line {number}: {exc}") from exc
        return items
    return doc if isinstance(doc, list) else [doc]


def cmd_submit(args: argparse.Namespace) -> int:
    """Encode JSON intents to Avro, sign them if a key is given, and produce them (keyed by
    run_id); prints run ids.

    Returns 6 (partial) when only some intents were acknowledged.

    Raises:
        InputError: the file cannot be read, or an intent is invalid.
        ConfigError: the key file cannot be used.
        KafkaUnavailableError: no intent was acknowledged.
    """
    from worker.core.identity import run_id_of
    from worker.core.models import parse_intent
    from worker.core.signatures import SIGNATURE_HEADER
    from worker.core.vocabulary import value_subject
    from worker.runtime.compose import event_producer, make_codec
    from worker.signing import signer_from

    settings: Settings = args.settings
    signer = signer_from(args.key, os.environ)  # a bad key fails before anything is read or sent
    try:
        raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read intent file {args.file}: {exc}") from exc
    items = parse_documents(raw)
    codec = make_codec(settings)
    subject = value_subject(settings.topics.intents)
    intents = [parse_intent(item) for item in items]
    if signer is not None:
        for tenant in sorted({i.tenant_id for i in intents} - {signer.principal}):
            print(f"sr: warning: intents of tenant {tenant!r} are signed with a key of {signer.principal!r}; "
                  "SR rejects them (UNAUTHENTICATED) unless its SR_SIGNING_KEYS lists this key under "
                  f"{tenant!r}", file=sys.stderr)
    with event_producer(settings) as producer:
        futures = []
        for intent in intents:
            run_id = run_id_of(intent)
            value = codec.encode_intent(intent, subject=subject)
            # The signature covers exactly the bytes produced: SR checks the value as consumed.
            headers = None if signer is None else [(SIGNATURE_HEADER, signer.signature_header(value))]
            futures.append((run_id, producer.send(settings.topics.intents, key=run_id.encode(), value=value,
                                                  headers=headers)))
        sent: list[dict[str, Any]] = []
        failures: list[tuple[str, SRError | TimeoutError]] = []
        for run_id, fut in futures:
            try:
                where = fut.result(60)
            except (SRError, TimeoutError) as exc:  # TimeoutError: no delivery report within 60 s
                failures.append((run_id, exc))
                continue
            sent.append({"run_id": run_id, "topic": where.topic, "partition": where.partition,
                         "offset": where.offset})
    if failures and not sent:
        raise failures[0][1]
    print_rows(resolve_output(args), sent, lambda: _print_table(sent))
    if failures:
        first_run, first_error = failures[0]
        print(f"sr: error: {len(failures)} of {len(futures)} intent(s) not acknowledged (first: run {first_run}: "
              f"{first_error})", file=sys.stderr)
        return ExitCode.PARTIAL
    return ExitCode.OK


def _print_table(sent: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("run_id", "topic", "partition", "offset")
    for row in sent:
        table.add_row(str(row["run_id"]), str(row["topic"]), str(row["partition"]), str(row["offset"]))
    Console().print(table)
