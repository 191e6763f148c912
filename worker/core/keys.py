"""The one key-derivation family of SR (contract §5).

Every S3 key SR reads or writes is built here from validated segments, so no caller-controlled
value can introduce ``.``/``..``, ``/``, ``\\``, NUL, control characters or anything outside a
conservative charset. Layout::

    <prefix>/tenant/<t>/namespace/<n>/run/<run_id>/plan.json
    <prefix>/tenant/<t>/namespace/<n>/run/<run_id>/record/<seq:012d>.json
    <prefix>/tenant/<t>/namespace/<n>/run/<run_id>/facts/<facts_view_hash>.json
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from worker.errors import UnsafeKeyError

__all__ = [
    "MAX_SEGMENT_LEN",
    "MAX_SEQ",
    "RunKeys",
    "S3Location",
    "parse_run_key",
    "parse_s3_uri",
    "run_keys",
    "validate_bucket",
    "validate_prefix",
    "validate_relative_key",
    "validate_segment",
]

MAX_SEGMENT_LEN: Final = 128
#: S3 keys are at most 1024 bytes; we keep URIs and relative keys within that.
MAX_KEY_LEN: Final = 1024
#: Highest ledger sequence number that fits the zero-padded 12-digit record key.
MAX_SEQ: Final = 10**12 - 1

# Letters, digits and a few punctuation marks that are inert in S3, URLs, shells and on
# every filesystem a runpack may be exported to. '=' and '+' allow Hive-style partitions.
_SEGMENT_RE: Final = re.compile(r"[A-Za-z0-9._=+-]{1,128}")
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")
_RUN_ID_RE: Final = re.compile(r"[0-9a-f]{32}")
_BUCKET_RE: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_RE: Final = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_RECORD_RE: Final = re.compile(r"([0-9]{12})\.json")


def validate_segment(segment: str) -> str:
    """Return ``segment`` unchanged if it is a safe single key segment.

    Safe means: a ``str`` of 1–128 characters from ``[A-Za-z0-9._=+-]`` that is not made of
    dots only (so never ``.`` or ``..``). This rules out ``/``, ``\\``, NUL, control
    characters, whitespace and non-ASCII look-alikes.

    Raises:
        UnsafeKeyError: the segment is not safe.
    """
    if not isinstance(segment, str):
        raise UnsafeKeyError(f"key segment must be a string, got {type(segment).__name__}")
    if not segment:
        raise UnsafeKeyError("empty key segment")
    if len(segment) > MAX_SEGMENT_LEN:
        raise UnsafeKeyError(f"key segment longer than {MAX_SEGMENT_LEN} characters")
    if _SEGMENT_RE.fullmatch(segment) is None:
        raise UnsafeKeyError(f"key segment {segment[:64]!r} contains characters outside [A-Za-z0-9._=+-]")
    if segment.strip(".") == "":
        raise UnsafeKeyError(f"key segment {segment!r} is a dot segment")
    return segment


def _split_segments(path: str) -> tuple[str, ...]:
    """Split a '/'-joined path and validate every segment (empty ones included)."""
    if len(path) > MAX_KEY_LEN:
        raise UnsafeKeyError(f"key longer than {MAX_KEY_LEN} characters")
    return tuple(validate_segment(part) for part in path.split("/"))


def validate_prefix(prefix: str) -> str:
    """Validate and normalise an operator-configured key prefix (e.g. ``SR_S3_PREFIX``).

    One leading and trailing ``/`` are tolerated and stripped (``"/sr/"`` → ``"sr"``); the
    remaining path must be safe segments joined by single ``/``. The empty prefix is allowed.

    Raises:
        UnsafeKeyError: a segment is unsafe, or the prefix contains ``//``.
    """
    if not isinstance(prefix, str):
        raise UnsafeKeyError(f"prefix must be a string, got {type(prefix).__name__}")
    body = prefix.removeprefix("/").removesuffix("/")
    if body == "":
        return ""
    return "/".join(_split_segments(body))


def validate_relative_key(path: str) -> str:
    """Validate an untrusted relative key (e.g. an ``index.json`` path or a bundle path).

    Unlike :func:`validate_prefix` nothing is normalised: a leading or trailing ``/``, an
    empty segment, or an empty path is rejected.

    Raises:
        UnsafeKeyError: the path is empty or not safe segments joined by single ``/``.
    """
    if not isinstance(path, str):
        raise UnsafeKeyError(f"relative key must be a string, got {type(path).__name__}")
    if path == "":
        raise UnsafeKeyError("empty relative key")
    _split_segments(path)
    return path


def validate_bucket(bucket: str) -> str:
    """Validate an S3 bucket name (general-purpose bucket rules).

    3–63 characters of lowercase letters, digits, ``.`` and ``-``; begins and ends with a
    letter or digit; no ``..``, ``.-`` or ``-.``; not an IPv4 address; none of the reserved
    prefixes/suffixes (``xn--``, ``sthree-``, ``-s3alias``, ``--ol-s3``).

    Raises:
        UnsafeKeyError: the name is not a valid bucket name.
    """
    if not isinstance(bucket, str) or _BUCKET_RE.fullmatch(bucket) is None:
        raise UnsafeKeyError(f"invalid S3 bucket name {str(bucket)[:70]!r}")
    if ".." in bucket or ".-" in bucket or "-." in bucket or _IPV4_RE.fullmatch(bucket):
        raise UnsafeKeyError(f"invalid S3 bucket name {bucket!r}")
    if bucket.startswith(("xn--", "sthree-")) or bucket.endswith(("-s3alias", "--ol-s3")):
        raise UnsafeKeyError(f"S3 bucket name {bucket!r} uses a reserved prefix or suffix")
    return bucket


@dataclass(frozen=True, slots=True)
class S3Location:
    """A validated ``s3://bucket/prefix`` location.

    ``prefix`` is normalised: no leading or trailing ``/``; ``""`` is the bucket root.
    Construct through :func:`parse_s3_uri` or :meth:`join`; the constructor validates too.
    """

    bucket: str
    prefix: str = ""

    def __post_init__(self) -> None:
        """Validate on construction so an unsafe location cannot exist.

        Raises:
            UnsafeKeyError: invalid bucket or unsafe prefix segments.
        """
        validate_bucket(self.bucket)
        if self.prefix != "":
            validate_relative_key(self.prefix)

    @property
    def segments(self) -> tuple[str, ...]:
        """The prefix split into its segments (empty tuple at the bucket root)."""
        return tuple(self.prefix.split("/")) if self.prefix else ()

    @property
    def uri(self) -> str:
        """Canonical URI: ``s3://bucket/prefix`` without trailing ``/`` (``s3://bucket`` at root)."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def join(self, *parts: str) -> S3Location:
        """Return a location below this one; each part may itself be a relative key (``a/b``).

        Raises:
            UnsafeKeyError: a part is empty or unsafe.
        """
        extra = [validate_relative_key(part) for part in parts]
        joined = "/".join([*self.segments, *extra])
        if len(joined) > MAX_KEY_LEN:
            raise UnsafeKeyError(f"key longer than {MAX_KEY_LEN} characters")
        return S3Location(self.bucket, joined)

    def is_within(self, other: S3Location) -> bool:
        """True when this location equals ``other`` or lies below it, segment-wise.

        ``evidence/t1`` does not contain ``evidence/t10``: containment compares whole
        segments, never string prefixes.
        """
        if self.bucket != other.bucket:
            return False
        mine, theirs = self.segments, other.segments
        return mine[: len(theirs)] == theirs

    def relative_to(self, other: S3Location) -> str:
        """The key of this location relative to ``other`` (``""`` when equal).

        Raises:
            UnsafeKeyError: this location is not within ``other``.
        """
        if not self.is_within(other):
            raise UnsafeKeyError(f"{self.uri} is not within {other.uri}")
        return "/".join(self.segments[len(other.segments) :])

    def __str__(self) -> str:
        return self.uri


