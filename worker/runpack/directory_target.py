"""Export into a local directory: write-once, atomic files, never through a symlink.

Every path below the export directory is opened component by component with
``O_NOFOLLOW``, so a symlink planted anywhere on the way (or the export directory itself
being one) refuses the export instead of redirecting it. Files are written to a temporary
name, fsynced, then hard-linked to their final name: a file is either absent or complete,
and an existing file is never replaced (an identical one is accepted, so re-exporting is
idempotent; a different one is a :class:`~worker.errors.RunpackConflictError`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from worker.errors import RunpackConflictError, RunpackError, RunpackTargetError

__all__ = ["DirectoryTarget"]

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
