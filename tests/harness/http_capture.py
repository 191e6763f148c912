"""A one-shot HTTP server standing in for S3 that records what a client sends.

``with OneRequestCapture() as capture:`` listens on a free loopback port
(``capture.endpoint``), accepts one connection, reads one request (head and
``Content-Length`` body), answers ``200 OK`` with an ETag and stores nothing. Afterwards
``capture.request_target``, ``capture.headers`` and ``capture.body`` hold what was sent: the
exact headers a real client (obstore, boto3) produced, signature included.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Self


class OneRequestCapture:
    """Record one HTTP request; answer it with 200 and an empty body."""

    def __init__(self, *, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.request_target = ""
        self.headers: dict[str, str] = {}
        self.body = b""

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``."""
        if self._server is None:
            raise RuntimeError("capture not started")
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def header(self, name: str) -> str | None:
        """A captured header, case-insensitively."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    def __enter__(self) -> Self:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(self._timeout)
        self._thread = threading.Thread(target=self._serve, name="http-capture", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._thread is not None:
            self._thread.join(self._timeout)
        if self._server is not None:
            self._server.close()

    def _serve(self) -> None:
        if self._server is None:
            return
        try:
            conn, _ = self._server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(self._timeout)
            raw = b""
            while b"\r\n\r\n" not in raw:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                raw += chunk
            head, _, rest = raw.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:])
            length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
            while len(rest) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                rest += chunk
            self.request_target, self.headers, self.body = lines[0].split(" ")[1], headers, rest
            conn.sendall(b'HTTP/1.1 200 OK\r\nETag: "captured"\r\nContent-Length: 0\r\n\r\n')
