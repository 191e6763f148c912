"""``sr``: the Scenario Runner command line.

Every expected failure is an :class:`~worker.errors.SRError`; it is printed as one line on
stderr (``sr: error: ...``) with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from worker.errors import SRError

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """Build the ``sr`` argument parser with every sub-command registered."""
    from worker.cli import dev, operate, ops
    from worker.cli import runpack as runpack_cli

    parser = argparse.ArgumentParser(prog="sr", description="Scenario Runner: the run readiness authority.")
    parser.add_argument("--config", help="TOML config file (environment variables override it)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev.register(sub)
    ops.register(sub)
    runpack_cli.register(sub, operate.register(sub))
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


def run() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
