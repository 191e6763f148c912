"""The runpack format (version 1): layout, per-artifact byte caps, manifest, root hash.

A runpack is one run's whole story as a directory (or an S3 prefix) of canonical-JSON files::

    manifest.json                 # written last; lists every other file
    intent.json                   # the admitted intent (Avro-shaped dict, timestamps in ms)
    run.json                      # summary derived from the ledger (status, hashes, as-of time)
    plan.json                     # exact bytes of the run's S3 plan (absent if never planned)
    ledger/<seq:012d>.json        # exact bytes of every ledger entry (hash chain)
    facts/<facts_view_hash>.json  # exact bytes of every facts view the ledger references
    receipts/<facts_view_hash>.json  # the gate receipts of that facts view
    publications.json             # the outbox rows of the run (deterministic fields only)

Everything here is pure: no I/O, no clock. The *root hash* is the sha256 of the
``sha256sum``-style listing of the files in path order (``"<sha256>  <path>\\n"`` per file),
so an auditor can recompute it with coreutils alone::

    cd RUNPACK && find . -type f ! -name manifest.json | sed 's|^\\./||' | LC_ALL=C sort \\
        | xargs sha256sum | sha256sum
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from worker.core.canonical import canonical_json, sha256_hex
from worker.core.facts import MAX_FACTS_BYTES
from worker.core.keys import MAX_SEQ, validate_prefix, validate_relative_key, validate_segment
from worker.core.ledger import MAX_ENTRY_BYTES
from worker.core.models import Hex64, Identifier, RunId
from worker.core.plan import MAX_PLAN_BYTES
from worker.errors import UnsafeKeyError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HASH_ALGORITHM",
    "MANIFEST_NAME",
    "MAX_FILES",
    "SUPPORTED_VERSIONS",
    "ArtifactKind",
    "FileEntry",
    "Manifest",
    "Progress",
    "artifact_cap",
    "artifact_kind",
    "build_manifest",
    "facts_path",
    "ledger_path",
    "manifest_bytes",
    "receipts_path",
    "root_hash",
    "runpack_root",
    "sorted_paths",
]

FORMAT_NAME: Final = "sr-runpack"
FORMAT_VERSION: Final = 1
#: Manifest versions this build can verify. A newer version is refused, never guessed at.
SUPPORTED_VERSIONS: Final = frozenset({1})
HASH_ALGORITHM: Final = "sha256"
MANIFEST_NAME: Final = "manifest.json"
#: Upper bound on the files one runpack may list (a ledger this long is already absurd).
MAX_FILES: Final = 100_000

MiB: Final = 1024 * 1024

#: ``progress(path, done, total)``: called after each runpack file is written (export) or
#: checked (verify); ``done`` counts from 1 to ``total``.
Progress = Callable[[str, int, int], None]


class ArtifactKind(StrEnum):
    """What a runpack file is; decides its byte cap and how it is checked."""

    MANIFEST = "manifest"
    INTENT = "intent"
    RUN = "run"
    PLAN = "plan"
    LEDGER = "ledger"
    FACTS = "facts"
    RECEIPTS = "receipts"
    PUBLICATIONS = "publications"


#: Per-artifact byte caps. Export refuses to write, and verify refuses to read, anything larger.
_CAPS: Final[Mapping[ArtifactKind, int]] = {
    ArtifactKind.MANIFEST: 32 * MiB,
    ArtifactKind.INTENT: 1 * MiB,
    ArtifactKind.RUN: 1 * MiB,
    ArtifactKind.PLAN: MAX_PLAN_BYTES,
    ArtifactKind.LEDGER: MAX_ENTRY_BYTES,
    ArtifactKind.FACTS: MAX_FACTS_BYTES,
    ArtifactKind.RECEIPTS: MAX_FACTS_BYTES,
    ArtifactKind.PUBLICATIONS: 64 * MiB,
}

_FIXED: Final[Mapping[str, ArtifactKind]] = {
    MANIFEST_NAME: ArtifactKind.MANIFEST,
    "intent.json": ArtifactKind.INTENT,
    "run.json": ArtifactKind.RUN,
    "plan.json": ArtifactKind.PLAN,
    "publications.json": ArtifactKind.PUBLICATIONS,
}
_LEDGER_RE: Final = re.compile(r"ledger/([0-9]{12})\.json")
_FACTS_RE: Final = re.compile(r"facts/([0-9a-f]{64})\.json")
_RECEIPTS_RE: Final = re.compile(r"receipts/([0-9a-f]{64})\.json")
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")
_RUN_ID_RE: Final = re.compile(r"[0-9a-f]{32}")


def artifact_kind(path: str) -> ArtifactKind:
    """Classify a runpack-relative path, refusing anything outside the v1 layout.

    Only the exact names of the layout are accepted, so absolute paths, ``..``, ``\\``,
    doubled or trailing slashes, hidden files and anything unexpected are refused.

    Raises:
        UnsafeKeyError: the path is not a file of the v1 layout.
    """
    if not isinstance(path, str):
        raise UnsafeKeyError(f"runpack path must be a string, got {type(path).__name__}")
    validate_relative_key(path)  # defence in depth: safe segments joined by single '/'
    fixed = _FIXED.get(path)
    if fixed is not None:
        return fixed
    if _LEDGER_RE.fullmatch(path):
        return ArtifactKind.LEDGER
    if _FACTS_RE.fullmatch(path):
        return ArtifactKind.FACTS
    if _RECEIPTS_RE.fullmatch(path):
        return ArtifactKind.RECEIPTS
    raise UnsafeKeyError(f"{path[:120]!r} is not a file of the runpack v{FORMAT_VERSION} layout")


def artifact_cap(kind: ArtifactKind) -> int:
    """The byte cap of an artifact kind."""
    return _CAPS[kind]


def ledger_path(seq: int) -> str:
    """``ledger/<seq:012d>.json``.

    Raises:
        UnsafeKeyError: ``seq`` is not an int in ``0..10**12-1``.
    """
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise UnsafeKeyError(f"ledger seq must be an int in 0..{MAX_SEQ}, got {seq!r}")
    return f"ledger/{seq:012d}.json"


def _hex64(value: str, what: str) -> str:
    if not isinstance(value, str) or _HEX64_RE.fullmatch(value) is None:
        raise UnsafeKeyError(f"{what} must be 64 lowercase hex characters")
    return value


def facts_path(facts_view_hash: str) -> str:
    """``facts/<hash>.json``.

    Raises:
        UnsafeKeyError: not 64 lowercase hex.
    """
    return f"facts/{_hex64(facts_view_hash, 'facts_view_hash')}.json"


def receipts_path(facts_view_hash: str) -> str:
    """``receipts/<hash>.json``.

    Raises:
        UnsafeKeyError: not 64 lowercase hex.
    """
    return f"receipts/{_hex64(facts_view_hash, 'facts_view_hash')}.json"


def runpack_root(prefix: str, *, tenant_id: str, namespace: str, scenario_id: str, run_id: str,
                 plan_hash: str | None) -> str:
    """The relative location of a run's runpack below an export target.

    ``[<prefix>/]tenant/<t>/namespace/<n>/scenario/<s>/run/<run_id>/plan/<plan_hash|none>``.
    Every segment goes through the validated key functions of :mod:`worker.core.keys`, so a
    crafted tenant, namespace, scenario or run id can never add, skip or climb a level.

    Raises:
        UnsafeKeyError: an unsafe prefix or segment, a malformed run_id or plan_hash.
    """
    if not isinstance(run_id, str) or _RUN_ID_RE.fullmatch(run_id) is None:
        raise UnsafeKeyError(f"run_id must be 32 lowercase hex characters, got {str(run_id)[:40]!r}")
    plan = "none" if plan_hash is None else _hex64(plan_hash, "plan_hash")
    parts = [
        validate_prefix(prefix),
        "tenant", validate_segment(tenant_id),
        "namespace", validate_segment(namespace),
        "scenario", validate_segment(scenario_id),
        "run", run_id,
        "plan", plan,
    ]
    return "/".join(p for p in parts if p)


# --------------------------------------------------------------------------- manifest
_FROZEN: Final = ConfigDict(frozen=True, extra="forbid")

RelPath = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class FileEntry(BaseModel):
    """One listed file: its runpack-relative path, sha256 and size in bytes."""

    model_config = _FROZEN

    path: RelPath
    sha256: Hex64
    size: int = Field(ge=0, strict=True)


class Manifest(BaseModel):
    """The manifest of a runpack (``manifest.json``), written last.

    ``as_of_ms`` is the commit time of the newest ledger entry (never the export's wall
    clock), so exporting the same run twice gives byte-identical manifests.
    """

    model_config = _FROZEN

    format: Literal["sr-runpack"] = FORMAT_NAME
    format_version: Literal[1] = FORMAT_VERSION
    hash_algorithm: Literal["sha256"] = HASH_ALGORITHM
    run_id: RunId
    tenant_id: Identifier
    namespace: Identifier
    scenario_id: Identifier
    plan_hash: Hex64 | None
    ledger_head_sha256: Hex64
    as_of_ms: int = Field(ge=0, strict=True)
    files: Annotated[tuple[FileEntry, ...], Field(min_length=1, max_length=MAX_FILES)]
    root_hash: Hex64


def root_hash(files: Iterable[FileEntry]) -> str:
    """sha256 of the ``sha256sum``-style listing ``"<sha256>  <path>\\n"`` of ``files`` in order."""
    listing = "".join(f"{f.sha256}  {f.path}\n" for f in files)
    return sha256_hex(listing.encode("utf-8"))


def build_manifest(
    artifacts: Mapping[str, bytes],
    *,
    run_id: str,
    tenant_id: str,
    namespace: str,
    scenario_id: str,
    plan_hash: str | None,
    ledger_head_sha256: str,
    as_of_ms: int,
) -> Manifest:
    """Build the manifest of ``artifacts`` (path → exact bytes), files sorted by path.

    Raises:
        UnsafeKeyError: a path is not part of the layout, or is the manifest itself.
        pydantic.ValidationError: invalid header values (a caller bug).
    """
    entries = []
    for path in sorted(artifacts):
        if artifact_kind(path) is ArtifactKind.MANIFEST:
            raise UnsafeKeyError("the manifest cannot list itself")
        data = artifacts[path]
        entries.append(FileEntry(path=path, sha256=sha256_hex(data), size=len(data)))
    return Manifest(
        run_id=run_id,
        tenant_id=tenant_id,
        namespace=namespace,
        scenario_id=scenario_id,
        plan_hash=plan_hash,
        ledger_head_sha256=ledger_head_sha256,
        as_of_ms=as_of_ms,
        files=tuple(entries),
        root_hash=root_hash(entries),
    )


def manifest_bytes(manifest: Manifest) -> bytes:
    """The exact bytes of ``manifest.json`` (canonical JSON)."""
    return canonical_json(manifest.model_dump(mode="json"))


def sorted_paths(paths: Sequence[str]) -> bool:
    """True when ``paths`` are strictly increasing (sorted, no duplicates)."""
    return all(a < b for a, b in itertools.pairwise(paths))
