"""Runpack verification, first stage: the manifest, the listed files and the runpack's location.

* **Manifest**: present (a runpack without one is incomplete: the manifest is written last),
  within its cap, strict canonical JSON, a known ``format`` / ``format_version``,
  ``hash_algorithm`` sha256, every listed path part of the layout, sorted and unique, and the
  root hash recomputed over the listed file hashes.
* **Files**: every listed file present, within its kind's byte cap (oversized files are never
  read), of the listed size and sha256 (bytes appended after the export are named as such),
  and no unlisted file in the runpack.
* **Location**: a runpack sitting in the standard layout sits where its own manifest says.

Each function adds what it finds to the report and never raises for anything wrong *in*
the runpack.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from worker.core.canonical import parse_json_strict, sha256_hex
from worker.errors import InvalidJSONError, MessageTooLargeError, SRError, UnsafeKeyError
from worker.runpack.format import (
    FORMAT_NAME,
    HASH_ALGORITHM,
    MANIFEST_NAME,
    SUPPORTED_VERSIONS,
    ArtifactKind,
    FileEntry,
    Manifest,
    Progress,
    artifact_cap,
    artifact_kind,
    manifest_bytes,
    root_hash,
    runpack_root,
    sorted_paths,
)
from worker.runpack.report import VerifyReport, validation_summary
from worker.runpack.sources import RunpackSource

__all__ = ["check_files", "check_location", "read_manifest"]


def read_manifest(source: RunpackSource, present: Mapping[str, int], report: VerifyReport) -> Manifest | None:
    """Read, parse and check the manifest; None when nothing further can be checked."""
    data = _manifest_bytes(source, present, report)
    if data is None:
        return None
    doc = _manifest_doc(data, report)
    if doc is None:
        return None
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as exc:
        report.add("MANIFEST_INVALID", MANIFEST_NAME, f"manifest fields are invalid: {validation_summary(exc)}")
        return None
    if manifest_bytes(manifest) != data:
        report.add("MANIFEST_NOT_CANONICAL", MANIFEST_NAME, "manifest bytes are not canonical JSON")
    if not sorted_paths([f.path for f in manifest.files]):
        report.add("MANIFEST_INVALID", MANIFEST_NAME, "manifest files are not sorted by path or not unique")
    recomputed = root_hash(manifest.files)
    if recomputed != manifest.root_hash:
        report.add("ROOT_HASH_MISMATCH", MANIFEST_NAME,
                   f"root hash over the listed file hashes is {recomputed}, manifest says {manifest.root_hash}")
    return manifest


def _manifest_bytes(source: RunpackSource, present: Mapping[str, int], report: VerifyReport) -> bytes | None:
    """The manifest's bytes, or None (reported: missing, oversized, unreadable)."""
    cap = artifact_cap(ArtifactKind.MANIFEST)
    data: bytes | None = None
    if MANIFEST_NAME not in present:
        report.add("MANIFEST_MISSING", MANIFEST_NAME,
                   "no manifest.json: the runpack is incomplete (the manifest is written last) and cannot verify")
    elif present[MANIFEST_NAME] > cap:
        report.add("ARTIFACT_OVERSIZED", MANIFEST_NAME, f"manifest is {present[MANIFEST_NAME]} bytes, cap is {cap}")
    else:
        try:
            data = source.read(MANIFEST_NAME, cap)
        except MessageTooLargeError as exc:
            report.add("ARTIFACT_OVERSIZED", MANIFEST_NAME, str(exc))
        except (SRError, OSError) as exc:
            report.add("READ_ERROR", MANIFEST_NAME, f"cannot read the manifest: {exc}")
        else:
            if data is None:
                report.add("MANIFEST_MISSING", MANIFEST_NAME, "manifest.json vanished while verifying")
    return data


def _manifest_doc(data: bytes, report: VerifyReport) -> dict[str, Any] | None:
    """The parsed manifest object if its format, version and algorithm are known; else None."""
    try:
        doc = parse_json_strict(data, max_bytes=artifact_cap(ArtifactKind.MANIFEST))
    except (InvalidJSONError, MessageTooLargeError) as exc:
        report.add("MANIFEST_INVALID", MANIFEST_NAME, f"manifest is not strict JSON: {exc}")
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        report.add("MANIFEST_INVALID", MANIFEST_NAME, f"not an {FORMAT_NAME} manifest (format field)")
        return None
    version = doc.get("format_version")
    known = isinstance(version, int) and not isinstance(version, bool)
    if known:
        report.format_version = version
    if not known or version not in SUPPORTED_VERSIONS:
        report.add("MANIFEST_VERSION_UNKNOWN", MANIFEST_NAME,
                   f"manifest format_version {version!r} is not one this verifier knows "
                   f"({sorted(SUPPORTED_VERSIONS)}); refusing to interpret it")
        return None
    if doc.get("hash_algorithm") != HASH_ALGORITHM:
        report.add("HASH_ALGORITHM_UNKNOWN", MANIFEST_NAME,
                   f"hash_algorithm {doc.get('hash_algorithm')!r} is not {HASH_ALGORITHM!r}")
        return None
    return doc


