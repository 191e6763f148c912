"""Where runpacks are exported: the :class:`ExportTarget` protocol, an S3 prefix, and :func:`open_target`.

A target's ``preflight`` refuses an export (unsafe location, conflicting existing files,
missing Object Lock) before anything is written; ``write`` is write-once per file. A local
directory is :class:`~worker.runpack.directory_target.DirectoryTarget`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from worker.adapters.s3 import ObjectStore
from worker.core.keys import S3Location, parse_s3_uri
from worker.errors import (
    DriftError,
    MessageTooLargeError,
    ObjectNotFoundError,
    RunpackConflictError,
    RunpackError,
    RunpackTargetError,
    UnsafeKeyError,
)
from worker.runpack.directory_target import DirectoryTarget
from worker.runpack.retention import Retention, apply_retention, require_object_lock

__all__ = ["DirectoryTarget", "ExportTarget", "S3Target", "open_target"]


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
        """Object Lock check (if asked), one LIST for existing objects, and one GET per file
        that already exists with the right size, to compare its bytes.

        An ETag is never taken for an MD5 of the bytes: under SSE-KMS or after a multipart
        upload it is not one, and S3-compatible servers choose their own. So an existing
        object of the same size is read back (capped at the file's size) and compared byte
        for byte. Cost: nothing extra on a first export (the LIST finds nothing); one GET per
        file on a re-export onto an existing runpack, whose write-once PUTs then answer 412
        and read each file once more (:meth:`~worker.adapters.s3.ObjectStore.put_write_once`).

        Raises:
            ObjectLockUnsupportedError: retention asked for, bucket has no Object Lock.
            RunpackConflictError: an existing object has a different size or different bytes.
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
            if meta.size != len(data) or not self._holds(meta.key, data):
                raise RunpackConflictError(f"s3://{self.base.bucket}/{meta.key} already exists with different content")

    def _holds(self, key: str, data: bytes) -> bool:
        """Whether ``key`` holds exactly ``data`` (one GET capped at ``len(data)`` bytes).

        An object deleted since the LIST conflicts with nothing (the write creates it); one
        grown past ``len(data)`` differs.
        """
        try:
            return self.store.get(self.base.bucket, key, max_bytes=len(data)) == data
        except ObjectNotFoundError:
            return True
        except MessageTooLargeError:
            return False

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
