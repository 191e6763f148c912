"""Read-only access to a runpack's files: a local directory or an S3 prefix.

Both sources are hostile-input safe: a directory is walked and read without following any
symlink (bounded depth and file count), an S3 prefix is listed with a bounded file count,
and every read is capped at the byte cap of the file's kind, so an oversized file is never
read into memory. Anything a source cannot list safely is added to the report.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final, Protocol

from worker.app.ports import ObjectStore
from worker.core.keys import S3Location, parse_s3_uri
from worker.errors import MessageTooLargeError, ObjectNotFoundError
from worker.runpack.format import MAX_FILES
from worker.runpack.report import VerifyReport

__all__ = ["DirectorySource", "RunpackSource", "S3Source", "open_source"]

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)
#: Deepest directory nesting walked (the layout's deepest file is ``ledger/<seq>.json``).
_MAX_DEPTH: Final = 4


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
