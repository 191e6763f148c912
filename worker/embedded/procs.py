"""Child-process plumbing for the embedded stack: free ports, launching, stopping by PID.

Every server the stack starts is a direct child of the calling process, started with a
parent-death signal (Linux ``PR_SET_PDEATHSIG``) so that even a ``kill -9`` of the parent
cannot leave an orphan server behind; :meth:`ManagedProcess.stop` stops it by PID.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker.errors import PortInUseError

_PR_SET_PDEATHSIG = 1
LOOPBACK = "127.0.0.1"


def _ephemeral_low() -> int:
    """Lowest port of the kernel's ephemeral range (outgoing connections take ports from it)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    Ports are drawn at random *below* the kernel's ephemeral range, so outgoing connections
    (which take ephemeral ports) cannot grab one between this check and the server's bind.
    The port is still released before returning; callers treat a lost race by restarting
    the server on fresh ports.
    """
    high = _ephemeral_low() - 1
    low = 15000 if high > 16000 else 1024
    for _ in range(200):
        port = random.randint(low, high)  # noqa: S311 - not security relevant
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        fallback: int = sock.getsockname()[1]
        return fallback


def ensure_port_free(port: int, what: str) -> None:
    """Fail fast, with an actionable one-line message, if ``port`` is already bound.

    Raises:
        PortInUseError: another process listens on 127.0.0.1:``port``.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # No SO_REUSEADDR: we want the bind to fail exactly when a listener exists.
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            raise PortInUseError(
                f"port {port} on {LOOPBACK} (wanted for {what}) is already in use: "
                f"stop the process holding it or choose another port"
            ) from exc


def port_accepts(port: int, timeout: float = 0.5) -> bool:
    """Return True if something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def _death_signal_preexec() -> Callable[[], None] | None:
    """Build a ``preexec_fn`` asking the kernel to SIGKILL the child when we die (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)

    def _preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return _preexec


def tail(path: Path, lines: int = 8) -> str:
    """Return the last ``lines`` non-empty lines of a log file joined with `` | `` (one line)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else "(empty log)"


@dataclass
class ManagedProcess:
    """A server process this stack started and owns; stopped only by its PID."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    stop_grace: float = 5.0
    _stopped: bool = field(default=False, init=False)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Return True while the process has not exited."""
        return self.popen.poll() is None

    def stop(self) -> None:
        """Send ``stop_signal``, wait ``stop_grace`` seconds, then SIGKILL; always reaps."""
        if self._stopped:
            return
        self._stopped = True
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(self.stop_signal)
                self.popen.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(10.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            self.popen.kill()
            self.popen.wait()


def launch(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
    stop_grace: float = 5.0,
) -> ManagedProcess:
    """Start ``argv`` as a child writing to ``log_path``; it dies with us.

    Runs in its own session so a terminal's Ctrl-C reaches only the parent, which then
    stops the servers in order.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env if env is not None else dict(os.environ),
            user=user,
            start_new_session=True,
            preexec_fn=_death_signal_preexec(),  # noqa: PLW1509 - only calls prctl, no locks
        )
    return ManagedProcess(name, popen, log_path, stop_signal=stop_signal, stop_grace=stop_grace)


def wait_until(check: Callable[[], bool], *, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``check`` until it returns True or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
