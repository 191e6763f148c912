"""``sr run``: the worker process (a consumer-group member over intents and triggers)."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from worker.settings import Settings

if TYPE_CHECKING:
    from worker.runtime.worker import Worker


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    p = sub.add_parser(
        "run", help="run the worker (consumer group over intents and triggers)",
        description="Run one worker: a consumer-group member over the intents, triggers and engine-results "
                    "topics. Needs SR_POLICY_FILE. SIGTERM/SIGINT finishes in-flight runs, commits and exits 0.",
        epilog="examples:\n  SR_POLICY_FILE=policy.toml sr run\n  sr run --config sr.toml --no-migrate\n")
    p.add_argument("--no-migrate", action="store_true",
                   help="do not apply database migrations at start (as SR_MIGRATE=false)")
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the worker until SIGINT/SIGTERM; a signal finishes in-flight work and commits.

    The signal handlers are installed before anything else (policy, clients), so a stop
    requested during start-up is a clean exit 0, not a death by the default handler; after
    the worker stopped, further stop signals are ignored for the same reason.
    """
    stop_requested = threading.Event()
    started: list[Worker] = []

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()
        for worker in started:
            worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    from worker.runtime.compose import load_policy_file
    from worker.runtime.worker import Worker

    settings: Settings = args.settings
    policy = load_policy_file(settings.policy_file)
    worker = Worker(settings, policy, migrate_db=settings.migrate and not args.no_migrate)
    started.append(worker)
    if not stop_requested.is_set():
        worker.run()
    # Stopped cleanly (offsets committed, leases released). Python restores the default
    # handlers while it tears down, so a repeated SIGTERM from a supervisor would turn this
    # clean exit into a death by signal: ignore further stop signals from here on.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return 0
