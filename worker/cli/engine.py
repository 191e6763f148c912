"""``sr engine simulate``: the reference engine (contract §8, ``docs/engine-protocol.md``).

Consumes ``EngineRequest``s from the engine-requests topic, writes valid evidence (or fails an
attempt, at ``--failure-rate``, reproducibly under ``--seed``) and produces one ``EngineResult``
per request to the engine-results topic. Runs until SIGTERM/SIGINT (exit 0) or until
``--max-requests`` results were acknowledged. Logs are JSON lines on stderr, like the worker's.

With ``--key FILE`` (else ``$SR_SIGNING_KEY``) every result is signed (contract §10) and
``reported_by`` defaults to the key's principal: SR, with ``SR_ENGINE_KEYS`` set, accepts a
result only when signed by the engine it names. A ``--reported-by`` that differs from the
key's principal is refused at start-up (one line, exit 3: a configuration error) rather than warned about: a
long-running engine whose every result SR dead-letters would leave each run waiting for its
attempt timeout, and no result can legitimately name one engine and be signed by another.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from worker.cli.timespec import DURATION_HELP, duration_arg
from worker.engine.simulator import DEFAULT_GROUP_ID, DEFAULT_REPORTED_BY
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.engine.loop import SimulatorLoop


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(sub: Any) -> None:
    """Register ``engine`` and its sub-commands on ``sub`` (the top-level argparse sub-parsers)."""
    p: argparse.ArgumentParser = sub.add_parser("engine", help="the reference data engine (contract §8)")
    engine_sub = p.add_subparsers(dest="engine_command", required=True, metavar="SUBCOMMAND",
                                  help="simulate: answer engine requests")
    sim = engine_sub.add_parser(
        "simulate", help="answer engine requests: write evidence and report results",
        description="Consume EngineRequests, write each request's evidence (outputs, gate bundles, flags last) "
                    "or fail the attempt, and produce one EngineResult per request, keyed by run_id.",
        epilog="examples:\n  sr engine simulate\n  sr engine simulate --delay 5s --failure-rate 0.2 --seed 7\n"
               "  sr engine simulate --key engine.key --max-requests 10\n")
    sim.add_argument("--delay", type=duration_arg(), default=1.0, metavar="DURATION",
                     help="how long from a request's requested_at until its attempt finishes "
                          f"(the result's finished_at; {DURATION_HELP}; default 1)")
    sim.add_argument("--failure-rate", type=float, default=0.0,
                     help="share of attempts reported FAILED, 0..1 (default 0)")
    sim.add_argument("--seed", type=int, default=0,
                     help="decides, with each attempt_id, which attempts fail (default 0)")
    sim.add_argument("--group-id", default=DEFAULT_GROUP_ID,
                     help=f"consumer group of the simulator (default {DEFAULT_GROUP_ID})")
    sim.add_argument("--reported-by", default=None,
                     help="reported_by of every result (default: the signing key's principal, else "
                          f"{DEFAULT_REPORTED_BY})")
    sim.add_argument("--key", default=None, metavar="FILE",
                     help="sign every result with this private key file (default: $SR_SIGNING_KEY; unsigned when "
                          "neither is set); its principal must be the --reported-by name")
    sim.add_argument("--max-requests", type=_positive_int, default=None,
                     help="exit after this many results were acknowledged (default: run until stopped)")
    sim.set_defaults(handler=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run the reference engine until SIGINT/SIGTERM or ``--max-requests``; exit 0.

    The signal handlers come first, so a stop during start-up is a clean exit too.

    Raises:
        ConfigError: an option out of range, no policy file (``SR_POLICY_FILE``), an unusable
            key file, or ``--reported-by`` other than the key's principal.
        PolicyError: the policy is invalid.
        SRError: a client could not be opened, or a result was refused permanently.
    """
    stop_requested = threading.Event()
    started: list[SimulatorLoop] = []

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()
        for loop in started:
            loop.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    from worker.engine.loop import SimulatorLoop
    from worker.engine.simulator import SimulatorConfig
    from worker.runtime.compose import load_policy_file
    from worker.signing import signer_from

    settings: Settings = args.settings
    signer = signer_from(args.key, os.environ)
    reported_by = args.reported_by or (signer.principal if signer is not None else DEFAULT_REPORTED_BY)
    config = SimulatorConfig(delay=args.delay, failure_rate=args.failure_rate, seed=args.seed,
                             reported_by=reported_by)
    policy = load_policy_file(settings.policy_file)
    loop = SimulatorLoop(settings, policy, config, group_id=args.group_id, max_requests=args.max_requests,
                         signer=signer)
    started.append(loop)
    if stop_requested.is_set():
        return 0
    loop.run()
    return 0
