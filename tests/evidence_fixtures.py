"""Helpers that upload sample gate bundles to a real S3 (for integration and e2e tests).

Both uploaders write the members first and ``_passed.flag`` last (as a real producer
would), return the *correct* digest of the intended members, and offer the faults the
verifier must catch::

    digest = upload_bundle_gate(s3_client, bucket, "evidence/t1/abc", "gates/6B",
                                {"part-0": b"...", "part-1": b"..."})
    upload_member_concat_gate(s3_client, bucket, root, "gates/3A", members,
                              omit_members=["b.bin"])              # member missing
    upload_bundle_gate(..., tamper_after_flag={"part-0": b"evil"})   # MISMATCH
    upload_bundle_gate(..., flag=b"sha256_hex=XYZ\\n")               # BAD_FLAG
    upload_bundle_gate(..., flag=None)                               # MISSING

``root_prefix`` is the key prefix of the evidence root inside ``bucket`` (no ``s3://``, no
leading/trailing ``/``); :func:`evidence_root_uri` turns it into the intent's URI and
:func:`bundle_uri` into a plan gate's ``bundle_uri``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

__all__ = [
    "FLAG_NAME",
    "INDEX_NAME",
    "bundle_digest",
    "bundle_uri",
    "evidence_root_uri",
    "flag_bytes",
    "index_bytes",
    "member_concat_digest_of",
    "s3_config_for",
    "upload_bundle_gate",
    "upload_member_concat_gate",
]

FLAG_NAME: Final = "_passed.flag"
INDEX_NAME: Final = "index.json"

#: ``flag`` argument: ``"auto"`` writes the correct flag, ``None`` omits it, bytes are
#: written verbatim (e.g. a malformed or wrong flag).
FlagSpec = Literal["auto"] | bytes | None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def evidence_root_uri(bucket: str, root_prefix: str) -> str:
    """``s3://<bucket>/<root_prefix>`` — an intent's ``evidence_root``."""
    return f"s3://{bucket}/{root_prefix.strip('/')}"


def bundle_uri(bucket: str, root_prefix: str, bundle_rel: str) -> str:
    """The ``bundle_uri`` a plan gate gets for ``bundle_rel`` under the root."""
    return f"{evidence_root_uri(bucket, root_prefix)}/{bundle_rel.strip('/')}"


def flag_bytes(digest: str) -> bytes:
    """The exact content of a valid ``_passed.flag`` for ``digest``."""
    return f"sha256_hex={digest}\n".encode("ascii")


def bundle_digest(members: Mapping[str, bytes]) -> str:
    """``sha256_bundle_digest`` of ``members`` (relative key → bytes): ASCII key order."""
    digest = hashlib.sha256()
    for rel in sorted(members, key=lambda k: k.encode("utf-8")):
        digest.update(members[rel])
    return digest.hexdigest()


def member_concat_digest_of(members: Mapping[str, bytes], order: Sequence[str] | None = None) -> str:
    """``sha256_member_digest_concat`` digest of ``members`` in ``order`` (default: insertion)."""
    paths = list(order) if order is not None else list(members)
    return hashlib.sha256("".join(_sha(members[p]) for p in paths).encode("ascii")).hexdigest()


def index_bytes(members: Mapping[str, bytes], order: Sequence[str] | None = None) -> bytes:
    """A valid ``index.json`` for ``members`` in ``order`` (default: insertion order)."""
    paths = list(order) if order is not None else list(members)
    return json.dumps([{"path": p, "sha256_hex": _sha(members[p])} for p in paths]).encode("utf-8")


def _prefix(root_prefix: str, bundle_rel: str) -> str:
    return f"{root_prefix.strip('/')}/{bundle_rel.strip('/')}"


def _put(client: Any, bucket: str, key: str, body: bytes) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=body)


def _finish(
    client: Any,
    bucket: str,
    prefix: str,
    digest: str,
    *,
    flag: FlagSpec,
    tamper_after_flag: Mapping[str, bytes] | None,
) -> None:
    if flag == "auto":
        _put(client, bucket, f"{prefix}/{FLAG_NAME}", flag_bytes(digest))
    elif isinstance(flag, bytes):
        _put(client, bucket, f"{prefix}/{FLAG_NAME}", flag)
    for rel, body in (tamper_after_flag or {}).items():
        _put(client, bucket, f"{prefix}/{rel}", body)


def upload_bundle_gate(
    client: Any,
    bucket: str,
    root_prefix: str,
    bundle_rel: str,
    members: Mapping[str, bytes],
    *,
    flag: FlagSpec = "auto",
    tamper_after_flag: Mapping[str, bytes] | None = None,
) -> str:
    """Upload a ``sha256_bundle_digest`` bundle; return the digest of ``members``.

    Args:
        client: a boto3 S3 client.
        root_prefix: key prefix of the evidence root.
        bundle_rel: the gate's ``bundle`` path relative to the root (e.g. ``gates/6B``).
        members: relative key → bytes (keys may contain ``/``).
        flag: ``"auto"`` (correct flag), ``None`` (no flag) or raw bytes to write.
        tamper_after_flag: members (relative key → bytes) overwritten or added after the
            flag was written.
    """
    prefix = _prefix(root_prefix, bundle_rel)
    for rel, body in members.items():
        _put(client, bucket, f"{prefix}/{rel}", body)
    digest = bundle_digest(members)
    _finish(client, bucket, prefix, digest, flag=flag, tamper_after_flag=tamper_after_flag)
    return digest


def upload_member_concat_gate(
    client: Any,
    bucket: str,
    root_prefix: str,
    bundle_rel: str,
    members: Mapping[str, bytes],
    *,
    order: Sequence[str] | None = None,
    flag: FlagSpec = "auto",
    index: bytes | None = None,
    omit_index: bool = False,
    omit_members: Iterable[str] = (),
    tamper_after_flag: Mapping[str, bytes] | None = None,
) -> str:
    """Upload a ``sha256_member_digest_concat`` bundle; return the digest of ``members``.

    Args:
        order: index order of the members (default: insertion order of ``members``).
        flag: as in :func:`upload_bundle_gate`.
        index: raw ``index.json`` bytes to write instead of the correct one (malformed index).
        omit_index: write no ``index.json`` at all.
        omit_members: members listed in the index (and in the digest) but not uploaded.
        tamper_after_flag: as in :func:`upload_bundle_gate`.
    """
    prefix = _prefix(root_prefix, bundle_rel)
    skipped = set(omit_members)
    for rel, body in members.items():
        if rel not in skipped:
            _put(client, bucket, f"{prefix}/{rel}", body)
    if not omit_index:
        _put(client, bucket, f"{prefix}/{INDEX_NAME}", index if index is not None else index_bytes(members, order))
    digest = member_concat_digest_of(members, order)
    _finish(client, bucket, prefix, digest, flag=flag, tamper_after_flag=tamper_after_flag)
    return digest


def s3_config_for(servers: Any, **overrides: Any) -> Any:
    """An :class:`~worker.adapters.s3.S3Config` pointing at the test session's S3 server."""
    from pydantic import SecretStr

    from worker.adapters.s3 import S3Config

    settings: dict[str, Any] = {
        "endpoint_url": servers.s3_endpoint,
        "region": servers.s3_region,
        "access_key_id": SecretStr(servers.s3_access_key),
        "secret_access_key": SecretStr(servers.s3_secret_key),
    }
    settings.update(overrides)
    return S3Config(**settings)
