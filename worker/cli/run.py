"""``sr run``: the worker process (a consumer-group member over intents and triggers)."""

from __future__ import annotations

import argparse
import signal
from types import FrameType
from typing import Any

from worker.settings import Settings


def register(sub: Any) -> None:
    """Register the command on ``sub`` (the top-level argparse sub-parsers)."""
    p = sub.add_parser("run", help="run the worker (consumer group over intents and triggers)")
    p.add_argument("--no-migrate", action="store_true", help="do not apply database migrations at start")
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the worker until SIGINT/SIGTERM; a signal finishes in-flight work and commits."""
    from worker.logs import configure_logging
    from worker.runtime.compose import load_policy_file
    from worker.runtime.worker import Worker

    configure_logging()
    settings: Settings = args.settings
    policy = load_policy_file(settings.policy_file)
    worker = Worker(settings, policy, migrate_db=not args.no_migrate)

    def _stop(signum: int, frame: FrameType | None) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker.run()
    return 0
