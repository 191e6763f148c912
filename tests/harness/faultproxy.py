"""A TCP fault-injection proxy for tests: put it between a client and a real server.

``FaultProxy(target_host, target_port)`` listens on ``127.0.0.1:<ephemeral>`` and forwards
bytes both ways. The fault mode can be switched at any time, from any thread:

* :meth:`~FaultProxy.pass_through` — forward normally (also brings a ``down()`` proxy back up);
* :meth:`~FaultProxy.latency` — forward, delaying every chunk by ``seconds`` in each direction;
* :meth:`~FaultProxy.reset` — RST every existing connection (``SO_LINGER`` 0) on both sides and
  reset every new one right after accepting it;
* :meth:`~FaultProxy.blackhole` — accept new connections but never connect them upstream and
  stop forwarding on existing ones: both sides stall (the kernel buffers what was sent). Back
  in pass-through, forwarding resumes where it stopped and held connections are connected
  upstream — a healed network partition;
* :meth:`~FaultProxy.down` — stop listening (new connections are *refused*) and close every
  connection; :meth:`~FaultProxy.up` listens again on the **same** port and passes through.

Every thread is a daemon and every thread/socket is gone after :meth:`~FaultProxy.close`
(or leaving the ``with`` block). Threads are named ``faultproxy-<port>-...``.
"""

from __future__ import annotations

import contextlib
import enum
import select
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Self

_POLL = 0.05  # seconds between checks of the mode / closing flags
_CHUNK = 64 * 1024


class Mode(enum.Enum):
    """The proxy's fault mode."""

    PASS = "pass"
    LATENCY = "latency"
    RESET = "reset"
    BLACKHOLE = "blackhole"
    DOWN = "down"


