"""``sr dev``: the zero-setup local stack (PostgreSQL, SeaweedFS S3, Tansu Kafka).

Starts the embedded real servers under a state directory, prints their endpoints as the
environment ``sr`` reads, and runs until Ctrl-C / SIGTERM, then stops every process it
started, by PID.

The state directory is wiped at start, but only if ``sr dev`` created it: a directory it
creates gets a marker file (:data:`STATE_MARKER`); an existing directory that is not empty
and has no marker is refused (exit 2), never deleted, so a mistyped ``--state-dir ~`` costs
nothing.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.cli.timespec import DURATION_HELP, duration_arg
from worker.embedded.stack import EmbeddedStack, Endpoints, StackConfig
from worker.errors import InputError

#: The file that marks a state directory as created by ``sr dev`` (and so, safe to wipe).
STATE_MARKER = ".sr-dev-state"
_MARKER_TEXT = "This directory was created by `sr dev`, which wipes it at every start.\n"

_EXAMPLES = """\
examples:
  sr dev                                  # servers only; prints the export lines
  sr dev --demo                           # also the worker, the engine and the samples
  sr dev --demo --exit-when-done --state-dir /tmp/sr-demo
"""


def register(sub: Any) -> None:
    """Register the ``dev`` sub-command on ``sub`` (an argparse sub-parsers object)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "dev", help="run the embedded stack (zero-setup demo)", epilog=_EXAMPLES,
        description="Start embedded Kafka (Tansu), PostgreSQL and SeaweedFS S3 on loopback ports and print the "
                    "environment that points sr at them; runs until Ctrl-C. Reads no configuration (--config "
                    "is accepted and ignored).")
    p.add_argument("--state-dir", type=Path, default=Path(".sr-dev"),
                   help=f"where server data and logs go (default: .sr-dev); wiped at start only if sr dev "
                        f"created it (marker file {STATE_MARKER}); a non-empty directory without it is refused")
    p.add_argument("--kafka-port", type=int, default=0, help="Kafka port (default: a free port)")
    p.add_argument("--pg-port", type=int, default=0, help="PostgreSQL port (default: a free port)")
    p.add_argument("--s3-port", type=int, default=0, help="S3 gateway port (default: a free port)")
    p.add_argument("--bucket", default="scenario-runner", help="bucket to create (3-63 chars)")
    p.add_argument("--weed-bin", type=Path, default=None, help="explicit path to the SeaweedFS weed binary")
    p.add_argument("--tansu-bin", type=Path, default=None, help="explicit path to the tansu binary")
    p.add_argument("--pg-bin-dir", type=Path, default=None, help="explicit PostgreSQL bin directory")
    p.add_argument("--start-timeout", type=duration_arg(minimum=1.0), default=60.0, metavar="DURATION",
                   help=f"how long to wait for each server ({DURATION_HELP}; default 60)")
    p.add_argument("--demo", action="store_true",
                   help="also run the worker, seed sample evidence, submit sample intents and print events")
    p.add_argument("--exit-when-done", action="store_true",
                   help="with --demo: stop once every sample reached its expected outcome")
    p.set_defaults(handler=run_dev, needs_settings=False)


class _Shutdown:
    """Turns the first SIGINT/SIGTERM into KeyboardInterrupt; later ones are ignored.

    Raising from the handler unwinds whatever the main thread is doing (even a start-up
    wait) through the stack's context manager, which stops every server it started.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.requested.is_set():
            return
        self.requested.set()
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


def print_endpoints(console: Console, eps: Endpoints, elapsed: float) -> None:
    """Show the running servers and the environment that points ``sr`` at them."""
    table = Table(title=f"embedded stack up in {elapsed:.1f}s", show_header=True)
    table.add_column("server")
    table.add_column("endpoint")
    table.add_row("kafka (tansu)", eps.kafka_bootstrap or "-")
    table.add_row("postgres", eps.pg_dsn or "-")
    table.add_row("s3 (seaweedfs)", f"{eps.s3_endpoint} bucket={eps.s3_bucket}")
    console.print(table)
    for key, value in eps.as_env().items():
        console.print(f"export {key}={value}", highlight=False, soft_wrap=True)


def prepare_state_dir(state_dir: Path) -> None:
    """Make ``state_dir`` an empty directory marked as ``sr dev``'s own.

    A missing or empty directory is created and marked; a marked one is wiped and marked
    again. Anything else is left exactly as it is.

    Raises:
        InputError: ``state_dir`` is a symlink or not a directory, or a directory that is not
            empty and has no marker (so ``sr dev`` did not create it).
        OSError: the directory cannot be created, wiped or marked.
    """
    marker = state_dir / STATE_MARKER
    if state_dir.is_symlink() or (state_dir.exists() and not state_dir.is_dir()):
        raise InputError(f"--state-dir {state_dir} is not a directory sr dev created: refusing to use it")
    if state_dir.is_dir() and any(state_dir.iterdir()):
        # Only a regular marker file counts: a symlink named like it proves nothing.
        if not marker.is_file() or marker.is_symlink():
            raise InputError(f"--state-dir {state_dir} is not empty and was not created by sr dev (no "
                             f"{STATE_MARKER} marker): refusing to delete it; choose another directory or "
                             "remove it yourself")
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(_MARKER_TEXT, encoding="utf-8")


def run_dev(args: argparse.Namespace) -> int:
    """Run the embedded stack until interrupted. Returns 0 on a clean stop.

    Raises:
        InputError: the state directory is not one ``sr dev`` may wipe (see
            :func:`prepare_state_dir`).
        StackError: a server could not be started.
    """
    console = Console(stderr=False)
    state_dir: Path = args.state_dir
    prepare_state_dir(state_dir)
    shutdown = _Shutdown()
    shutdown.install()
    cfg = StackConfig(
        state_dir=state_dir.resolve(),
        kafka_port=args.kafka_port,
        pg_port=args.pg_port,
        s3_port=args.s3_port,
        bucket=args.bucket,
        weed_bin=args.weed_bin,
        tansu_bin=args.tansu_bin,
        pg_bin_dir=args.pg_bin_dir,
        start_timeout=args.start_timeout,
    )
    started = time.monotonic()
    try:
        with EmbeddedStack(cfg) as stack:
            if stack.endpoints is None:  # pragma: no cover - start() sets it
                return 1
            print_endpoints(console, stack.endpoints, time.monotonic() - started)
            console.print("[bold green]sr dev ready[/] — Ctrl-C to stop", highlight=False)
            sys.stdout.flush()
            if args.demo:
                from worker.embedded.demo import run_demo

                ok = run_demo(stack.endpoints, console, shutdown.requested, exit_when_done=args.exit_when_done)
                if args.exit_when_done:
                    return 0 if ok else 1
            while not shutdown.requested.wait(0.5):
                pass
    except KeyboardInterrupt:
        pass
    console.print("sr dev stopped", highlight=False)
    return 0
