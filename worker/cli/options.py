"""What every ``sr`` command's parser shares: one-line usage errors, help layout, the global
options (``--config``, ``-o/--output``), ``--operator`` and the deprecated aliases.

Global options are accepted before *and* after the sub-command (``sr --config f.toml runs``
and ``sr runs --config f.toml``): :func:`add_global_options` puts them on the top-level
parser and on every leaf parser with ``default=argparse.SUPPRESS``, so a value given on
either level survives and the leaf one wins. :func:`resolve_output` then picks the format.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from typing import Any, Final, NoReturn

__all__ = ["OUTPUTS", "SRArgumentParser", "add_global_options", "add_operator", "add_output", "leaf_parsers",
           "resolve_output"]

#: The output formats: table (for people), json (one document), jsonl (one object per line).
OUTPUTS: Final = ("table", "json", "jsonl")

#: Where the config file path comes from when ``--config`` is not given.
CONFIG_ENV: Final = "SR_CONFIG"
#: Where ``--operator`` defaults from (then the OS user).
OPERATOR_ENV: Final = "SR_OPERATOR"


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps prose as argparse does, but keeps text that has line breaks (the examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class SRArgumentParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``sr: error: ...``, exit 2).

    Every sub-parser is one too (argparse makes sub-parsers of the parent's class).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print one ``sr: error:`` line naming where to find the usage, and exit 2.

        argparse's own "argument --x: ..." becomes "--x: ...", the form SR's other errors use.
        """
        text = re.sub(r"^argument ", "", message)
        self.exit(2, f"sr: error: {text} (see '{self.prog} --help')\n")


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Add ``--config`` (and, on the top-level parser, ``-o/--output``) to ``parser``.

    A leaf parser that already has a ``--config`` of its own (``sr topics create --config
    KEY=VALUE``) keeps it: there the file goes before the sub-command or in ``SR_CONFIG``.
    """
    if "--config" not in parser._option_string_actions:
        parser.add_argument("--config", dest="config_file", metavar="FILE", default=argparse.SUPPRESS,
                            help=f"TOML configuration file (default: ${CONFIG_ENV}; environment variables "
                                 "override it); accepted before or after the command")
    if top:
        parser.add_argument("-o", "--output", choices=OUTPUTS, default=argparse.SUPPRESS,
                            help="output of commands that print results: table (for people), json (one "
                                 "document), jsonl (one object per line); default per command")


def add_output(parser: argparse.ArgumentParser, *, default: str = "table", legacy_json: str | None = "json",
               choices: tuple[str, ...] = OUTPUTS) -> None:
    """Give a result-printing command ``-o/--output`` (and, if it had one, the old ``--json``).

    ``default`` is the command's format without ``-o``; ``legacy_json`` is the format the
    command's deprecated ``--json`` has always printed (``json`` for one document, ``jsonl``
    where it printed one object per line), so scripts written against it keep working.
    """
    parser.add_argument("-o", "--output", choices=choices, default=argparse.SUPPRESS,
                        help=f"table (for people), json (one document) or jsonl (one object per line); "
                             f"default {default}")
    if legacy_json is not None:
        parser.add_argument("--json", dest="output", action="store_const", const=legacy_json,
                            default=argparse.SUPPRESS, help=f"deprecated: same as -o {legacy_json}")
    parser.set_defaults(output_default=default)


def resolve_output(args: argparse.Namespace) -> str:
    """The output format of this invocation: ``-o`` (after, else before the command), else the
    command's own default, else ``table``."""
    explicit = getattr(args, "output", None)
    return str(explicit or getattr(args, "output_default", "table"))


def config_path(args: argparse.Namespace) -> str | None:
    """The config file of this invocation: ``--config``, else ``$SR_CONFIG``, else none."""
    explicit = getattr(args, "config_file", None)
    return explicit or os.environ.get(CONFIG_ENV) or None


def add_operator(parser: argparse.ArgumentParser, *aliases: str,
                 default_help: str = f"${OPERATOR_ENV}, else the OS user") -> None:
    """``--operator NAME``: who acts (default ``$SR_OPERATOR``, else the OS user); ``aliases``
    are deprecated spellings kept so scripts do not break."""
    parser.add_argument("--operator", *aliases, dest="operator", metavar="NAME", default=None,
                        help=f"who acts, recorded with the action (default: {default_help})"
                             + (f"; {', '.join(aliases)} is a deprecated alias" if aliases else ""))


def leaf_parsers(parser: argparse.ArgumentParser,
                 path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser below ``parser`` that runs a command, with its command path
    (``("index", "rebuild")``), in registration order."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for action in subs:
        for name, child in action.choices.items():
            yield from leaf_parsers(child, (*path, name))


def warn(message: str) -> None:
    """One ``sr: warning:`` line on stderr."""
    print(f"sr: warning: {message}", file=sys.stderr)
