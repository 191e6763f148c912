"""The TCP fault proxy (tests/harness/faultproxy.py) against a tiny in-process echo server."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.harness.faultproxy import FaultProxy, Mode


class EchoServer:
    """Echoes every byte back; one daemon thread per connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(None)
            self.conns.append(conn)
            t = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)
        with contextlib.suppress(OSError):
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()
        for t in self.threads:
            t.join(2)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo.port) as p:
        yield p


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def proxy_threads(proxy: FaultProxy) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"faultproxy-{proxy.port}-")]


def wait_until(cond: object, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return True
        time.sleep(0.02)
    return False


def test_pass_through_echoes_large_payloads_on_many_connections(proxy: FaultProxy) -> None:
    assert proxy.address == f"127.0.0.1:{proxy.port}"
    payload = os.urandom(1024 * 1024)
    socks = [connect(proxy) for _ in range(4)]
    try:
        for sock in socks:
            assert roundtrip(sock, payload) == payload
        assert roundtrip(socks[0], b"hello") == b"hello"
        assert proxy.connections == 4
    finally:
        for sock in socks:
            sock.close()
    assert wait_until(lambda: proxy.connections == 0)


def test_half_close_still_delivers_the_answer(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(100):
            got += chunk
        assert got == b"last words"


def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"x") == b"x"
        proxy.latency(0.2)
        assert proxy.mode is Mode.LATENCY
        started = time.monotonic()
        assert roundtrip(sock, b"y") == b"y"
        assert time.monotonic() - started >= 0.4  # 0.2 s up + 0.2 s back
        proxy.pass_through()
        started = time.monotonic()
        assert roundtrip(sock, b"z") == b"z"
        assert time.monotonic() - started < 0.2
    with pytest.raises(ValueError, match=">= 0"):
        proxy.latency(-1)


def test_reset_rsts_existing_and_new_connections(proxy: FaultProxy) -> None:
    sock = connect(proxy)
    assert roundtrip(sock, b"a") == b"a"
    proxy.reset()
    with pytest.raises(ConnectionResetError):
        # The RST arrives asynchronously; keep sending until the kernel reports it.
        for _ in range(50):
            sock.sendall(b"b")
            if not sock.recv(10):
                break
            time.sleep(0.02)
    sock.close()
    # New connections are reset right after the handshake (seen at connect() or first recv()).
    with pytest.raises(ConnectionResetError):
        fresh = connect(proxy)
        try:
            fresh.recv(10)
        finally:
            fresh.close()
    proxy.pass_through()
    with connect(proxy) as again:
        assert roundtrip(again, b"ok") == b"ok"


def test_blackhole_stalls_then_heals(proxy: FaultProxy) -> None:
    old = connect(proxy, timeout=0.3)
    assert roundtrip(old, b"before") == b"before"
    proxy.blackhole()
    old.sendall(b"stuck")
    with pytest.raises(TimeoutError):
        old.recv(10)
    # New connections are accepted (the TCP handshake succeeds) but never answered.
    new = connect(proxy, timeout=0.3)
    new.sendall(b"hello?")
    with pytest.raises(TimeoutError):
        new.recv(10)
    proxy.pass_through()
    old.settimeout(3)
    new.settimeout(3)
    assert old.recv(10) == b"stuck"  # buffered bytes flow once the partition heals
    assert new.recv(10) == b"hello?"
    old.close()
    new.close()


def test_down_refuses_and_up_listens_on_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    sock = connect(proxy)
    assert roundtrip(sock, b"1") == b"1"
    proxy.down()
    assert proxy.mode is Mode.DOWN
    sock.settimeout(2)
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(10) == b""  # closed under the client
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.up()
    assert proxy.port == port
    with connect(proxy) as again:
        assert roundtrip(again, b"2") == b"2"


def test_unreachable_target_resets_the_client() -> None:
    with socket.socket() as tmp:
        tmp.bind(("127.0.0.1", 0))
        dead_port = tmp.getsockname()[1]
    with FaultProxy("127.0.0.1", dead_port) as proxy, pytest.raises(ConnectionResetError):
        sock = connect(proxy)
        try:
            sock.recv(10)
        finally:
            sock.close()


def test_mode_flips_under_traffic_and_exit_stops_everything(echo: EchoServer) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        port = proxy.port

        def client() -> None:
            while not stop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                        roundtrip(sock, b"ping" * 100)
                except OSError:
                    continue
                except BaseException as exc:
                    errors.append(exc)

        clients = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        for t in clients:
            t.start()
        for _ in range(3):
            for flip in (proxy.blackhole, proxy.reset, proxy.pass_through, proxy.down, proxy.up,
                         lambda: proxy.latency(0.01)):
                flip()
                time.sleep(0.05)
        proxy.pass_through()
        stop.set()
        for t in clients:
            t.join(5)
        assert proxy.accepted > 0
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            assert roundtrip(sock, b"still fine") == b"still fine"
        open_conn = socket.create_connection(("127.0.0.1", port), timeout=2)
        assert roundtrip(open_conn, b"held") == b"held"
    # Leaving the block closed the listener, every connection and every thread.
    assert not errors
    assert proxy_threads(proxy) == []
    open_conn.settimeout(2)
    with contextlib.suppress(ConnectionResetError):
        assert open_conn.recv(10) == b""
    open_conn.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    with pytest.raises(RuntimeError, match="closed"):
        proxy.pass_through()
