"""``sr runpack export|verify``: audit runpacks (a run's whole story, verifiable offline).

Exit codes: 0 success; 1 ``verify`` found problems; any error as in ``sr --help`` (5 for an
unknown run, 75 for a server that is down, ...), printed by ``main``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from worker.cli.common import print_document
from worker.cli.options import add_output, resolve_output
from worker.cli.timespec import is_relative, parse_time
from worker.errors import InputError
from worker.runpack.export import Progress as ProgressFn
from worker.settings import Settings

__all__ = ["cmd_export", "cmd_verify", "register"]


def register(sub: Any) -> None:
    """Register ``runpack export|verify`` on ``sub`` (the top-level sub-parsers)."""
    runpack = sub.add_parser("runpack", help="audit runpacks: export one run's whole story, verify it offline")
    actions = runpack.add_subparsers(dest="runpack_cmd", required=True, metavar="ACTION",
                                     help="export: write a run's runpack; verify: check one offline")

    p = actions.add_parser(
        "export", help="export a run's intent, plan, ledger, facts views, receipts and publications",
        description="Write a deterministic runpack (manifest last) below DIR or s3://bucket/prefix at "
                    "tenant/<t>/namespace/<n>/scenario/<s>/run/<run_id>/plan/<plan_hash>/.",
        epilog="examples:\n  sr runpack export 3f9c...e1a0 --to ./runpacks\n"
               "  sr runpack export 3f9c...e1a0 --to s3://audit/runpacks --retain-until 2031-01-01 "
               "--lock-mode compliance -o json\n",
    )
    p.add_argument("run_id", help="the run (32 lowercase hex)")
    p.add_argument("--to", required=True, metavar="DIR|s3://BUCKET/PREFIX", help="export target")
    p.add_argument("--tenant", help="the run's tenant (needed with --no-index; checked against the index)")
    p.add_argument("--namespace", help="the run's namespace (needed with --no-index; checked against the index)")
    p.add_argument("--no-index", action="store_true",
                   help="do not read Postgres: export from S3 alone (no publications)")
    p.add_argument("--retain-until", type=_future_time, metavar="TIME",
                   help="put S3 Object Lock retention until this time on every exported object: an ISO-8601 date "
                        "or time in the future (no zone = UTC)")
    p.add_argument("--lock-mode", choices=["governance", "compliance"], default="governance",
                   help="Object Lock mode for --retain-until (default: governance)")
    add_output(p)
    p.set_defaults(handler=cmd_export)

    p = actions.add_parser(
        "verify", help="verify a runpack offline (exit 0 only if every check passes)",
        description="Verify a runpack directory or s3:// prefix (the one holding manifest.json) using only its "
                    "own files. Every problem is reported, not just the first. Exit 0 only if every check "
                    "passed, 1 if any failed.",
        epilog="examples:\n  sr runpack verify ./runpacks/tenant/t/namespace/n/scenario/s/run/<id>/plan/<hash>\n"
               "  sr runpack verify s3://audit/runpacks/... --expect-root-hash 9a1f... -o json\n",
    )
    p.add_argument("location", metavar="DIR|s3://BUCKET/PREFIX", help="the runpack root")
    p.add_argument("--expect-root-hash", metavar="HEX",
                   help="the root hash recorded at export time; any other root hash fails verification")
    add_output(p)
    p.set_defaults(handler=cmd_verify)


@contextmanager
def _progress(label: str) -> Iterator[ProgressFn | None]:
    """A rich progress bar on stderr when it is a terminal; otherwise no callback."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(path: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=f"{label} {escape(path)}")

        yield update


def _future_time(text: str) -> datetime:
    """``--retain-until``: a time of the CLI's grammar (:mod:`worker.cli.timespec`); a relative
    duration would be in the past, so it is refused here with a clear word.

    Raises:
        argparse.ArgumentTypeError: not a time, or a duration ("that long ago").
    """
    try:
        value = parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if is_relative(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a time in the past; give an ISO-8601 date or time")
    return value


# ----------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    """Export one run's runpack; prints where it went and its root hash.

    Raises:
        InputError: an invalid ``--retain-until`` / ``--lock-mode``.
        RunNotFoundError / ObjectNotFoundError: the run is unknown.
        SRError: any other refusal or failure (printed by ``main``).
    """
    from worker.app.truth import TruthStore
    from worker.runpack.export import export_run, open_target
    from worker.runpack.retention import LockMode, Retention
    from worker.runtime.compose import object_store, run_index

    settings: Settings = args.settings
    retention = None
    if args.retain_until is not None:
        try:
            retention = Retention.until(LockMode(args.lock_mode.upper()), args.retain_until)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
    with ExitStack() as stack:
        store = stack.enter_context(object_store(settings))
        index = None if args.no_index else stack.enter_context(run_index(settings))
        target = open_target(args.to, store, retention)
        with _progress("exporting") as progress:
            result = export_run(
                args.run_id, target, truth=TruthStore(store, settings.s3_bucket, settings.s3_prefix), index=index,
                tenant_id=args.tenant, namespace=args.namespace, progress=progress,
            )
    doc = {"run_id": result.run_id, "location": result.location, "root_hash": result.root_hash,
           "files": result.files, "bytes": result.bytes,
           "retention": None if retention is None else {"mode": retention.mode.value,
                                                        "retain_until": retention.retain_until.isoformat()}}

    def human() -> None:
        print(f"exported run {result.run_id} to {result.location}")
        print(f"root hash {result.root_hash} ({result.files} files, {result.bytes} bytes)")
        if retention is not None:
            print(f"object lock {retention.mode.value} until {retention.retain_until.isoformat()}")

    print_document(resolve_output(args), doc, human)
    return 0


# ----------------------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a runpack offline. Exit 0 only if every check passed, 1 otherwise.

    Raises:
        SRError: the runpack could not even be listed (e.g. S3 unreachable: exit 75).
    """
    from worker.runpack.verify import open_source, verify_runpack

    with ExitStack() as stack:
        store = None
        if args.location.startswith("s3://"):
            from worker.runtime.compose import object_store

            store = stack.enter_context(object_store(args.settings))
        try:
            source = open_source(args.location, store)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        with _progress("verifying") as progress:
            report = verify_runpack(source, expect_root_hash=args.expect_root_hash, progress=progress)
    output = resolve_output(args)
    if output != "table":
        print_document(output, report.to_dict(), lambda: None)
        return 0 if report.ok else 1
    console = Console(highlight=False, soft_wrap=True)
    if report.ok:
        console.print(f"[green]OK[/] runpack {escape(report.location)}: run {report.run_id}, "
                      f"{report.files_checked} files, root hash {report.root_hash}")
        return 0
    console.print(f"[red]FAILED[/] runpack {escape(report.location)}: {len(report.problems)} problem(s)")
    for problem in report.problems:
        where = f" {escape(problem.path)}:" if problem.path else ""
        console.print(f"  [bold]{problem.code}[/]{where} {escape(problem.detail)}")
    return 1