def parse_s3_uri(uri: str) -> S3Location:
    """Parse ``s3://bucket[/prefix[/]]`` strictly.

    The scheme must be exactly ``s3://`` (lowercase); the bucket must be valid; every prefix
    segment must be safe; one trailing ``/`` is tolerated; no query, fragment, ``//``,
    whitespace or other junk.

    Raises:
        UnsafeKeyError: anything else.
    """
    if not isinstance(uri, str):
        raise UnsafeKeyError(f"S3 URI must be a string, got {type(uri).__name__}")
    if len(uri) > MAX_KEY_LEN + 70:
        raise UnsafeKeyError("S3 URI too long")
    if not uri.startswith("s3://"):
        raise UnsafeKeyError(f"not an s3:// URI: {uri[:80]!r}")
    bucket, _, rest = uri[5:].partition("/")
    validate_bucket(bucket)
    if rest == "/":
        raise UnsafeKeyError(f"S3 URI {uri[:80]!r} has an empty segment")
    rest = rest.removesuffix("/")  # one trailing '/' is conventional for prefixes
    prefix = "/".join(_split_segments(rest)) if rest else ""
    return S3Location(bucket, prefix)


# --------------------------------------------------------------------------- run keys
def _check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or _RUN_ID_RE.fullmatch(run_id) is None:
        raise UnsafeKeyError(f"run_id must be 32 lowercase hex characters, got {str(run_id)[:40]!r}")
    return run_id


