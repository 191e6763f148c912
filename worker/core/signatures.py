"""Signed input (contract §10): the ``sr-signature`` header, key sets, and Ed25519 checks.

A message is signed over its *exact value bytes* (the Kafka value as consumed, framing
included), and carries one header::

    sr-signature: key=<key_id>;ed25519=<base64 of the 64-byte Ed25519 signature>

A key set maps a principal (a tenant, an operator or an engine name) to its public keys, in
the JSON shape the settings take::

    {"tenant-a": [{"key_id": "a-2026", "public_key": "<base64 of the raw 32-byte key>"}, ...]}

Several keys per principal allow rotation (list old and new, sign with new, then drop old).
A key id names exactly one key in a set, so "signed by another principal's key" is told
apart from "signed by an unknown key".

Everything here is pure computation (no I/O): parsing is strict and bounded (a hostile
header costs at most :data:`MAX_SIGNATURE_HEADER_BYTES` of work before it is refused) and
every refusal is an :class:`~worker.errors.UnauthenticatedError` whose message says which
check failed, never the key material.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from worker.errors import ConfigError, UnauthenticatedError

__all__ = [
    "KEY_ID_PATTERN",
    "MAX_SIGNATURE_HEADER_BYTES",
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "SIGNATURE_HEADER",
    "KeyRing",
    "SignatureHeader",
    "parse_signature_header",
    "verify_signed",
]

SIGNATURE_HEADER: Final = "sr-signature"
#: Longest header value accepted (bytes): ``key=`` + a 128-character id + ``;ed25519=`` + 88
#: base64 characters is 229; anything much longer is hostile and refused before decoding.
MAX_SIGNATURE_HEADER_BYTES: Final = 512
PUBLIC_KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
KEY_ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
_HEADER_RE: Final = re.compile(rf"key=({KEY_ID_PATTERN});ed25519=([A-Za-z0-9+/]{{86}}==)")
_KEY_ID_RE: Final = re.compile(KEY_ID_PATTERN)
_PRINCIPAL_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class SignatureHeader:
    """A parsed ``sr-signature`` header: which key signed, and the 64-byte signature."""

    key_id: str
    signature: bytes

    def encode(self) -> bytes:
        """The header value (ASCII bytes) in the one form SR accepts."""
        return f"key={self.key_id};ed25519={base64.b64encode(self.signature).decode('ascii')}".encode("ascii")


def parse_signature_header(raw: bytes | None) -> SignatureHeader:
    """Parse an ``sr-signature`` header value (strict: one form, standard padded base64).

    Raises:
        UnauthenticatedError: missing, too long, not ASCII, not ``key=<id>;ed25519=<b64>``,
            or the signature is not 64 bytes.
    """
    if raw is None:
        raise UnauthenticatedError(f"the message carries no {SIGNATURE_HEADER} header")
    if len(raw) > MAX_SIGNATURE_HEADER_BYTES:
        raise UnauthenticatedError(f"{SIGNATURE_HEADER} header is {len(raw)} bytes; at most "
                                   f"{MAX_SIGNATURE_HEADER_BYTES} are accepted")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise UnauthenticatedError(f"{SIGNATURE_HEADER} header is not ASCII") from None
    match = _HEADER_RE.fullmatch(text)
    if match is None:
        raise UnauthenticatedError(f"{SIGNATURE_HEADER} header is not key=<key_id>;ed25519=<base64 signature>")
    try:
        signature = base64.b64decode(match.group(2), validate=True)
    except binascii.Error:
        raise UnauthenticatedError(f"{SIGNATURE_HEADER} signature is not valid base64") from None
    if len(signature) != SIGNATURE_BYTES:  # 86 chars + "==" is always 64 bytes; kept as the rule
        raise UnauthenticatedError(f"{SIGNATURE_HEADER} signature is {len(signature)} bytes, not {SIGNATURE_BYTES}")
    if base64.b64encode(signature).decode("ascii") != match.group(2):
        # The last character's unused bits must be zero: one signature, one spelling.
        raise UnauthenticatedError(f"{SIGNATURE_HEADER} signature is not in canonical base64")
    return SignatureHeader(match.group(1), signature)


@dataclass(frozen=True)
class _Key:
    principal: str
    public: Ed25519PublicKey


class KeyRing:
    """Principal → public keys, from the contract's JSON shape; key ids unique across the set."""

    def __init__(self, keys: Mapping[str, Mapping[str, bytes]], *, name: str = "key set") -> None:
        """``keys``: principal → key_id → raw 32-byte public key.

        Raises:
            ConfigError: an invalid principal or key id, a key id listed twice, a key that is
                not 32 bytes or not a valid Ed25519 point, or a principal without keys.
        """
        self.name = name
        self._by_id: dict[str, _Key] = {}
        for principal, ids in keys.items():
            if _PRINCIPAL_RE.fullmatch(principal) is None:
                raise ConfigError(f"{name}: principal {principal[:40]!r} is not a valid identifier")
            if not ids:
                raise ConfigError(f"{name}: principal {principal!r} lists no keys")
            for key_id, raw in ids.items():
                if _KEY_ID_RE.fullmatch(key_id) is None:
                    raise ConfigError(f"{name}: key id {key_id[:40]!r} of {principal!r} is not valid")
                if key_id in self._by_id:
                    raise ConfigError(f"{name}: key id {key_id!r} is listed more than once")
                if len(raw) != PUBLIC_KEY_BYTES:
                    raise ConfigError(f"{name}: key {key_id!r} is {len(raw)} bytes, not {PUBLIC_KEY_BYTES}")
                try:
                    public = Ed25519PublicKey.from_public_bytes(raw)
                except ValueError:
                    raise ConfigError(f"{name}: key {key_id!r} is not an Ed25519 public key") from None
                self._by_id[key_id] = _Key(principal, public)

    @classmethod
    def from_json(cls, text: str, *, name: str = "key set") -> KeyRing:
        """Parse ``{"principal": [{"key_id": "...", "public_key": "<base64>"}, ...], ...}``.

        Raises:
            ConfigError: not JSON, not that shape, or a key fails the checks of ``__init__``.
        """
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name} is not JSON: {exc.msg} at line {exc.lineno}") from None
        if not isinstance(document, dict) or not document:
            raise ConfigError(f"{name} must be a non-empty JSON object: principal -> list of keys")
        keys: dict[str, dict[str, bytes]] = {}
        for principal, entries in document.items():
            if not isinstance(entries, list):
                raise ConfigError(f"{name}: the keys of {str(principal)[:40]!r} must be a list")
            ids: dict[str, bytes] = {}
            for entry in entries:
                if not isinstance(entry, dict) or set(entry) != {"key_id", "public_key"} \
                        or not all(isinstance(v, str) for v in entry.values()):
                    raise ConfigError(f"{name}: each key of {str(principal)[:40]!r} must be "
                                      '{"key_id": "...", "public_key": "<base64>"}')
                try:
                    raw = base64.b64decode(entry["public_key"], validate=True)
                except binascii.Error:
                    raise ConfigError(f"{name}: public_key of {entry['key_id'][:40]!r} is not base64") from None
                if entry["key_id"] in ids:
                    raise ConfigError(f"{name}: key id {entry['key_id'][:40]!r} is listed more than once")
                ids[entry["key_id"]] = raw
            keys[str(principal)] = ids
        return cls(keys, name=name)

    def principal_of(self, key_id: str) -> str | None:
        """The principal owning ``key_id`` (None for a key id this set does not list)."""
        key = self._by_id.get(key_id)
        return None if key is None else key.principal

    def __len__(self) -> int:
        return len(self._by_id)

    def check(self, header: SignatureHeader, value: bytes) -> None:
        """Check that ``header`` signs ``value`` with the key it names.

        Raises:
            UnauthenticatedError: the key id is not in this set, or the signature is invalid.
        """
        key = self._by_id.get(header.key_id)
        if key is None:
            raise UnauthenticatedError(f"signed by key {header.key_id!r}, which the {self.name} does not list")
        try:
            key.public.verify(header.signature, value)
        except InvalidSignature:
            raise UnauthenticatedError(f"the signature by key {header.key_id!r} does not match the message") from None


def verify_signed(raw_header: bytes | None, value: bytes, *, rings: Collection[KeyRing],
                  allowed: Mapping[KeyRing, Collection[str]], what: str) -> tuple[str, str]:
    """Check a message's signature; returns ``(principal, key_id)`` of the key that signed it.

    ``rings`` are searched for the header's key id; the key must belong to a principal in
    ``allowed[ring]`` for the ring that lists it (e.g. an intent's own tenant) and its
    signature must match ``value``, the exact bytes consumed. ``what`` names the message in
    error messages ("intent", "REEMIT trigger").

    Raises:
        UnauthenticatedError: no or malformed header, a key id no ring lists, a key of a
            principal not allowed here (another tenant's, an operator's on a result), or a
            signature that does not match.
    """
    header = parse_signature_header(raw_header)
    for ring in rings:
        principal = ring.principal_of(header.key_id)
        if principal is None:
            continue
        if principal not in allowed.get(ring, ()):
            raise UnauthenticatedError(f"{what} is signed by key {header.key_id!r} of {principal!r}, which may "
                                       f"not sign it")
        ring.check(header, value)
        return principal, header.key_id
    raise UnauthenticatedError(f"{what} is signed by key {header.key_id!r}, which no configured key set lists")
