"""``sr``: the Scenario Runner command line.

One rule for where a command lives: ``sr NAME ...`` is implemented in ``worker/cli/NAME.py``,
which defines ``register(sub)`` (adding ``NAME`` and its sub-commands to the parser) and the
``cmd_*`` handlers. :data:`COMMAND_GROUPS` lists the modules, in ``sr --help`` order; clients
come from :mod:`worker.runtime.compose`, never from an adapter directly.

No failure prints a traceback: a usage error, an :class:`~worker.errors.SRError`, an
unusable file named on the command line and a bad value each end in one ``sr: error: ...``
line on stderr and the exit code of :data:`ERROR_EXIT_CODES` (documented in contract §7 and
in ``sr --help``). Only an unexpected exception (a bug) prints its traceback, and only with
``SR_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from worker.errors import (
    AuthorizationError,
    ConfigError,
    InputError,
    ObjectNotFoundError,
    PolicyError,
    RetryableError,
    RunNotFoundError,
    SRError,
    UnauthenticatedError,
)

if TYPE_CHECKING:
    from worker.settings import Settings

Handler = Callable[[argparse.Namespace], int]


class ExitCode(IntEnum):
    """The exit codes of ``sr`` (contract §7)."""

    OK = 0
    FAILURE = 1  # a generic failure, or a check that did not pass (verify)
    USAGE = 2  # bad command line or input value (argparse's code)
    CONFIG = 3  # configuration missing or invalid
    FORBIDDEN = 4  # not authorized / not authenticated
    NOT_FOUND = 5  # an unknown run or object
    PARTIAL = 6  # some of many items failed (the others succeeded)
    TEMPFAIL = 75  # a server unavailable: retry later (sysexits EX_TEMPFAIL)
    INTERRUPTED = 130  # Ctrl-C
    BROKEN_PIPE = 141  # stdout closed by its reader


#: SR's error classes → exit code; the first class the error is an instance of wins, so the
#: more specific classes come first (UnauthenticatedError is an InputError, for one).
ERROR_EXIT_CODES: Final[tuple[tuple[type[SRError], ExitCode], ...]] = (
    (ConfigError, ExitCode.CONFIG),
    (PolicyError, ExitCode.CONFIG),
    (AuthorizationError, ExitCode.FORBIDDEN),
    (UnauthenticatedError, ExitCode.FORBIDDEN),
    (ObjectNotFoundError, ExitCode.NOT_FOUND),
    (RunNotFoundError, ExitCode.NOT_FOUND),
    (RetryableError, ExitCode.TEMPFAIL),
    (InputError, ExitCode.USAGE),
    (SRError, ExitCode.FAILURE),
)

#: errno values of a file named on the command line that cannot be used: a usage error.
_BAD_PATH_ERRNOS: Final = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM,
                                     errno.ENAMETOOLONG, errno.ELOOP})

#: The command modules of ``sr``, in help order (module name = command name).
COMMAND_GROUPS: Final = ("dev", "run", "submit", "status", "trigger", "runs", "reemit", "replay", "index", "topics",
                         "db", "runpack", "engine", "keys", "schemas", "follow", "config")

_EPILOG = """\
exit codes:
  0    success
  1    failure, or a check that did not pass (runpack verify, follow ready --verify)
  2    usage error: bad arguments or input values, a file that cannot be read
  3    configuration missing or invalid (also the policy file)
  4    not authorized or not authenticated
  5    not found (unknown run, missing object)
  6    partial success: some items failed (replay, index rebuild, submit)
  75   temporarily unavailable: Kafka, Postgres, S3 or the registry down; retry later
  130  interrupted
  141  output closed by its reader (sr runs -o jsonl | head)

environment: SR_CONFIG (config file), SR_OPERATOR (default --operator), SR_DEBUG=1 (tracebacks
of unexpected errors); every setting is an SR_* variable (sr config show lists them).

examples:
  sr --version
  sr config show -o json
  sr runs --status WAITING --since 2h -o jsonl
  sr follow ready --from 15m --until-end
"""


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code of an error that ended a command (see :data:`ERROR_EXIT_CODES`)."""
    if isinstance(exc, SRError):
        return next(code for cls, code in ERROR_EXIT_CODES if isinstance(exc, cls))
    if isinstance(exc, ConnectionError | TimeoutError):
        return ExitCode.TEMPFAIL
    if isinstance(exc, OSError):
        return ExitCode.USAGE if exc.errno in _BAD_PATH_ERRNOS else ExitCode.FAILURE
    if isinstance(exc, ValueError):
        return ExitCode.USAGE
    return ExitCode.FAILURE


