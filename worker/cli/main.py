"""``sr``: the Scenario Runner command line.

One rule for where a command lives: ``sr NAME ...`` is implemented in ``worker/cli/NAME.py``,
which defines ``register(sub)`` (adding ``NAME`` and its sub-commands to the parser) and the
``cmd_*`` handlers. :data:`COMMAND_GROUPS` lists the modules, in ``sr --help`` order; clients
come from :mod:`worker.runtime.compose`, never from an adapter directly.

Every expected failure is an :class:`~worker.errors.SRError`; it is printed as one line on
stderr (``sr: error: ...``) with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Final

from worker.errors import SRError

Handler = Callable[[argparse.Namespace], int]


#: The command modules of ``sr``, in help order (module name = command name).
COMMAND_GROUPS: Final = ("dev", "run", "submit", "status", "trigger", "runs", "reemit", "replay", "index", "topics",
                         "db", "runpack", "engine", "keys", "schemas", "follow")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``sr`` argument parser with every command module registered."""
    parser = argparse.ArgumentParser(prog="sr", description="Scenario Runner: the run readiness authority.")
    parser.add_argument("--config", help="TOML config file (environment variables override it)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_GROUPS:
        importlib.import_module(f"worker.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sr`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        if args.command != "dev":
            import os
            from pathlib import Path

            from worker.settings import load_settings

            # Configuration is read exactly once, here.
            args.settings = load_settings(Path(args.config) if args.config else None, os.environ)
        return handler(args)
    except SRError as exc:
        print(f"sr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``sr schemas --json | head``): stop quietly, as `cat` would,
        # and keep Python from printing a second error when it flushes stdout at exit.
        import contextlib
        import os

        with contextlib.suppress(OSError, ValueError):  # stdout may not be a file descriptor
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 141


def run() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
