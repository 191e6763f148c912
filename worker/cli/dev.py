"""``sr dev``: the zero-setup local stack (PostgreSQL, SeaweedFS S3, Tansu Kafka).

Starts the embedded real servers under a state directory, prints their endpoints as the
environment ``sr`` reads, and runs until Ctrl-C / SIGTERM, then stops every process it
started, by PID.
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

from worker.embedded.stack import EmbeddedStack, Endpoints, StackConfig


def register(sub: Any) -> None:
    """Register the ``dev`` sub-command on ``sub`` (an argparse sub-parsers object)."""
    p: argparse.ArgumentParser = sub.add_parser("dev", help="run the embedded stack (zero-setup demo)")
    p.add_argument("--state-dir", type=Path, default=Path(".sr-dev"),
                   help="where server data and logs go (wiped at start; default: .sr-dev)")
    p.add_argument("--kafka-port", type=int, default=0, help="Kafka port (default: a free port)")
    p.add_argument("--pg-port", type=int, default=0, help="PostgreSQL port (default: a free port)")
    p.add_argument("--s3-port", type=int, default=0, help="S3 gateway port (default: a free port)")
    p.add_argument("--bucket", default="scenario-runner", help="bucket to create (3-63 chars)")
    p.add_argument("--weed-bin", type=Path, default=None, help="explicit path to the SeaweedFS weed binary")
    p.add_argument("--tansu-bin", type=Path, default=None, help="explicit path to the tansu binary")
    p.add_argument("--pg-bin-dir", type=Path, default=None, help="explicit PostgreSQL bin directory")
    p.add_argument("--start-timeout", type=float, default=60.0, help="seconds to wait for each server")
    p.add_argument("--demo", action="store_true",
                   help="also run the worker, seed sample evidence, submit sample intents and print events")
    p.add_argument("--exit-when-done", action="store_true",
                   help="with --demo: stop once every sample reached its expected outcome")
    p.set_defaults(handler=run_dev)


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


def run_dev(args: argparse.Namespace) -> int:
    """Run the embedded stack until interrupted. Returns 0 on a clean stop."""
    console = Console(stderr=False)
    shutdown = _Shutdown()
    shutdown.install()
    state_dir: Path = args.state_dir
    if state_dir.exists():
        shutil.rmtree(state_dir)
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