def _rst_close(sock: socket.socket | None) -> None:
    """Close ``sock`` so that the peer gets a RST (SO_LINGER on, timeout 0)."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _close(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.close()


class _Conn:
    """One proxied connection: client socket, upstream socket (once connected), two pumps."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, number: int) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.number = number
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- life cycle
    def start(self) -> None:
        t = threading.Thread(target=self._main, name=f"faultproxy-{self.proxy.port}-c{self.number}", daemon=True)
        self.threads.append(t)
        t.start()

    def kill(self, *, rst: bool) -> None:
        """Close both sides (RST or FIN); pumps notice within ``_POLL`` seconds."""
        with self.lock:
            if self.closed.is_set():
                return
            self.closed.set()
            closer = _rst_close if rst else _close
            closer(self.client)
            closer(self.upstream)

    def join(self, timeout: float) -> None:
        for t in list(self.threads):
            if t is not threading.current_thread():
                t.join(timeout)

    # ---------------------------------------------------------------- threads
    def _main(self) -> None:
        proxy = self.proxy
        try:
            mode = proxy._wait_while_blackholed(self.closed)
            if self.closed.is_set():
                return
            if mode is Mode.RESET:
                self.kill(rst=True)
                return
            try:
                upstream = socket.create_connection(proxy.target, timeout=5.0)
            except OSError:
                self.kill(rst=True)
                return
            upstream.settimeout(None)
            with self.lock:
                if self.closed.is_set():
                    _close(upstream)
                    return
                self.upstream = upstream
            back = threading.Thread(target=self._pump, args=(upstream, self.client),
                                    name=f"faultproxy-{proxy.port}-c{self.number}-down", daemon=True)
            self.threads.append(back)
            back.start()
            self._pump(self.client, upstream)
            # The client's EOF is passed on; the answer may still be flowing back.
            while back.is_alive() and not self.closed.is_set():
                back.join(_POLL)
        finally:
            proxy._forget(self)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy ``src`` → ``dst`` honouring the mode, until EOF, an error or kill()."""
        proxy = self.proxy
        while not self.closed.is_set():
            mode = proxy._wait_while_blackholed(self.closed)
            if self.closed.is_set():
                return
            if mode is Mode.RESET:
                self.kill(rst=True)
                return
            try:
                readable, _, _ = select.select([src], [], [], _POLL)
            except (OSError, ValueError):
                self.kill(rst=False)
                return
            if not readable or self.closed.is_set():
                continue
            # Re-check after waking up: a blackhole that started meanwhile must not let this chunk through.
            if proxy.mode is Mode.BLACKHOLE:
                continue
            try:
                data = src.recv(_CHUNK)
            except OSError:
                self.kill(rst=True)
                return
            if not data:
                # Half-close: pass the EOF on, keep the other direction flowing.
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            delay = proxy.delay
            if delay > 0:
                time.sleep(delay)
            try:
                dst.sendall(data)
            except OSError:
                self.kill(rst=True)
                return


class FaultProxy:
    """A TCP proxy to ``target_host:target_port`` with switchable faults (see the module doc).

    Use as a context manager. Thread-safe: modes may be switched from any thread while
    traffic flows.

    Attributes:
        port: the local port (stable across :meth:`down` / :meth:`up`).
        address: ``"127.0.0.1:<port>"``.
        target: ``(target_host, target_port)``.
    """

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, int(target_port))
        self.listen_host = listen_host
        self.port = 0
        self._cond = threading.Condition()
        self._mode = Mode.PASS
        self._delay = 0.0
        self._conns: set[_Conn] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._acceptor_stop = threading.Event()
        self._closing = False
        self._counter = 0
        self.accepted = 0

    # ---------------------------------------------------------------- properties
    @property
    def address(self) -> str:
        """``host:port`` to point a client at."""
        return f"{self.listen_host}:{self.port}"

    @property
    def mode(self) -> Mode:
        """The current fault mode."""
        with self._cond:
            return self._mode

    @property
    def delay(self) -> float:
        """Seconds added per forwarded chunk (0 unless in latency mode)."""
        with self._cond:
            return self._delay if self._mode is Mode.LATENCY else 0.0

    @property
    def connections(self) -> int:
        """Connections currently open through the proxy."""
        with self._cond:
            return len(self._conns)

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Listen (on an ephemeral port the first time) and start accepting."""
        with self._cond:
            if self._closing:
                raise RuntimeError("FaultProxy is closed")
            self._listen_locked()
            self._mode = Mode.PASS

    def close(self) -> None:
        """Stop every thread and close every socket (idempotent)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._stop_listening()
        self._kill_all(rst=False)
        self._join_all()

    # ---------------------------------------------------------------- modes
    def pass_through(self) -> None:
        """Forward normally (listening again first if the proxy is down)."""
        self._set(Mode.PASS)

    def up(self) -> None:
        """Listen again on the same port (after :meth:`down`) and pass through."""
        self._set(Mode.PASS)

    def latency(self, seconds: float) -> None:
        """Forward with ``seconds`` of delay per chunk, in each direction."""
        if seconds < 0:
            raise ValueError("latency must be >= 0 seconds")
        with self._cond:
            self._delay = float(seconds)
        self._set(Mode.LATENCY)

    def reset(self) -> None:
        """RST every existing connection and every new one."""
        self._set(Mode.RESET)
        self._kill_all(rst=True)

    def blackhole(self) -> None:
        """Accept but never forward: existing and new connections stall."""
        self._set(Mode.BLACKHOLE)

    def down(self) -> None:
        """Stop listening (connects are refused) and close every connection."""
        with self._cond:
            self._mode = Mode.DOWN
            self._cond.notify_all()
        self._stop_listening()
        self._kill_all(rst=False)

    # ---------------------------------------------------------------- internals
    def _set(self, mode: Mode) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("FaultProxy is closed")
            if self._listener is None:
                self._listen_locked()
            self._mode = mode
            self._cond.notify_all()

    def _listen_locked(self) -> None:
        if self._listener is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.listen_host, self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        self._listener = sock
        stop = threading.Event()
        self._acceptor_stop = stop
        self._acceptor = threading.Thread(target=self._accept_loop, args=(sock, stop),
                                          name=f"faultproxy-{self.port}-accept", daemon=True)
        self._acceptor.start()

    def _stop_listening(self) -> None:
        with self._cond:
            sock, thread, stop = self._listener, self._acceptor, self._acceptor_stop
            self._listener = None
            self._acceptor = None
        stop.set()
        if thread is not None:
            thread.join(5.0)
        _close(sock)

    def _accept_loop(self, sock: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                readable, _, _ = select.select([sock], [], [], _POLL)
            except (OSError, ValueError):
                return
            if not readable or stop.is_set():
                continue
            try:
                client, _ = sock.accept()
            except OSError:
                continue
            client.settimeout(None)
            with self._cond:
                if self._closing or stop.is_set():
                    _close(client)
                    continue
                if self._mode is Mode.RESET:
                    self.accepted += 1
                    _rst_close(client)
                    continue
                self._counter += 1
                self.accepted += 1
                conn = _Conn(self, client, self._counter)
                self._conns.add(conn)
            conn.start()

    def _wait_while_blackholed(self, closed: threading.Event) -> Mode:
        """Block while in blackhole mode (or until ``closed``); return the mode then."""
        with self._cond:
            while self._mode is Mode.BLACKHOLE and not closed.is_set() and not self._closing:
                self._cond.wait(_POLL)
            return self._mode

    def _forget(self, conn: _Conn) -> None:
        conn.kill(rst=False)
        with self._cond:
            self._conns.discard(conn)

    def _kill_all(self, *, rst: bool) -> None:
        with self._cond:
            conns = list(self._conns)
        for conn in conns:
            conn.kill(rst=rst)

    def _join_all(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                conns = list(self._conns)
            if not conns or time.monotonic() > deadline:
                break
            for conn in conns:
                conn.join(max(0.0, deadline - time.monotonic()))
            # A finished main thread removes its connection; spin briefly until that happens.
            time.sleep(0.01)