def check_files(source: RunpackSource, manifest: Manifest, present: Mapping[str, int], report: VerifyReport,
                progress: Progress | None) -> dict[str, bytes]:
    """Read and check every listed file, then report every present file the manifest does not list.

    Returns:
        path → bytes of every listed file that could be read (possibly with a size or hash
        mismatch, already reported), for the content checks.
    """
    contents: dict[str, bytes] = {}
    listed: set[str] = set()
    total = len(manifest.files)
    for done, entry in enumerate(manifest.files, start=1):
        listed.add(entry.path)
        data = _check_file(source, entry, present, report)
        if data is not None:
            contents[entry.path] = data
        report.files_checked += 1
        if progress is not None:
            progress(entry.path, done, total)
    for path in sorted(present):
        if path != MANIFEST_NAME and path not in listed:
            try:
                artifact_kind(path)
                why = "not listed in the manifest"
            except UnsafeKeyError:
                why = "not listed in the manifest and not part of the runpack layout"
            report.add("UNLISTED_FILE", path, why)
    return contents


def _check_file(source: RunpackSource, entry: FileEntry, present: Mapping[str, int],
                report: VerifyReport) -> bytes | None:
    """Read one listed file (if safe, present and within its cap) and compare size and sha256."""
    refusal = _refusal(entry, present)
    if refusal is not None:
        report.add(refusal[0], entry.path, refusal[1])
        return None
    path = entry.path
    try:
        data = source.read(path, artifact_cap(artifact_kind(path)))
    except MessageTooLargeError as exc:
        report.add("ARTIFACT_OVERSIZED", path, f"{exc} (not read further)")
        return None
    except (SRError, OSError) as exc:
        report.add("READ_ERROR", path, f"cannot read: {exc}")
        return None
    if data is None:
        report.add("ARTIFACT_MISSING", path, "listed in the manifest but not in the runpack")
        return None
    digest = sha256_hex(data)
    if len(data) != entry.size:
        if len(data) > entry.size and hashlib.sha256(data[: entry.size]).hexdigest() == entry.sha256:
            report.add("ARTIFACT_APPENDED", path,
                       f"{len(data) - entry.size} byte(s) were appended after export (the first {entry.size} "
                       "bytes still match)")
        else:
            report.add("SIZE_MISMATCH", path, f"file is {len(data)} bytes, manifest says {entry.size} "
                                              f"(sha256 {digest} != {entry.sha256})")
    elif digest != entry.sha256:
        report.add("ARTIFACT_MODIFIED", path, f"sha256 is {digest}, manifest says {entry.sha256}")
    return data


def _refusal(entry: FileEntry, present: Mapping[str, int]) -> tuple[str, str] | None:
    """Why a listed file must not be read at all (code, detail), or None."""
    try:
        kind = artifact_kind(entry.path)
    except UnsafeKeyError as exc:
        return "UNSAFE_PATH", f"refusing a listed path outside the layout: {exc}"
    cap = artifact_cap(kind)
    if kind is ArtifactKind.MANIFEST:
        return "UNSAFE_PATH", "the manifest lists itself"
    if entry.size > cap:
        return "ARTIFACT_OVERSIZED", f"listed size {entry.size} exceeds the {kind.value} cap of {cap}"
    if entry.path not in present:
        return "ARTIFACT_MISSING", "listed in the manifest but not in the runpack"
    if present[entry.path] > cap:
        return "ARTIFACT_OVERSIZED", f"file is {present[entry.path]} bytes, the {kind.value} cap is {cap} (not read)"
    return None


def check_location(source: RunpackSource, manifest: Manifest, report: VerifyReport) -> None:
    """If the runpack sits in the standard layout, it must be the layout of its own manifest."""
    try:
        expected = tuple(runpack_root("", tenant_id=manifest.tenant_id, namespace=manifest.namespace,
                                      scenario_id=manifest.scenario_id, run_id=manifest.run_id,
                                      plan_hash=manifest.plan_hash).split("/"))
    except UnsafeKeyError:
        return  # already reported as a manifest problem
    tail = source.segments[-len(expected):]
    if len(tail) == len(expected) and tail[0] == "tenant" and tail[6] == "run" and tail != expected:
        report.add("LOCATION_MISMATCH", None,
                   f"the runpack sits at {'/'.join(tail)} but its manifest is for {'/'.join(expected)}")

