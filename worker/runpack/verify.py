"""Offline verification of a runpack (a directory, or an S3 prefix), fail closed.

Verification needs nothing but the runpack's own files: no Kafka, Postgres or SR state.
It collects *every* problem it finds instead of stopping at the first one; the runpack
verifies only when the list is empty. Checks, in order:

1. **Manifest**: present (a runpack without one is incomplete), within its cap, strict
   canonical JSON, a known ``format``/``format_version``, ``hash_algorithm`` sha256, every
   listed path part of the layout, sorted and unique, and the root hash recomputed.
2. **Files**: every listed file present, within its kind's byte cap (oversized files are
   never read), of the listed size and sha256 (bytes appended after the export are named as
   such), and no unlisted file (nor symlink, nor special file) in the runpack.
3. **Content**: the ledger's hash chain and derived state (:mod:`worker.core.ledger`), the
   intent (it must derive the run id), the plan (hash = the ledger's ``plan_hash``, same
   intent fingerprint), every facts view the ledger references (hash = its name, same run and
   plan) with its receipts, every publication (payload decodes; a READY/SUPERSEDE event
   names facts views of the runpack and equals the control fact rebuilt from its ledger
   entry, :func:`worker.core.events.control_fact`; a STATUS event matches its ledger entry),
   and ``run.json`` against the ledger.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from pydantic import ValidationError

from worker.adapters.avro import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, AvroCodec
from worker.adapters.s3 import ObjectStore
from worker.core.canonical import canonical_json, parse_json_strict, sha256_hex
from worker.core.events import control_fact
from worker.core.facts import FactsView, parse_facts_view
from worker.core.identity import intent_fingerprint, run_id_of
from worker.core.keys import S3Location, parse_s3_uri
from worker.core.ledger import LedgerEntry, LedgerKind, RunState, derive_state, parse_entry
from worker.core.models import EventType, ReadyEvent, RunIntent, RunStatusEvent, millis, parse_intent
from worker.core.plan import Plan, parse_plan
from worker.errors import (
    IntegrityError,
    IntentInvalidError,
    InvalidJSONError,
    MessageTooLargeError,
    ObjectNotFoundError,
    SRError,
    UnsafeKeyError,
)
from worker.runpack.artifacts import (
    PublicationRecord,
    PublicationsDoc,
    b64decode_strict,
    facts_references,
    intent_bytes,
    plan_references,
    receipts_bytes,
    run_summary,
)
from worker.runpack.format import (
    FORMAT_NAME,
    HASH_ALGORITHM,
    MANIFEST_NAME,
    MAX_FILES,
    SUPPORTED_VERSIONS,
    ArtifactKind,
    FileEntry,
    Manifest,
    artifact_cap,
    artifact_kind,
    facts_path,
    ledger_path,
    manifest_bytes,
    receipts_path,
    root_hash,
    runpack_root,
    sorted_paths,
)

__all__ = [
    "DirectorySource",
    "Problem",
    "RunpackSource",
    "S3Source",
    "VerifyReport",
    "open_source",
    "verify_runpack",
]

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)
_MAX_DEPTH: Final = 4
_IDEMPOTENCY_HEADER: Final = "sr-idempotency-key"


@dataclass(frozen=True, slots=True)
class Problem:
    """One verification finding: a stable ``code``, the file it concerns, and why."""

    code: str
    path: str | None
    detail: str

    def to_dict(self) -> dict[str, str | None]:
        """JSON shape of the problem."""
        return {"code": self.code, "path": self.path, "detail": self.detail}


@dataclass
class VerifyReport:
    """Result of :func:`verify_runpack`. ``ok`` only when there is no problem at all."""

    location: str
    problems: list[Problem] = field(default_factory=list)
    run_id: str | None = None
    root_hash: str | None = None
    format_version: int | None = None
    files_checked: int = 0

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.problems

    def add(self, code: str, path: str | None, detail: str) -> None:
        """Record one problem (the detail folded onto one line, at most 2000 characters)."""
        line = " ".join(detail.split())
        self.problems.append(Problem(code, path, line if len(line) <= 2000 else line[:1997] + "..."))

    def codes(self) -> list[str]:
        """The problem codes, in the order found."""
        return [p.code for p in self.problems]

    def to_dict(self) -> dict[str, Any]:
        """JSON shape of the report."""
        return {
            "ok": self.ok,
            "location": self.location,
            "run_id": self.run_id,
            "root_hash": self.root_hash,
            "format_version": self.format_version,
            "files_checked": self.files_checked,
            "problems": [p.to_dict() for p in self.problems],
        }


# --------------------------------------------------------------------------- sources
class RunpackSource(Protocol):
    """Read-only access to the files of one runpack."""

    @property
    def location(self) -> str:
        """Where the runpack is (for reports)."""
        ...

    @property
    def segments(self) -> tuple[str, ...]:
        """The location's path segments (to compare with the layout)."""
        ...

    def list_files(self, report: VerifyReport) -> dict[str, int]:
        """Every regular file (relative path → size); anything else is reported."""
        ...

    def read(self, path: str, max_bytes: int) -> bytes | None:
        """A file's bytes, or None if it is absent.

        Raises:
            MessageTooLargeError: the file has more than ``max_bytes`` bytes.
            SRError / OSError: it could not be read.
        """
        ...


