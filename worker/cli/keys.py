"""``sr keys generate`` / ``sr keys public``: signing keys for signed input (contract §10).

``generate`` writes a new private key file (mode 0600, never over an existing file, see
:func:`worker.signing.generate_key_file`) and prints its public half as a key-set snippet::

    {"tenant-a": [{"key_id": "tenant-a-3f9c2e1a", "public_key": "<base64>"}]}

which belongs in ``SR_SIGNING_KEYS`` (a tenant's key), ``SR_OPERATOR_KEYS`` (an operator's)
or ``SR_ENGINE_KEYS`` (an engine's); a one-line hint on stderr says so, so that stdout stays
exactly the JSON (``sr keys generate ... > tenant-a.pub.json``). ``public`` prints the same
snippet for an existing key file. The private key is never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from worker.cli.options import add_output, resolve_output
from worker.errors import ConfigError, InputError
from worker.signing import SIGNING_KEY_ENV, Signer, generate_key_file, key_set, signer_from

__all__ = ["cmd_generate", "cmd_public", "register"]

_HINT = ("sr: add this to SR_SIGNING_KEYS if {p!r} is a tenant, SR_OPERATOR_KEYS if an operator, "
         "SR_ENGINE_KEYS if an engine (merged into the JSON object there){secret}")


def register(sub: Any) -> None:
    """Register ``keys`` and its sub-commands on ``sub`` (the top-level argparse sub-parsers)."""
    p: argparse.ArgumentParser = sub.add_parser("keys", help="create and show signing keys (contract §10)")
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND",
                                help="generate: a new key file; public: the key-set entry of a key file")
    gen = keys_sub.add_parser(
        "generate", help="write a new Ed25519 private key file and print its public key-set entry",
        description="Write a new Ed25519 signing key for PRINCIPAL to FILE (mode 0600; an existing file is never "
                    "overwritten) and print the key-set JSON to add to SR_SIGNING_KEYS / SR_OPERATOR_KEYS / "
                    "SR_ENGINE_KEYS.",
        epilog="examples:\n  sr keys generate --principal tenant-a --out tenant-a.key > tenant-a.pub.json\n"
               "  sr keys generate --principal ops-alice --out alice.key -o json\n")
    gen.add_argument("--principal", required=True,
                     help="the tenant, operator or engine name the key signs for (an identifier)")
    gen.add_argument("--key-id", default=None,
                     help="the key's id in key sets (default: <principal>-<8 hex of the public key's sha256>)")
    gen.add_argument("--out", required=True, type=Path, help="where to write the private key file (kept secret)")
    add_output(gen)
    gen.set_defaults(handler=cmd_generate)
    pub = keys_sub.add_parser(
        "public", help="print the public key-set entry of a private key file",
        epilog="examples:\n  sr keys public --key tenant-a.key\n  SR_SIGNING_KEY=tenant-a.key sr keys public -o json\n")
    pub.add_argument("--key", default=None, metavar="FILE", help=f"the private key file (default: ${SIGNING_KEY_ENV})")
    add_output(pub)
    pub.set_defaults(handler=cmd_public)


def cmd_generate(args: argparse.Namespace) -> int:
    """Write the key file, print the key-set snippet; the hint goes to stderr.

    Raises:
        InputError: ``--out -`` (a private key is never printed), the file exists or cannot be
            written, or an invalid principal / key id.
    """
    if str(args.out) == "-":
        raise InputError("--out must be a file: the private key is never printed")
    try:
        signer = generate_key_file(args.out, principal=args.principal, key_id=args.key_id)
    except ConfigError as exc:
        # The principal, the key id and the file all come from this command line: a usage
        # error (exit 2), unlike an unusable --key / $SR_SIGNING_KEY elsewhere (configuration).
        raise InputError(str(exc)) from exc
    _print(signer, args.out, output=resolve_output(args))
    print(_HINT.format(p=signer.principal, secret=f"; keep {args.out} secret"), file=sys.stderr)
    return 0


def cmd_public(args: argparse.Namespace) -> int:
    """Print the key-set snippet of ``--key`` (else ``$SR_SIGNING_KEY``).

    Raises:
        InputError: neither names a key file.
        ConfigError: the key file cannot be used.
    """
    signer = signer_from(args.key, os.environ)
    if signer is None:
        raise InputError(f"no key file: give --key FILE or set {SIGNING_KEY_ENV}")
    _print(signer, Path(args.key or os.environ[SIGNING_KEY_ENV]), output=resolve_output(args))
    print(_HINT.format(p=signer.principal, secret=""), file=sys.stderr)
    return 0


def _print(signer: Signer, path: Path, *, output: str) -> None:
    # table (the default) prints the key-set snippet itself, ready to paste; json/jsonl the
    # whole description in one line.
    snippet = key_set(signer)
    if output != "table":
        print(json.dumps({"principal": signer.principal, "key_id": signer.key_id,
                          "public_key": signer.key_set_entry()["public_key"], "key_file": str(path),
                          "key_set": snippet}))
    else:
        print(json.dumps(snippet, indent=2))
