"""Signing keys on disk, and signing messages (contract §10): what producers of intents,
triggers and engine results use; the checks are in :mod:`worker.core.signatures`.

A private key file is JSON, written by ``sr keys generate`` with mode 0600::

    {"format": "sr-ed25519-private-key", "version": 1, "principal": "tenant-a",
     "key_id": "tenant-a-3f9c2e1a", "private_key": "<base64 of the raw 32-byte seed>",
     "public_key": "<base64 of the raw 32-byte public key>"}

Its public half is the key-set entry ``{"key_id": ..., "public_key": ...}`` listed under the
principal in ``SR_SIGNING_KEYS`` / ``SR_OPERATOR_KEYS`` / ``SR_ENGINE_KEYS``. A key set
setting holds the JSON itself or ``@path`` of a file holding it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from worker.core.signatures import SIGNATURE_HEADER, KeyRing, SignatureHeader
from worker.errors import ConfigError

__all__ = [
    "KEY_FILE_FORMAT",
    "SIGNING_KEY_ENV",
    "Signer",
    "generate_key_file",
    "key_ring",
    "key_set",
    "load_key_ring",
    "signer_from",
]

KEY_FILE_FORMAT: Final = "sr-ed25519-private-key"
#: The environment variable naming a private key file, when ``--key`` is not given.
SIGNING_KEY_ENV: Final = "SR_SIGNING_KEY"
_MAX_KEY_FILE_BYTES: Final = 64 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class Signer:
    """Signs message values with one private key on behalf of ``principal``."""

    principal: str
    key_id: str
    _private: Ed25519PrivateKey

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        """Load a private key file written by :func:`generate_key_file`.

        Raises:
            ConfigError: unreadable, too large, not the documented JSON shape, or a private
                key whose public half does not match the file's ``public_key``.
        """
        try:
            with path.open("rb") as handle:
                data = handle.read(_MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read signing key {path}: {exc.strerror or exc}") from None
        if len(data) > _MAX_KEY_FILE_BYTES:
            raise ConfigError(f"signing key {path} is larger than {_MAX_KEY_FILE_BYTES} bytes")
        try:
            document = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"signing key {path} is not JSON") from None
        fields = ("format", "version", "principal", "key_id", "private_key", "public_key")
        if not isinstance(document, dict) or document.get("format") != KEY_FILE_FORMAT \
                or document.get("version") != 1 or not all(isinstance(document.get(f), str) for f in fields[2:]):
            raise ConfigError(f"signing key {path} is not an {KEY_FILE_FORMAT} version 1 file "
                              "(write one with `sr keys generate`)")
        try:
            seed = base64.b64decode(document["private_key"], validate=True)
            private = Ed25519PrivateKey.from_private_bytes(seed)
        except (binascii.Error, ValueError):
            raise ConfigError(f"signing key {path}: private_key is not a base64 32-byte Ed25519 key") from None
        if _b64(_public_bytes(private)) != document["public_key"]:
            raise ConfigError(f"signing key {path}: public_key does not belong to private_key")
        # The key set parses the same principal and key id rules; one check, one message.
        KeyRing({document["principal"]: {document["key_id"]: _public_bytes(private)}}, name=f"signing key {path}")
        return cls(document["principal"], document["key_id"], private)

    @classmethod
    def generate(cls, principal: str, key_id: str | None = None) -> Signer:
        """A new random key for ``principal`` (in memory). The default key id is
        ``<principal>-<8 hex>`` of the public key's sha256, so keys of one principal differ.

        Raises:
            ConfigError: the principal or key id is invalid.
        """
        private = Ed25519PrivateKey.generate()
        public = _public_bytes(private)
        key_id = key_id or f"{principal}-{hashlib.sha256(public).hexdigest()[:8]}"
        KeyRing({principal: {key_id: public}}, name="new key")  # same rules as a key set
        return cls(principal, key_id, private)

    def key_file_document(self) -> dict[str, Any]:
        """The private key file's JSON document (holds the private key: keep it secret)."""
        return {"format": KEY_FILE_FORMAT, "version": 1, "principal": self.principal, "key_id": self.key_id,
                "private_key": _b64(self._private.private_bytes_raw()), "public_key": _b64(self.public_key)}

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key."""
        return _public_bytes(self._private)

    def key_set_entry(self) -> dict[str, str]:
        """This key as a key-set entry: ``{"key_id": ..., "public_key": <base64>}``."""
        return {"key_id": self.key_id, "public_key": _b64(self.public_key)}

    def signature_header(self, value: bytes) -> bytes:
        """The ``sr-signature`` header value that signs ``value`` (the exact bytes sent)."""
        return SignatureHeader(self.key_id, self._private.sign(value)).encode()

    def headers_for(self, value: bytes) -> dict[str, bytes]:
        """``{"sr-signature": ...}`` for a producer's headers."""
        return {SIGNATURE_HEADER: self.signature_header(value)}


def _public_bytes(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def signer_from(path: Path | str | None, environ: Mapping[str, str] | None = None) -> Signer | None:
    """The signer for ``--key PATH``, else for ``$SR_SIGNING_KEY``, else None (unsigned).

    Raises:
        ConfigError: the key file cannot be used (see :meth:`Signer.from_file`).
    """
    chosen = path if path else (environ or {}).get(SIGNING_KEY_ENV)
    return None if not chosen else Signer.from_file(Path(chosen))


def generate_key_file(path: Path, *, principal: str, key_id: str | None = None) -> Signer:
    """Write a new private key file for ``principal`` at ``path`` (mode 0600, never over an
    existing file) and return its signer (key id as :meth:`Signer.generate`).

    Raises:
        ConfigError: ``path`` exists or cannot be written, or the principal / key id is invalid.
    """
    signer = Signer.generate(principal, key_id)
    try:
        # O_EXCL: a key is never overwritten; 0600 from the start, not chmod-ed afterwards.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists; a signing key is never overwritten") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as handle:
        json.dump(signer.key_file_document(), handle, indent=2, sort_keys=True)
        handle.write("\n")
    return signer


def load_key_ring(spec: str, *, name: str) -> KeyRing:
    """A key set from a setting: the JSON itself, or ``@path`` of a file holding it.

    Raises:
        ConfigError: the file is unreadable or the key set is invalid (the message names
            ``name``, e.g. ``SR_SIGNING_KEYS``, never key material).
    """
    text = spec.strip()
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{name}: cannot read {text[1:]}: {exc}") from None
    return KeyRing.from_json(text, name=name)


def key_set(*signers: Signer) -> dict[str, list[dict[str, str]]]:
    """The key-set JSON document listing ``signers``' public keys, grouped by principal."""
    document: dict[str, list[dict[str, str]]] = {}
    for signer in signers:
        document.setdefault(signer.principal, []).append(signer.key_set_entry())
    return document


def key_ring(*signers: Signer, name: str = "key set") -> KeyRing:
    """The :class:`KeyRing` of ``signers``' public keys (tests, tools)."""
    return KeyRing.from_json(json.dumps(key_set(*signers)), name=name)