def package_version() -> str:
    """SR's version: the installed distribution's (whatever its name), else the package's own."""
    from worker.version import installed_version

    return installed_version()


class _VersionAction(argparse.Action):
    """``--version``: looked up only when asked (reading the installed metadata takes time)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"sr {package_version()}")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``sr`` argument parser with every command module registered and the global
    options (``--config``, ``-o``) on the top level and on every command."""
    from worker.cli.options import SRArgumentParser, add_global_options, leaf_parsers

    parser = SRArgumentParser(prog="sr", description="Scenario Runner: the run readiness authority.",
                              epilog=_EPILOG)
    parser.add_argument("--version", action=_VersionAction, help="print sr's version and exit")
    add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (sr COMMAND --help shows its options and examples)")
    for name in COMMAND_GROUPS:
        importlib.import_module(f"worker.cli.{name}").register(sub)
    for _path, leaf in leaf_parsers(parser):
        add_global_options(leaf, top=False)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")).strip()
    return text or type(exc).__name__


#: Commands that run as services: their INFO lines are what an operator watches.
SERVICE_COMMANDS: Final = frozenset({"run", "engine", "dev"})


def configure_command_logging(command: str, settings: Settings | None, environ: Mapping[str, str]) -> None:
    """Logging for every command: SR's JSON (or text) lines, librdkafka's included.

    Services log at ``SR_LOG_LEVEL`` (default INFO); one-shot commands at WARNING unless
    ``SR_LOG_LEVEL`` is set, so their own output is not buried in INFO lines. ``SR_*``
    variables that configure nothing are warned about here, once the lines have a format.
    """
    from worker.logs import configure_logging

    if settings is None:  # sr dev reads no settings: the two logging variables, leniently
        level = environ.get("SR_LOG_LEVEL", "INFO").strip().upper()
        fmt = environ.get("SR_LOG_FORMAT", "json").strip().lower()
        configure_logging(level if level in logging.getLevelNamesMapping() else "INFO",
                          fmt=fmt if fmt in ("json", "text") else "json")
        return
    explicit = "log_level" in settings.model_fields_set
    level = settings.log_level if explicit or command in SERVICE_COMMANDS else "WARNING"
    configure_logging(level, fmt=settings.log_format)
    # A one-shot command ends in one `sr: error:` line that says why; librdkafka's per-attempt
    # complaints before it are noise there (SR_LOG_LEVEL shows them).
    quiet_kafka = not explicit and command not in SERVICE_COMMANDS
    logging.getLogger("sr.librdkafka").setLevel(logging.CRITICAL if quiet_kafka else logging.NOTSET)
    from worker.settings import unknown_setting_variables

    for name in unknown_setting_variables(environ):
        logging.getLogger("sr.config").warning("unknown environment variable ignored: %s", name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sr`` console script; returns the process exit code."""
    debug = os.environ.get("SR_DEBUG", "").strip() not in ("", "0")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse has printed them
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    handler: Handler = args.handler
    try:
        if getattr(args, "needs_settings", True):
            from worker.cli.options import config_path
            from worker.settings import load_settings

            # Configuration is read exactly once, here.
            config_file = config_path(args)
            args.settings = load_settings(Path(config_file) if config_file else None, os.environ)
        configure_command_logging(args.command, getattr(args, "settings", None), os.environ)
        return handler(args)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``sr schemas -o jsonl | head``): stop quietly, as `cat` would,
        # and keep Python from printing a second error when it flushes stdout at exit.
        import contextlib

        with contextlib.suppress(OSError, ValueError):  # stdout may not be a file descriptor
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.BROKEN_PIPE
    except (SRError, OSError, ValueError) as exc:
        if debug:
            traceback.print_exc()
        print(f"sr: error: {_one_line(exc)}", file=sys.stderr)
        return exit_code_for(exc)
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, the traceback on request
        if debug:
            traceback.print_exc()
        print(f"sr: error: unexpected {type(exc).__name__}: {_one_line(exc)} "
              "(a bug; run with SR_DEBUG=1 for the traceback)", file=sys.stderr)
        return ExitCode.FAILURE


def run() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
