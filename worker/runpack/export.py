"""Export a run's runpack from S3 truth (and the Postgres outbox) to a directory or S3.

Export is deterministic: every artifact is either the exact bytes of an S3 truth object
(plan, ledger entries, facts views — each verified on read) or canonical JSON derived from
them and from the run's publication rows, and the only time in the runpack is the commit
time of the newest ledger entry. Exporting the same run twice gives byte-identical runpacks.

Write order: every artifact first (in path order), ``manifest.json`` last, so an interrupted
export leaves a runpack without manifest, which never verifies. Every write is write-once:
an identical existing file is accepted (re-export is idempotent), a different one is a
:class:`~worker.errors.RunpackConflictError`. All checks that can refuse an export (unsafe
ids, unsafe target, size caps, conflicts, missing Object Lock) run before the first write.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from worker.adapters.postgres import RunIndex
from worker.adapters.s3 import ObjectStore
from worker.app.truth import TruthStore
from worker.core.facts import facts_view_bytes
from worker.core.identity import run_id_of
from worker.core.keys import S3Location, parse_s3_uri
from worker.core.ledger import LedgerEntry, derive_state, entry_bytes, entry_hash
from worker.core.models import RunIntent, parse_intent
from worker.core.plan import plan_bytes
from worker.errors import (
    DriftError,
    IntegrityError,
    IntentInvalidError,
    RunpackConflictError,
    RunpackError,
    RunpackTargetError,
    UnsafeKeyError,
)
from worker.runpack.artifacts import (
    PublicationSource,
    facts_references,
    intent_bytes,
    plan_references,
    publications_bytes,
    receipts_bytes,
    run_summary,
    run_summary_bytes,
)
from worker.runpack.format import (
    MANIFEST_NAME,
    MAX_FILES,
    Manifest,
    artifact_cap,
    artifact_kind,
    build_manifest,
    facts_path,
    ledger_path,
    manifest_bytes,
    receipts_path,
    runpack_root,
)
from worker.runpack.retention import Retention, apply_retention, require_object_lock

__all__ = [
    "DirectoryTarget",
    "ExportResult",
    "ExportTarget",
    "Progress",
    "Runpack",
    "S3Target",
    "collect_runpack",
    "export_run",
    "open_target",
]

#: ``progress(path, done, total)`` after each file written.
Progress = Callable[[str, int, int], None]

_RUN_ID_RE: Final = re.compile(r"[0-9a-f]{32}")
_MD5_RE: Final = re.compile(r"[0-9a-f]{32}")


def _check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or _RUN_ID_RE.fullmatch(run_id) is None:
        raise UnsafeKeyError(f"run_id must be 32 lowercase hex characters, got {str(run_id)[:40]!r}")
    return run_id


# --------------------------------------------------------------------------- the runpack
@dataclass(frozen=True)
class Runpack:
    """A complete runpack in memory: the artifacts (path → bytes) and the manifest."""

    manifest: Manifest
    artifacts: dict[str, bytes] = field(repr=False)

    @property
    def manifest_data(self) -> bytes:
        """Exact bytes of ``manifest.json``."""
        return manifest_bytes(self.manifest)

    def relative_root(self, prefix: str = "") -> str:
        """Where the runpack goes below an export target (see :func:`runpack_root`).

        Raises:
            UnsafeKeyError: an unsafe prefix or identifier.
        """
        m = self.manifest
        return runpack_root(prefix, tenant_id=m.tenant_id, namespace=m.namespace, scenario_id=m.scenario_id,
                            run_id=m.run_id, plan_hash=m.plan_hash)

    def files_in_write_order(self) -> list[tuple[str, bytes]]:
        """Every artifact in path order, then the manifest."""
        ordered = [(path, self.artifacts[path]) for path in sorted(self.artifacts)]
        ordered.append((MANIFEST_NAME, self.manifest_data))
        return ordered


def _intent_for(entries: Sequence[LedgerEntry], fallback: dict[str, object] | None, run_id: str,
                tenant_id: str, namespace: str) -> tuple[dict[str, object], RunIntent]:
    recorded = entries[0].body.get("intent")
    doc = recorded if isinstance(recorded, dict) else fallback
    if doc is None:
        raise RunpackError(f"run {run_id}: the ledger records no intent and the index has no row for it")
    try:
        intent = parse_intent(doc)
    except IntentInvalidError as exc:
        raise IntegrityError(f"run {run_id}: the recorded intent is invalid: {exc}") from exc
    if run_id_of(intent) != run_id:
        raise IntegrityError(f"run {run_id}: the recorded intent derives another run id")
    if (intent.tenant_id, intent.namespace) != (tenant_id, namespace):
        raise IntegrityError(f"run {run_id}: the recorded intent names another tenant/namespace")
    return dict(doc), intent


def collect_runpack(truth: TruthStore, run_id: str, *, tenant_id: str, namespace: str,
                    publications: Sequence[PublicationSource] = (),
                    fallback_intent: dict[str, object] | None = None) -> Runpack:
    """Read a run's truth from S3 (every read verified) and assemble its runpack in memory.

    Args:
        truth: the truth store (bucket + prefix of SR's S3 truth).
        run_id / tenant_id / namespace: the run; validated by the key functions.
        publications: the run's outbox rows (other runs' rows are ignored).
        fallback_intent: the index row's intent, used only if the first ledger entry
            carries none (ledgers written before it did).

    Raises:
        UnsafeKeyError: a malformed run id or an unsafe tenant/namespace.
        RunpackError: the run has no ledger in S3, records more than one plan, or an
            artifact exceeds its byte cap.
        IntegrityError: S3 truth fails verification (broken chain, hash mismatch...).
        ObjectNotFoundError: a plan or facts view the ledger references is missing.
        S3UnavailableError / S3AccessError.
    """
    keys = truth.keys_for(tenant_id, namespace, _check_run_id(run_id))
    entries = truth.read_ledger(keys)
    if not entries:
        raise RunpackError(f"run {run_id} has no ledger under s3://{truth.bucket}/{keys.root}/")
    state = derive_state(entries)
    intent_doc, intent = _intent_for(entries, fallback_intent, run_id, tenant_id, namespace)

    artifacts: dict[str, bytes] = {"intent.json": intent_bytes(intent_doc)}
    plans = plan_references(entries)
    if len(plans) > 1:
        raise RunpackError(f"run {run_id}: the ledger records {len(plans)} different plans")
    plan_hash = plans[0] if plans else None
    if plan_hash is not None:
        artifacts["plan.json"] = plan_bytes(truth.read_plan(keys, plan_hash))
    for entry in entries:
        artifacts[ledger_path(entry.seq)] = entry_bytes(entry)
    for fv_hash in facts_references(entries):
        view = truth.read_facts_view(keys, fv_hash)
        artifacts[facts_path(fv_hash)] = facts_view_bytes(view)
        artifacts[receipts_path(fv_hash)] = receipts_bytes(view, fv_hash)
    artifacts["publications.json"] = publications_bytes(run_id, [p for p in publications if p.run_id == run_id])
    head = entry_hash(entries[-1])
    summary = run_summary(state, entries, tenant_id=tenant_id, namespace=namespace,
                          scenario_id=intent.scenario_id, ledger_head_sha256=head,
                          source={"bucket": truth.bucket, "run_root": keys.root})
    artifacts["run.json"] = run_summary_bytes(summary)

    if len(artifacts) >= MAX_FILES:
        raise RunpackError(f"run {run_id}: {len(artifacts)} artifacts exceed the {MAX_FILES}-file cap")
    for path, data in artifacts.items():
        cap = artifact_cap(artifact_kind(path))
        if len(data) > cap:
            raise RunpackError(f"run {run_id}: artifact {path} is {len(data)} bytes, cap is {cap}")
    manifest = build_manifest(
        artifacts, run_id=run_id, tenant_id=tenant_id, namespace=namespace, scenario_id=intent.scenario_id,
        plan_hash=plan_hash, ledger_head_sha256=head, as_of_ms=entries[-1].at_ms,
    )
    data = manifest_bytes(manifest)
    if len(data) > artifact_cap(artifact_kind(MANIFEST_NAME)):
        raise RunpackError(f"run {run_id}: the manifest would exceed its byte cap")
    return Runpack(manifest=manifest, artifacts=artifacts)


# --------------------------------------------------------------------------- targets
class ExportTarget(Protocol):
    """Where runpacks are written. ``preflight`` never writes; ``write`` is write-once."""

    def location(self, rel_root: str) -> str:
        """Human/machine-readable location of the runpack root (a path or an s3:// URI)."""
        ...

    def preflight(self, rel_root: str, files: Sequence[tuple[str, bytes]]) -> None:
        """Refuse the export (raising) before anything is written."""
        ...

    def write(self, rel_root: str, path: str, data: bytes) -> None:
        """Write one file, write-once."""
        ...

    def finish(self, rel_root: str) -> None:
        """Make the written files durable."""
        ...


_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)