class DirectorySource:
    """A runpack directory. Symlinks inside it are reported and never followed."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def location(self) -> str:
        """The directory path."""
        return str(self.root)

    @property
    def segments(self) -> tuple[str, ...]:
        """The directory's path components."""
        return self.root.parts

    def list_files(self, report: VerifyReport) -> dict[str, int]:
        """Walk the directory without following symlinks (bounded depth and count).

        A missing or unreadable root is reported as ``RUNPACK_UNREADABLE``.
        """
        found: dict[str, int] = {}
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            report.add("RUNPACK_UNREADABLE", None, f"cannot open runpack directory {self.root}: {exc.strerror}")
            return found
        stack: list[tuple[int, str, int]] = [(root_fd, "", 0)]
        try:
            while stack:
                fd, rel, depth = stack.pop()
                try:
                    self._scan(fd, rel, depth, stack=stack, found=found, report=report)
                finally:
                    os.close(fd)
        finally:
            for fd, _, _ in stack:
                os.close(fd)
        return found

    @staticmethod
    def _scan(fd: int, rel: str, depth: int, *, stack: list[tuple[int, str, int]], found: dict[str, int],
              report: VerifyReport) -> None:
        with os.scandir(fd) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                path = f"{rel}{entry.name}"
                if entry.is_symlink():
                    report.add("SYMLINK", path, "symlinks are not allowed in a runpack (never followed)")
                elif entry.is_dir(follow_symlinks=False):
                    if depth + 1 >= _MAX_DEPTH:
                        report.add("UNLISTED_FILE", path + "/", "directory nested deeper than the layout allows")
                        continue
                    try:
                        child = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                    except OSError as exc:
                        report.add("READ_ERROR", path + "/", f"cannot open directory: {exc.strerror}")
                        continue
                    stack.append((child, path + "/", depth + 1))
                elif entry.is_file(follow_symlinks=False):
                    if len(found) > MAX_FILES:
                        report.add("TOO_MANY_FILES", None, f"more than {MAX_FILES} files; listing stopped")
                        stack.clear()
                        return
                    found[path] = entry.stat(follow_symlinks=False).st_size
                else:
                    report.add("NOT_A_REGULAR_FILE", path, "only regular files belong in a runpack")

    def read(self, path: str, max_bytes: int) -> bytes | None:
        """Read a file through ``O_NOFOLLOW`` opens of every component, capped.

        Raises:
            MessageTooLargeError: more than ``max_bytes`` bytes.
            OSError: unreadable (a symlink appearing after listing raises ELOOP).
        """
        parts = path.split("/")
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            for part in parts[:-1]:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    return None
                os.close(fd)
                fd = child
            try:
                file_fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return None
        finally:
            os.close(fd)
        try:
            st = os.fstat(file_fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{path} is not a regular file")
            if st.st_size > max_bytes:
                raise MessageTooLargeError(f"{path} is {st.st_size} bytes, cap is {max_bytes}")
            chunks: list[bytes] = []
            total = 0
            while True:
                chunk = os.read(file_fd, min(1 << 20, max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > max_bytes:
                    raise MessageTooLargeError(f"{path} has more than {max_bytes} bytes")
            return b"".join(chunks)
        finally:
            os.close(file_fd)


class S3Source:
    """A runpack under an ``s3://bucket/prefix`` (the runpack root, holding manifest.json)."""

    def __init__(self, store: ObjectStore, root: S3Location) -> None:
        self.store = store
        self.root = root

    @property
    def location(self) -> str:
        """The s3:// URI of the runpack root."""
        return self.root.uri

    @property
    def segments(self) -> tuple[str, ...]:
        """The key prefix's segments."""
        return self.root.segments

    def list_files(self, report: VerifyReport) -> dict[str, int]:
        """One LIST per 1000 keys below the root."""
        found: dict[str, int] = {}
        prefix = self.root.prefix + "/" if self.root.prefix else ""
        for meta in self.store.list(self.root.bucket, prefix):
            if len(found) > MAX_FILES:
                report.add("TOO_MANY_FILES", None, f"more than {MAX_FILES} objects; listing stopped")
                break
            found[meta.key[len(prefix):]] = meta.size
        return found

    def read(self, path: str, max_bytes: int) -> bytes | None:
        """GET with a byte cap.

        Raises:
            MessageTooLargeError: more than ``max_bytes`` bytes.
            S3UnavailableError / S3AccessError.
        """
        key = f"{self.root.prefix}/{path}" if self.root.prefix else path
        try:
            return self.store.get(self.root.bucket, key, max_bytes=max_bytes)
        except ObjectNotFoundError:
            return None


def open_source(location: str, store: ObjectStore | None = None) -> RunpackSource:
    """``s3://...`` → :class:`S3Source` (needs ``store``), anything else → :class:`DirectorySource`.

    Raises:
        UnsafeKeyError: an invalid s3:// URI.
        ValueError: an s3:// location without a store.
    """
    if location.startswith("s3://"):
        if store is None:
            raise ValueError("an s3:// runpack needs an object store")
        return S3Source(store, parse_s3_uri(location))
    return DirectorySource(location)


# --------------------------------------------------------------------------- verification
Progress = Callable[[str, int, int], None]


def verify_runpack(source: RunpackSource, *, expect_root_hash: str | None = None,
                   progress: Progress | None = None) -> VerifyReport:
    """Verify a runpack offline; never raises for anything wrong *in* the runpack.

    Args:
        source: where the runpack's files are.
        expect_root_hash: a root hash recorded out of band at export time; a runpack whose
            manifest carries another one is reported (``ROOT_HASH_UNEXPECTED``).
        progress: ``progress(path, done, total)`` after each listed file.

    Returns:
        The report: ``ok`` only when no problem was found.

    Raises:
        S3UnavailableError / S3AccessError: the S3 listing itself failed (nothing could be
            checked; a failing *read* of one file is reported instead).
    """
    report = VerifyReport(location=source.location)
    present = source.list_files(report)
    manifest = _read_manifest(source, present, report)
    if manifest is None:
        return report
    report.run_id = manifest.run_id
    report.root_hash = manifest.root_hash
    if expect_root_hash is not None and expect_root_hash != manifest.root_hash:
        report.add("ROOT_HASH_UNEXPECTED", MANIFEST_NAME,
                   f"manifest root hash {manifest.root_hash} is not the expected {expect_root_hash}")
    contents = _check_files(source, manifest, present, report, progress)
    _Content(manifest, contents, report).check()
    _check_location(source, manifest, report)
    return report


def _read_manifest(source: RunpackSource, present: Mapping[str, int], report: VerifyReport) -> Manifest | None:
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
        report.add("MANIFEST_INVALID", MANIFEST_NAME, f"manifest fields are invalid: {_summary(exc)}")
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


def _summary(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
             for e in exc.errors(include_url=False, include_input=False)[:5]]
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _check_files(source: RunpackSource, manifest: Manifest, present: Mapping[str, int], report: VerifyReport,
                 progress: Progress | None) -> dict[str, bytes]:
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


def _check_location(source: RunpackSource, manifest: Manifest, report: VerifyReport) -> None:
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


class _Content:
    """Content-level checks over the files that could be read (see the module docstring)."""

    def __init__(self, manifest: Manifest, contents: Mapping[str, bytes], report: VerifyReport) -> None:
        self.m = manifest
        self.run_id = manifest.run_id
        self.contents = contents
        self.listed = {f.path for f in manifest.files}
        self.report = report
        self.entries: list[LedgerEntry] = []
        self.complete_ledger = False
        self.state: RunState | None = None
        self.intent: RunIntent | None = None
        self.plan: Plan | None = None
        self.plan_hash: str | None = None
        self.views: dict[str, FactsView] = {}

    def add(self, code: str, path: str | None, detail: str) -> None:
        self.report.add(code, path, detail)

    def required(self, path: str) -> bytes | None:
        """The bytes of a required file, or None (reported if not even listed)."""
        if path not in self.listed:
            self.add("REQUIRED_ARTIFACT_MISSING", path, "the manifest does not list this required file")
            return None
        return self.contents.get(path)

    def check(self) -> None:
        self.check_ledger()
        self.check_intent()
        self.check_plan()
        self.check_facts()
        self.check_publications()
        self.check_run_summary()

    # ------------------------------------------------------------------ ledger
    def check_ledger(self) -> None:
        seqs = sorted(int(p[7:19]) for p in self.listed if p.startswith("ledger/") and len(p) == 24)
        if not seqs:
            self.add("REQUIRED_ARTIFACT_MISSING", ledger_path(0), "the runpack has no ledger")
            return
        if seqs != list(range(len(seqs))):
            missing = sorted(set(range(seqs[-1] + 1)) - set(seqs))
            self.add("LEDGER_GAP", None, f"ledger entries missing from the manifest: seq {missing[:10]}")
        previous: bytes | None = None
        complete = True
        for seq in range(seqs[-1] + 1):
            path = ledger_path(seq)
            data = self.contents.get(path)
            if data is None:
                complete, previous = False, None
                continue
            try:
                entry = parse_entry(data, run_id=self.run_id, seq=seq)
            except IntegrityError as exc:
                self.add("LEDGER_ENTRY_INVALID", path, str(exc))
                complete, previous = False, None
                continue
            if seq > 0 and previous is not None and entry.prev_hash != sha256_hex(previous):
                self.add("LEDGER_CHAIN_BROKEN", path,
                         f"prev_hash {entry.prev_hash} is not the sha256 of entry seq {seq - 1}")
                complete = False
            previous = data
            self.entries.append(entry)
        self.complete_ledger = complete and len(self.entries) == seqs[-1] + 1
        if not self.complete_ledger:
            return
        try:
            self.state = derive_state(self.entries)
        except IntegrityError as exc:
            self.add("LEDGER_STATE_INVALID", None, str(exc))
        head = self.contents[ledger_path(len(self.entries) - 1)]
        if sha256_hex(head) != self.m.ledger_head_sha256:
            self.add("MANIFEST_MISMATCH", MANIFEST_NAME, "ledger_head_sha256 is not the hash of the last entry")
        if self.entries[-1].at_ms != self.m.as_of_ms:
            self.add("MANIFEST_MISMATCH", MANIFEST_NAME, "as_of_ms is not the time of the last ledger entry")

    # ------------------------------------------------------------------ intent
    def check_intent(self) -> None:
        data = self.required("intent.json")
        if data is None:
            return
        try:
            doc = parse_json_strict(data, max_bytes=artifact_cap(ArtifactKind.INTENT))
            intent = parse_intent(doc) if isinstance(doc, dict) else None
        except (InvalidJSONError, MessageTooLargeError, IntentInvalidError) as exc:
            self.add("INTENT_INVALID", "intent.json", str(exc))
            return
        if intent is None or not isinstance(doc, dict):
            self.add("INTENT_INVALID", "intent.json", "intent.json is not an object")
            return
        if intent_bytes(doc) != data:
            self.add("INTENT_INVALID", "intent.json", "intent.json is not canonical JSON")
        self.intent = intent
        if run_id_of(intent) != self.run_id:
            self.add("INTENT_RUN_MISMATCH", "intent.json", f"the intent derives run {run_id_of(intent)}, "
                                                          f"not {self.run_id}")
        if (intent.tenant_id, intent.namespace, intent.scenario_id) != (self.m.tenant_id, self.m.namespace,
                                                                        self.m.scenario_id):
            self.add("MANIFEST_MISMATCH", MANIFEST_NAME, "tenant/namespace/scenario differ from the intent's")
        recorded = self.entries[0].body.get("intent") if self.entries and self.entries[0].seq == 0 else None
        if recorded is not None and recorded != doc:
            self.add("INTENT_MISMATCH", "intent.json", "differs from the intent recorded in ledger entry seq 0")

    # ------------------------------------------------------------------ plan
    def check_plan(self) -> None:
        plans = plan_references(self.entries)
        if len(plans) > 1:
            self.add("PLAN_AMBIGUOUS", None, f"the ledger records {len(plans)} different plan hashes")
        expected = plans[0] if plans else None
        self.plan_hash = expected
        if self.complete_ledger and expected != self.m.plan_hash:
            self.add("MANIFEST_MISMATCH", MANIFEST_NAME, f"plan_hash {self.m.plan_hash} is not the ledger's {expected}")
        if expected is None:
            if "plan.json" in self.listed:
                self.add("PLAN_UNREFERENCED", "plan.json", "no ledger entry records a plan_hash")
            return
        data = self.required("plan.json")
        if data is None:
            return
        if sha256_hex(data) != expected:
            self.add("PLAN_HASH_MISMATCH", "plan.json", f"sha256 {sha256_hex(data)} is not the ledger's "
                                                        f"plan_hash {expected}")
        try:
            plan = parse_plan(data)
        except IntegrityError as exc:
            self.add("PLAN_INVALID", "plan.json", str(exc))
            return
        self.plan = plan
        if plan.run_id != self.run_id:
            self.add("PLAN_INVALID", "plan.json", f"the plan is for run {plan.run_id}")
        if self.intent is not None and plan.intent_fingerprint != intent_fingerprint(self.intent):
            self.add("PLAN_INTENT_MISMATCH", "plan.json", "the plan's intent_fingerprint is not the intent's")

    # ------------------------------------------------------------------ facts + receipts
    def check_facts(self) -> None:
        referenced = facts_references(self.entries)
        listed = {p[6:70] for p in self.listed if p.startswith("facts/")}
        listed_receipts = {p[9:73] for p in self.listed if p.startswith("receipts/")}
        for fv in referenced:
            if fv not in listed:
                self.add("FACTS_MISSING", facts_path(fv), "the ledger references this facts view; it is not listed")
        for fv in sorted(listed - set(referenced)):
            self.add("FACTS_UNREFERENCED", facts_path(fv), "no ledger entry references this facts view")
        for fv in sorted(listed_receipts - listed):
            self.add("RECEIPTS_UNREFERENCED", receipts_path(fv), "receipts of a facts view the runpack lacks")
        for fv in sorted(listed):
            self._check_view(fv, fv in listed_receipts)
        for entry in self.entries:
            if entry.kind in (LedgerKind.READY, LedgerKind.SUPERSEDED):
                named = entry.body.get("facts_view_hash" if entry.kind is LedgerKind.READY else "new_facts_view_hash")
                uri = entry.body.get("facts_view_uri")
                if isinstance(uri, str) and not uri.endswith(f"/facts/{named}.json"):
                    self.add("LEDGER_URI_MISMATCH", ledger_path(entry.seq),
                             f"facts_view_uri {uri} does not name {named}")

    def _check_view(self, fv: str, has_receipts: bool) -> None:
        path = facts_path(fv)
        data = self.contents.get(path)
        if data is None:
            return
        if sha256_hex(data) != fv:
            self.add("FACTS_HASH_MISMATCH", path, f"sha256 {sha256_hex(data)} is not the name {fv}")
        try:
            view = parse_facts_view(data)
        except IntegrityError as exc:
            self.add("FACTS_INVALID", path, str(exc))
            return
        self.views[fv] = view
        if view.run_id != self.run_id:
            self.add("FACTS_INVALID", path, f"the facts view is for run {view.run_id}")
        if self.plan_hash is not None and view.plan_hash != self.plan_hash:
            self.add("FACTS_PLAN_MISMATCH", path, f"plan_hash {view.plan_hash} is not the run's {self.plan_hash}")
        if self.plan is not None and view.policy_rev != self.plan.policy_rev:
            self.add("FACTS_PLAN_MISMATCH", path, "policy_rev differs from the plan's")
        rpath = receipts_path(fv)
        if not has_receipts:
            self.add("RECEIPTS_MISSING", rpath, "every facts view needs its receipts file")
            return
        receipts = self.contents.get(rpath)
        if receipts is not None and receipts != receipts_bytes(view, fv):
            self.add("RECEIPTS_MISMATCH", rpath, "the receipts differ from the facts view's gate receipts")

    # ------------------------------------------------------------------ publications
    def check_publications(self) -> None:
        data = self.required("publications.json")
        if data is None:
            return
        try:
            doc = PublicationsDoc.model_validate(parse_json_strict(data, max_bytes=len(data)))
        except (InvalidJSONError, MessageTooLargeError) as exc:
            self.add("PUBLICATIONS_INVALID", "publications.json", str(exc))
            return
        except ValidationError as exc:
            self.add("PUBLICATIONS_INVALID", "publications.json", _summary(exc))
            return
        if canonical_json(doc.model_dump(mode="json")) != data:
            self.add("PUBLICATIONS_INVALID", "publications.json", "not canonical JSON")
        if doc.run_id != self.run_id:
            self.add("PUBLICATIONS_INVALID", "publications.json", f"lists publications of run {doc.run_id}")
        if not sorted_paths([p.pub_key for p in doc.publications]):
            self.add("PUBLICATIONS_INVALID", "publications.json", "publications are not sorted/unique by pub_key")
        codec = AvroCodec()
        for pub in doc.publications:
            self._check_publication(codec, pub)

    def _bad(self, pub: PublicationRecord, detail: str, code: str = "PUBLICATION_MISMATCH") -> None:
        self.add(code, "publications.json", f"{pub.pub_key}: {detail}")

    def _check_publication(self, codec: AvroCodec, pub: PublicationRecord) -> None:
        try:
            payload = b64decode_strict(pub.payload_b64)
            key = None if pub.msg_key_b64 is None else b64decode_strict(pub.msg_key_b64)
        except ValueError as exc:
            self._bad(pub, str(exc), "PUBLICATION_INVALID")
            return
        if sha256_hex(payload) != pub.payload_sha256:
            self._bad(pub, "payload bytes do not hash to payload_sha256", "PUBLICATION_INVALID")
        if key != self.run_id.encode():
            self._bad(pub, "the message key is not the run id")
        if pub.headers.get(_IDEMPOTENCY_HEADER) != pub.pub_key:
            self._bad(pub, f"header {_IDEMPOTENCY_HEADER} is not the pub_key")
        frame = _single_object(codec, payload, "ReadyEvent" if pub.kind != "STATUS" else "RunStatusEvent")
        try:
            if pub.kind == "STATUS":
                self._check_status(pub, codec.decode_status(frame))
            else:
                self._check_ready(pub, codec.decode_ready(frame))
        except SRError as exc:
            self._bad(pub, f"payload does not decode: {exc}", "PUBLICATION_UNDECODABLE")

    def _check_ready(self, pub: PublicationRecord, event: ReadyEvent) -> None:
        fv = event.facts_view_hash
        expected_key = f"{self.run_id}:{fv}:{event.event_type.value}"
        if event.run_id != self.run_id or pub.pub_key != expected_key:
            self._bad(pub, f"the payload is the event {expected_key} of run {event.run_id}, not this row's")
        if event.event_type.value != pub.kind or pub.event_type != pub.kind or pub.facts_view_hash != fv:
            self._bad(pub, "event type / facts_view_hash differ between the row and the payload")
        if facts_path(fv) not in self.listed:
            self._bad(pub, f"names facts view {fv}, which is not in the runpack", "PUBLICATION_FACTS_UNKNOWN")
        if not event.facts_view_uri.endswith(f"/facts/{fv}.json"):
            self._bad(pub, f"facts_view_uri {event.facts_view_uri} does not name facts view {fv}")
        old = event.supersedes_facts_view_hash
        if old is not None and facts_path(old) not in self.listed:
            self._bad(pub, f"supersedes facts view {old}, which is not in the runpack", "PUBLICATION_FACTS_UNKNOWN")
        # The event must be exactly the control fact its ledger entry records.
        kind, field = ((LedgerKind.READY, "facts_view_hash") if event.event_type is EventType.READY
                       else (LedgerKind.SUPERSEDED, "new_facts_view_hash"))
        entry = next((e for e in self.entries if e.kind is kind and e.body.get(field) == fv), None)
        if entry is None:
            if self.complete_ledger:
                self._bad(pub, f"no {kind.value} ledger entry records facts view {fv}")
            return
        if self.intent is None:
            return
        try:
            expected = control_fact(entry, self.intent)
        except IntegrityError as exc:
            self._bad(pub, f"ledger seq {entry.seq} cannot be rebuilt as an event: {exc}")
            return
        if event != expected:
            got, want = event.model_dump(), expected.model_dump()
            fields = sorted(k for k in want if got.get(k) != want[k])
            self._bad(pub, f"differs from the {event.event_type.value} fact of ledger seq {entry.seq} in: "
                           f"{', '.join(fields)}")

    def _check_status(self, pub: PublicationRecord, event: RunStatusEvent) -> None:
        parts = pub.pub_key.split(":")
        if (len(parts) != 4 or parts[0] != self.run_id or parts[1] != "status" or not parts[2].isdigit()
                or event.run_id != self.run_id or parts[3] != event.status.value
                or pub.facts_view_hash is not None or pub.event_type is not None):
            self._bad(pub, "a STATUS publication must be keyed <run_id>:status:<seq>:<status> of its own event")
            return
        seq = int(parts[2])
        entry = next((e for e in self.entries if e.seq == seq), None)
        if entry is None:
            if self.complete_ledger:
                self._bad(pub, f"ledger entry seq {seq} does not exist")
            return
        if entry.kind.value != event.status.value:
            self._bad(pub, f"ledger entry seq {seq} is {entry.kind.value}, not {event.status.value}")
        if millis(event.emitted_at) != entry.at_ms:
            self._bad(pub, f"emitted_at is not the commit time of ledger entry seq {seq}")
        if entry.body.get("reason_code") != event.reason_code:
            self._bad(pub, f"reason_code differs from ledger entry seq {seq}")

    # ------------------------------------------------------------------ run.json
    def check_run_summary(self) -> None:
        data = self.required("run.json")
        if data is None or self.state is None or self.intent is None:
            return
        try:
            doc = parse_json_strict(data, max_bytes=artifact_cap(ArtifactKind.RUN))
        except (InvalidJSONError, MessageTooLargeError) as exc:
            self.add("RUN_SUMMARY_INVALID", "run.json", str(exc))
            return
        if not isinstance(doc, dict) or not isinstance(doc.get("source"), dict):
            self.add("RUN_SUMMARY_INVALID", "run.json", "run.json is not an object with a source")
            return
        source = {str(k): str(v) for k, v in doc["source"].items()}
        expected = run_summary(self.state, self.entries, tenant_id=self.intent.tenant_id,
                               namespace=self.intent.namespace, scenario_id=self.intent.scenario_id,
                               ledger_head_sha256=sha256_hex(self.contents[ledger_path(len(self.entries) - 1)]),
                               source=source)
        if canonical_json(expected) != data:
            differing = sorted(k for k in set(expected) | set(doc) if expected.get(k) != doc.get(k))
            self.add("RUN_SUMMARY_MISMATCH", "run.json",
                     f"differs from the ledger in: {', '.join(differing) or 'form'}")


def _single_object(codec: AvroCodec, payload: bytes, record: str) -> bytes:
    """Re-frame a Confluent-framed payload (magic 0 + schema id) for offline decoding.

    A runpack has no schema registry; SR wrote the payload with its own schema, so the body
    is decoded with the local schema of ``record`` (a mismatch fails to decode and is reported).
    """
    if payload[:1] == CONFLUENT_MAGIC and len(payload) >= 5:
        return SINGLE_OBJECT_MAGIC + codec.fingerprint(record) + payload[5:]
    return payload


def problem_codes(problems: Iterable[Problem]) -> list[str]:
    """Codes of ``problems`` (a convenience for callers and tests)."""
    return [p.code for p in problems]


def summarize(report: VerifyReport) -> Sequence[str]:
    """Human-readable lines of a report."""
    lines = [f"{p.code}: {p.path + ': ' if p.path else ''}{p.detail}" for p in report.problems]
    return lines