@dataclass(frozen=True, slots=True)
class RunKeys:
    """The object keys of one run. Build with :func:`run_keys`.

    ``root`` has no trailing ``/``; ``records_prefix`` ends with ``/`` (for listing).
    """

    root: str

    @property
    def plan(self) -> str:
        """Key of the run's content-addressed plan: ``<root>/plan.json``."""
        return f"{self.root}/plan.json"

    @property
    def records_prefix(self) -> str:
        """Listing prefix of the ledger records: ``<root>/record/``."""
        return f"{self.root}/record/"

    @property
    def facts_prefix(self) -> str:
        """Listing prefix of the facts views: ``<root>/facts/``."""
        return f"{self.root}/facts/"

    def record(self, seq: int) -> str:
        """Key of ledger entry ``seq``: ``<root>/record/<seq:012d>.json``.

        Raises:
            UnsafeKeyError: ``seq`` is not an int in ``0..10**12-1``.
        """
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
            raise UnsafeKeyError(f"ledger seq must be an int in 0..{MAX_SEQ}, got {seq!r}")
        return f"{self.records_prefix}{seq:012d}.json"

    def seq_of(self, key: str) -> int:
        """Inverse of :meth:`record`: the seq of a key listed under :attr:`records_prefix`.

        Raises:
            UnsafeKeyError: the key is not exactly a record key of this run.
        """
        name = key.removeprefix(self.records_prefix) if isinstance(key, str) else ""
        match = _RECORD_RE.fullmatch(name) if name != key else None
        if match is None:
            raise UnsafeKeyError(f"{str(key)[:120]!r} is not a ledger record key under {self.records_prefix}")
        return int(match.group(1))

    def facts(self, facts_view_hash: str) -> str:
        """Key of a content-addressed facts view: ``<root>/facts/<hash>.json``.

        Raises:
            UnsafeKeyError: the hash is not 64 lowercase hex characters.
        """
        if not isinstance(facts_view_hash, str) or _HEX64_RE.fullmatch(facts_view_hash) is None:
            raise UnsafeKeyError("facts_view_hash must be 64 lowercase hex characters")
        return f"{self.facts_prefix}{facts_view_hash}.json"


def run_keys(prefix: str, tenant_id: str, namespace: str, run_id: str) -> RunKeys:
    """Derive the keys of a run.

    Raises:
        UnsafeKeyError: unsafe prefix, tenant or namespace, or a malformed run_id.
    """
    parts = [
        validate_prefix(prefix),
        "tenant",
        validate_segment(tenant_id),
        "namespace",
        validate_segment(namespace),
        "run",
        _check_run_id(run_id),
    ]
    return RunKeys("/".join(p for p in parts if p))


def parse_run_key(prefix: str, key: str) -> tuple[str, str, str]:
    """Extract ``(tenant_id, namespace, run_id)`` from any key below a run root.

    Used by ``sr index rebuild`` when listing the bucket.

    Raises:
        UnsafeKeyError: the key is not laid out as ``<prefix>/tenant/<t>/namespace/<n>/run/<id>/...``.
    """
    base = validate_prefix(prefix)
    if not isinstance(key, str):
        raise UnsafeKeyError("key must be a string")
    rest = key
    if base:
        if not key.startswith(base + "/"):
            raise UnsafeKeyError(f"{key[:120]!r} is not under prefix {base!r}")
        rest = key[len(base) + 1 :]
    parts = rest.split("/")
    if len(parts) < 7 or parts[0] != "tenant" or parts[2] != "namespace" or parts[4] != "run":
        raise UnsafeKeyError(f"{key[:120]!r} is not a run key")
    tenant_id, namespace, run_id = validate_segment(parts[1]), validate_segment(parts[3]), parts[5]
    return tenant_id, namespace, _check_run_id(run_id)