def _split_rel(rel: str) -> list[str]:
    """Split a relative path into components, refusing absolute paths, ``.``/``..`` and empties.

    Raises:
        RunpackTargetError: the path is absolute or has an empty, ``.`` or ``..`` component.
    """
    if rel.startswith(("/", "\\")) or "\\" in rel or "\x00" in rel:
        raise RunpackTargetError(f"refusing absolute or non-portable path {rel[:120]!r}")
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise RunpackTargetError(f"refusing path {rel[:120]!r} with an empty, '.' or '..' component")
    return parts


class DirectoryTarget:
    """A local directory. Never follows a symlink below ``base`` (nor ``base`` itself).

    Files are written to a temporary name in their directory, fsynced, then hard-linked to
    their final name (``link`` never replaces an existing file) and the temporary name is
    removed: a file is either absent or complete, and nothing is ever overwritten.

    Raises:
        RunpackTargetError: ``base`` is empty or contains NUL.
    """

    def __init__(self, base: str | os.PathLike[str]) -> None:
        text = os.fspath(base)
        if not text or "\x00" in text:
            raise RunpackTargetError("the export directory must be a non-empty path")
        self.base = Path(text)

    def location(self, rel_root: str) -> str:
        """The runpack root directory."""
        return str(self.base.joinpath(*_split_rel(rel_root)))

    # ------------------------------------------------------------------ checks (no writes)
    def _check_base(self) -> bool:
        """True if ``base`` exists (as a real directory).

        Raises:
            RunpackTargetError: ``base`` is a symlink or not a directory.
        """
        try:
            st = os.lstat(self.base)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise RunpackTargetError(f"cannot inspect {self.base}: {exc.strerror}") from exc
        if stat.S_ISLNK(st.st_mode):
            raise RunpackTargetError(f"refusing to export into {self.base}: it is a symlink")
        if not stat.S_ISDIR(st.st_mode):
            raise RunpackTargetError(f"refusing to export into {self.base}: not a directory")
        return True

    def preflight(self, rel_root: str, files: Sequence[tuple[str, bytes]]) -> None:
        """Refuse before writing: symlinks or non-directories on the way, unsafe paths, conflicts.

        Raises:
            RunpackTargetError: a symlink/non-directory on the way, or an unsafe path.
            RunpackConflictError: a file exists with different content (or is not a regular file).
        """
        root_parts = _split_rel(rel_root)
        for path, _ in files:
            _split_rel(path)
        if not self._check_base():
            return
        current = self.base
        for part in root_parts:
            current = current / part
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                return  # nothing below exists yet: nothing can conflict
            if stat.S_ISLNK(st.st_mode):
                raise RunpackTargetError(f"refusing to export through symlink {current}")
            if not stat.S_ISDIR(st.st_mode):
                raise RunpackTargetError(f"refusing to export through non-directory {current}")
        for dirpath, dirnames, filenames in os.walk(current, followlinks=False):
            for name in (*dirnames, *filenames):
                if os.path.islink(os.path.join(dirpath, name)):
                    raise RunpackTargetError(f"refusing to export into {current}: it contains symlink "
                                             f"{os.path.join(dirpath, name)}")
        for path, data in files:
            self._preflight_file(current, path, data)

    def _preflight_file(self, root: Path, path: str, data: bytes) -> None:
        current = root
        parts = _split_rel(path)
        for part in parts[:-1]:
            current = current / part
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                raise RunpackTargetError(f"refusing to export through {current}: symlink or not a directory")
        target = current / parts[-1]
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise RunpackTargetError(f"refusing to export: {target} is a symlink")
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(data) or _read_path(target, len(data)) != data:
            raise RunpackConflictError(f"{target} already exists with different content")

    # ------------------------------------------------------------------ writes
    def _open_dir(self, parent_fd: int, name: str, *, create: bool) -> int:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=parent_fd)
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise RunpackTargetError(f"refusing to export through {name!r}: symlink or not a directory") from exc
            raise RunpackError(f"cannot open directory {name!r}: {exc.strerror}") from exc

    def _open_root(self, rel_parts: Sequence[str]) -> int:
        """An fd of the runpack root, creating directories without following any symlink.

        Raises:
            RunpackTargetError: a symlink or non-directory on the way.
            RunpackError: the directories cannot be created or opened.
        """
        try:
            os.makedirs(self.base, exist_ok=True)
        except OSError as exc:
            raise RunpackError(f"cannot create export directory {self.base}: {exc.strerror}") from exc
        self._check_base()
        try:
            fd = os.open(self.base, _DIR_FLAGS)
        except OSError as exc:
            raise RunpackTargetError(f"cannot open export directory {self.base}: {exc.strerror}") from exc
        try:
            for part in rel_parts:
                child = self._open_dir(fd, part, create=True)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def write(self, rel_root: str, path: str, data: bytes) -> None:
        """Write one file under the runpack root (write-once, atomic, no symlinks followed).

        Raises:
            RunpackTargetError: a symlink or non-directory on the way.
            RunpackConflictError: the file exists with different content.
            RunpackError: another filesystem error.
        """
        parts = _split_rel(path)
        fd = self._open_root(_split_rel(rel_root))
        try:
            for part in parts[:-1]:
                child = self._open_dir(fd, part, create=True)
                os.close(fd)
                fd = child
            self._write_file(fd, parts[-1], data, path)
        finally:
            os.close(fd)

    @staticmethod
    def _write_file(dir_fd: int, name: str, data: bytes, shown: str) -> None:
        tmp = f".{name}.tmp-{uuid.uuid4().hex}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o644, dir_fd=dir_fd)
        except OSError as exc:
            raise RunpackError(f"cannot create {shown}: {exc.strerror}") from exc
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                if _read_regular(dir_fd, name, len(data)) != data:
                    raise RunpackConflictError(f"{shown} already exists with different content") from None
        except OSError as exc:
            raise RunpackError(f"cannot write {shown}: {exc.strerror}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)

    def finish(self, rel_root: str) -> None:
        """fsync every directory of the runpack so the files' names are durable.

        Raises:
            RunpackError: a directory cannot be opened.
        """
        fd = self._open_root(_split_rel(rel_root))
        try:
            stack = [fd]
            while stack:
                current = stack.pop()
                try:
                    os.fsync(current)
                    for entry in os.scandir(current):
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(os.open(entry.name, _DIR_FLAGS, dir_fd=current))
                finally:
                    if current != fd:
                        os.close(current)
        except OSError as exc:
            raise RunpackError(f"cannot sync the runpack directories: {exc.strerror}") from exc
        finally:
            os.close(fd)


def _read_path(path: Path, limit: int) -> bytes | None:
    """Read a regular file by path without following a final symlink (see :func:`_read_regular`)."""
    try:
        dir_fd = os.open(path.parent, _DIR_FLAGS)
    except OSError:
        return None
    try:
        return _read_regular(dir_fd, path.name, limit)
    finally:
        os.close(dir_fd)


def _read_regular(dir_fd: int, name: str, limit: int) -> bytes | None:
    """Read at most ``limit + 1`` bytes of a regular file (no symlink); None if it is not one."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class S3Target:
    """An ``s3://bucket/prefix`` location, written through the object-store adapter.

    Every object is written with ``If-None-Match: *`` (an identical existing object is
    accepted); with ``retention`` each object also gets S3 Object Lock retention right after
    its write, and the bucket's Object Lock configuration is checked before anything is
    written.
    """

    def __init__(self, store: ObjectStore, location: S3Location, retention: Retention | None = None) -> None:
        self.store = store
        self.base = location
        self.retention = retention

    def _root(self, rel_root: str) -> S3Location:
        try:
            return self.base.join(rel_root)
        except UnsafeKeyError as exc:
            raise RunpackTargetError(f"unsafe runpack location: {exc}") from exc

    def location(self, rel_root: str) -> str:
        """The ``s3://`` URI of the runpack root."""
        return self._root(rel_root).uri

    def preflight(self, rel_root: str, files: Sequence[tuple[str, bytes]]) -> None:
        """Object Lock check (if asked) and one LIST for conflicting existing objects.

        Raises:
            ObjectLockUnsupportedError: retention asked for, bucket has no Object Lock.
            RunpackConflictError: an existing object has a different size (or MD5 ETag).
            RunpackTargetError: an unsafe key.
            S3UnavailableError / S3AccessError.
        """
        root = self._root(rel_root)
        wanted = {root.join(path).prefix: data for path, data in files}
        if self.retention is not None:
            require_object_lock(self.store, self.base.bucket)
        for meta in self.store.list(self.base.bucket, root.prefix + "/"):
            data = wanted.get(meta.key)
            if data is None:
                continue
            # A single-part PUT's ETag is the MD5 of its bytes: compare it when it looks like one.
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if meta.size != len(data) or (_MD5_RE.fullmatch(meta.etag) is not None and meta.etag != md5):
                raise RunpackConflictError(f"s3://{self.base.bucket}/{meta.key} already exists with different content")

    def write(self, rel_root: str, path: str, data: bytes) -> None:
        """Write-once PUT (then retention, if configured).

        Raises:
            RunpackConflictError: the key holds different bytes.
            S3UnavailableError / S3AccessError / ObjectLockUnsupportedError.
        """
        key = self._root(rel_root).join(path).prefix
        try:
            self.store.put_write_once(self.base.bucket, key, data)
        except DriftError as exc:
            raise RunpackConflictError(f"s3://{self.base.bucket}/{key} already exists with different content") from exc
        if self.retention is not None:
            apply_retention(self.store, self.base.bucket, key, self.retention)

    def finish(self, rel_root: str) -> None:
        """Nothing to do: a successful PUT is durable."""


def open_target(target: str, store: ObjectStore | None = None, retention: Retention | None = None) -> ExportTarget:
    """``s3://bucket/prefix`` → :class:`S3Target` (needs ``store``); anything else → a directory.

    Raises:
        UnsafeKeyError: an invalid s3:// URI.
        RunpackError: an S3 target without a store, or retention on a directory target.
        RunpackTargetError: an empty directory path.
    """
    if target.startswith("s3://"):
        if store is None:
            raise RunpackError("an s3:// export target needs an object store")
        return S3Target(store, parse_s3_uri(target), retention)
    if retention is not None:
        raise RunpackError("WORM retention (--retain-until) needs an s3:// target with S3 Object Lock")
    return DirectoryTarget(target)


# --------------------------------------------------------------------------- export
@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote."""

    location: str
    run_id: str
    root_hash: str
    files: int
    bytes: int


def export_run(
    run_id: str,
    target: ExportTarget,
    *,
    truth: TruthStore,
    index: RunIndex | None,
    tenant_id: str | None = None,
    namespace: str | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Export one run's runpack to ``target``; manifest last.

    The run's tenant and namespace come from the index row; ``tenant_id``/``namespace``
    override them when the index has no row (e.g. after a rebuild) and must agree with it
    otherwise. Publications come from the index (none without a row).

    Raises:
        UnsafeKeyError: a malformed run id or an unsafe tenant/namespace/scenario.
        RunpackError: the run is unknown, or its runpack cannot be built (see
            :func:`collect_runpack`); RunpackTargetError / RunpackConflictError from the target.
        IntegrityError / ObjectNotFoundError: S3 truth fails verification.
        ObjectLockUnsupportedError: retention asked for on a bucket without Object Lock.
        PostgresUnavailableError / S3UnavailableError / S3AccessError / PostgresError.
    """
    _check_run_id(run_id)
    row = index.get(run_id) if index is not None else None
    if row is not None:
        for given, stored, what in ((tenant_id, row.tenant_id, "tenant"), (namespace, row.namespace, "namespace")):
            if given is not None and given != stored:
                raise RunpackError(f"run {run_id} belongs to {what} {stored!r}, not {given!r}")
        tenant_id, namespace = row.tenant_id, row.namespace
    if tenant_id is None or namespace is None:
        raise RunpackError(f"run {run_id} is not in the index; give --tenant and --namespace to export it from S3")
    publications = index.publications(run_id) if index is not None and row is not None else []
    runpack = collect_runpack(truth, run_id, tenant_id=tenant_id, namespace=namespace, publications=publications,
                              fallback_intent=row.intent if row is not None else None)
    rel_root = runpack.relative_root()
    files = runpack.files_in_write_order()
    target.preflight(rel_root, files)
    total = len(files)
    for done, (path, data) in enumerate(files, start=1):
        target.write(rel_root, path, data)
        if progress is not None:
            progress(path, done, total)
    target.finish(rel_root)
    return ExportResult(
        location=target.location(rel_root),
        run_id=run_id,
        root_hash=runpack.manifest.root_hash,
        files=total,
        bytes=sum(len(data) for _, data in files),
    )

