"""``sr follow ready|status|dlq|engine``: SR's topics, decoded, for operators and shell pipelines.

``ready --verify`` goes through the READY follower (:mod:`worker.client`): each run's current
fact once per change, its facts view fetched and checked (sha256 == facts_view_hash); a view
that does not verify is reported on stderr naming the run, and the command exits 1 at the end.
Without ``--verify``, ``ready`` lists every event as it is on the topic (re-sends included).
``--group`` reads in a consumer group and commits after each record is printed; otherwise
nothing is committed and ``--from`` says where to start (``beginning``, ``end``, or a time in
the CLI's one grammar, :mod:`worker.cli.timespec`).

``-o table`` (default) prints one aligned line per event, ``-o jsonl`` one JSON object per
line as it arrives; ``-o json`` prints one JSON array, so it needs an end: ``--until-end``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from datetime import datetime
from types import FrameType
from typing import Any

from worker.cli.options import add_output, resolve_output
from worker.cli.timespec import TIME_HELP, parse_time
from worker.errors import InputError
from worker.settings import Settings

KINDS = ("ready", "status", "dlq", "engine")

_EXAMPLES = """\
examples:
  sr follow ready                         # every READY event, from the beginning, until Ctrl-C
  sr follow status --from 15m --until-end # the last 15 minutes, then exit
  sr follow dlq --from end -o jsonl       # new dead letters, as JSON lines
  sr follow ready --verify --group downstream-a
  sr follow ready --until-end -o json     # one JSON array of everything so far
"""


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    p = sub.add_parser("follow", help="print SR's events (ready, status, dlq, engine) decoded, as they arrive",
                       epilog=_EXAMPLES)
    p.add_argument("kind", choices=KINDS, help="ready: sr.ready; status: sr.run-status; dlq: sr.dlq; "
                                               "engine: sr.engine-requests and sr.engine-results")
    p.add_argument("--from", dest="start", type=_start, default="beginning", metavar="beginning|end|TIME",
                   help=f"where to start without --group: beginning (default), end, or {TIME_HELP} "
                        "(e.g. 2026-12-01T00:00:00Z, 2h)")
    p.add_argument("--until-end", action="store_true", help="exit once every partition is drained")
    p.add_argument("--group", metavar="G", help="read as consumer group G, committing after each printed record")
    add_output(p, default="table", legacy_json=None)
    p.add_argument("--verify", action="store_true",
                   help="ready only: hand over each run's current fact once, after checking its facts view's "
                        "sha256; exit 1 (naming the runs) if any does not verify")
    p.set_defaults(handler=cmd_follow)


def _start(text: str) -> str | int:
    """``--from``: ``beginning``, ``end``, or a time as epoch milliseconds.

    Raises:
        argparse.ArgumentTypeError: none of those (a usage error).
    """
    if text in ("beginning", "end"):
        return text
    try:
        when: datetime = parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not beginning, end or a time: {text!r} (expected beginning, end, "
                                         f"{TIME_HELP})") from None
    return int(when.timestamp() * 1000)


def _stopper() -> Callable[[], bool]:
    """A stop flag set by SIGTERM / SIGINT, so a follower ends between records, committed."""
    stopped: list[bool] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        stopped.append(True)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return lambda: bool(stopped)


def cmd_follow(args: argparse.Namespace) -> int:
    """Print the chosen topic's events (see the module docstring); exit 1 if --verify failed."""
    from worker.cli.follow_render import Printer, describe

    settings: Settings = args.settings
    if args.verify and args.kind != "ready":
        raise InputError("--verify applies to sr follow ready only")
    if args.group and (args.start != "beginning" or args.until_end):
        raise InputError("--group resumes from the group's committed offsets: no --from or --until-end")
    output = resolve_output(args)
    if output == "json" and not args.until_end:
        raise InputError("-o json prints one JSON array at the end, so it needs --until-end; "
                         "use -o jsonl to stream")
    start: str | int = args.start
    printer = Printer(output)
    stop = _stopper()
    if args.verify:
        return _follow_verified(settings, start=start, args=args, printer=printer, stop=stop)
    from worker.adapters.kafka import TopicReader
    from worker.client.follower import consume_committing, drain
    from worker.runtime.compose import group_consumer, kafka_config, make_codec

    codec = make_codec(settings)
    topics = {"ready": [settings.topics.ready], "status": [settings.topics.status], "dlq": [settings.topics.dlq],
              "engine": [settings.topics.engine_requests, settings.topics.engine_results]}[args.kind]
    if args.group:
        with group_consumer(settings, group_id=args.group, topics=topics) as consumer:
            consume_committing(consumer, lambda record: printer.emit(describe(codec, settings, record)), stop=stop)
        return 0
    with TopicReader(kafka_config(settings), topics, start=start) as reader:
        for record in drain(reader, until_end=args.until_end, stop=stop):
            printer.emit(describe(codec, settings, record))
    printer.close()
    return 0


def _follow_verified(settings: Settings, *, start: str | int, args: argparse.Namespace, printer: Any,
                     stop: Callable[[], bool]) -> int:
    from worker.cli.follow_render import fact_row
    from worker.client import ReadyFollower, VerifiedFact
    from worker.core.models import ReadyEvent
    from worker.errors import FactsViewMismatchError

    bad: list[str] = []

    def mismatch(event: ReadyEvent, exc: FactsViewMismatchError) -> None:
        bad.append(event.run_id)
        print(f"sr: facts view does not verify: {exc}", file=sys.stderr, flush=True)

    def show(fact: VerifiedFact) -> None:
        printer.emit(fact_row(fact))

    with ReadyFollower(settings, start=start, group=args.group,
                       until_end=args.until_end, on_mismatch=mismatch) as follower:
        if args.group:
            follower.run(show, stop=stop)
        else:
            for fact in follower.facts():
                show(fact)
                if stop():
                    break
    printer.close()
    if bad:
        print(f"sr: {len(bad)} facts view(s) did not verify, runs: {', '.join(sorted(set(bad)))}", file=sys.stderr)
        return 1
    return 0
