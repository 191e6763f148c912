"""Gate bundles as a producer writes them (contract §4): the layout, and writing it flag last.

:func:`gate_layout` is pure: from a gate method and its members it computes every object of
the bundle, in write order, and the digest ``_passed.flag`` carries. :func:`write_gate` writes
such a layout through any ``write(bucket, key, body)`` callable. The reference engine
(:mod:`worker.engine.simulator`) writes with ``ObjectStore.put_write_once``; the demo
(:mod:`worker.embedded.demo`) with a plain overwriting ``put``.

Write order is the protocol, not a detail: members first, then ``index.json`` (member-digest
gates), then ``_passed.flag``. SR treats a bundle without its flag as MISSING and keeps
waiting, so a verifier that looks while an engine is half-way through never sees a flag
whose members are not all there yet.

The digests come from the verifier's own rules in :mod:`worker.core.evidence`
(:func:`~worker.core.evidence.bundle_member_order`,
:func:`~worker.core.evidence.member_concat_digest`, :func:`~worker.core.evidence.parse_index_json`),
so a layout built here verifies by construction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from worker.core.canonical import canonical_json
from worker.core.evidence import (
    FLAG_NAME,
    INDEX_NAME,
    bundle_member_order,
    member_concat_digest,
    parse_index_json,
)
from worker.core.keys import S3Location
from worker.core.policy import GateMethod
from worker.errors import UnsafeKeyError

__all__ = [
    "GateLayout",
    "ObjectWrite",
    "flag_bytes",
    "gate_layout",
    "put_bundle_digest_gate",
    "put_member_concat_gate",
    "write_gate",
]

#: Writes one object: ``write(bucket, key, body)``; the return value is ignored.
ObjectWrite = Callable[[str, str, bytes], object]


def flag_bytes(digest: str) -> bytes:
    """The exact bytes of a ``_passed.flag``: ``sha256_hex=<digest>`` and one ``\\n``."""
    return f"sha256_hex={digest}\n".encode("ascii")


@dataclass(frozen=True)
class GateLayout:
    """Every object of one gate bundle, keyed relative to the bundle prefix.

    Attributes:
        method: the gate method the digest follows.
        digest: the 64-hex digest written into ``_passed.flag``.
        objects: ``(relative key, body)`` in write order; ``_passed.flag`` is the last one.
    """

    method: GateMethod
    digest: str
    objects: tuple[tuple[str, bytes], ...]


def gate_layout(method: GateMethod, members: Mapping[str, bytes]) -> GateLayout:
    """The objects of a gate bundle holding ``members`` (relative key → bytes), flag last.

    * ``sha256_bundle_digest``: the members in ASCII order of key, then the flag = sha256 over
      their concatenated bytes in that order.
    * ``sha256_member_digest_concat``: the members, then ``index.json`` (canonical JSON array of
      ``{"path", "sha256_hex"}`` in ASCII order of path), then the flag = sha256 over the
      concatenated hex digests in index order.

    Raises:
        UnsafeKeyError: a member key is not a safe relative key, or is ``_passed.flag``.
        BadIndexError: no members for a member-digest gate, or a member called ``index.json``
            there (the verifier's own index rules).
    """
    if FLAG_NAME in members:
        raise UnsafeKeyError(f"{FLAG_NAME} cannot be a bundle member")
    order = bundle_member_order(members)  # validates every key, ASCII order
    written = tuple((rel, bytes(members[rel])) for rel in order)
    if method is GateMethod.SHA256_BUNDLE_DIGEST:
        digest = hashlib.sha256()
        for _, body in written:
            digest.update(body)
        hexdigest = digest.hexdigest()
        return GateLayout(method, hexdigest, (*written, (FLAG_NAME, flag_bytes(hexdigest))))
    index = [{"path": rel, "sha256_hex": hashlib.sha256(body).hexdigest()} for rel, body in written]
    index_bytes = canonical_json(index)
    entries = parse_index_json(index_bytes)  # the verifier's grammar: fail here, not in SR
    hexdigest = member_concat_digest(entry.sha256_hex for entry in entries)
    return GateLayout(method, hexdigest,
                      (*written, (INDEX_NAME, index_bytes), (FLAG_NAME, flag_bytes(hexdigest))))


def write_gate(write: ObjectWrite, bundle: S3Location, layout: GateLayout) -> str:
    """Write ``layout`` below ``bundle`` in its order (flag last); returns the flag's digest.

    Raises:
        UnsafeKeyError: a key below ``bundle`` would be unsafe or too long.
        Whatever ``write`` raises (the layout is then incomplete and has no flag, unless only the
        flag's own write failed after it reached the store).
    """
    for rel, body in layout.objects:
        target = bundle.join(rel)
        write(target.bucket, target.prefix, body)
    return layout.digest


def put_bundle_digest_gate(write: ObjectWrite, bucket: str, prefix: str, members: Mapping[str, bytes]) -> str:
    """Write a ``sha256_bundle_digest`` gate under ``prefix`` in ``bucket``; returns its digest.

    Raises:
        UnsafeKeyError: see :func:`gate_layout` and :func:`write_gate`.
    """
    return write_gate(write, S3Location(bucket, prefix), gate_layout(GateMethod.SHA256_BUNDLE_DIGEST, members))


def put_member_concat_gate(write: ObjectWrite, bucket: str, prefix: str, members: Mapping[str, bytes]) -> str:
    """Write a ``sha256_member_digest_concat`` gate (members, ``index.json``, flag); returns its digest.

    Raises:
        UnsafeKeyError / BadIndexError: see :func:`gate_layout` and :func:`write_gate`.
    """
    return write_gate(write, S3Location(bucket, prefix),
                      gate_layout(GateMethod.SHA256_MEMBER_DIGEST_CONCAT, members))
