"""An in-process stand-in for a Confluent Schema Registry: the few REST endpoints SR's client uses.

``with FakeSchemaRegistry() as registry:`` serves on a free loopback port (``registry.url``):

* ``POST /subjects/<subject>/versions`` — register (same schema text → same global id);
  a schema containing ``Incompatible`` is refused with 409, as a compatibility check would;
* ``POST /subjects/<subject>`` — look up: 200 with the id, or 404 with registry code 40401
  (no such subject) / 40403 (schema not under it);
* ``GET /schemas/ids/<id>`` — the schema text, or 404 with code 40403.

Query strings (``?normalize=...``) are accepted and ignored. With ``basic=(user, password)``
or ``bearer=token`` every request without exactly that ``Authorization`` header gets 401;
with ``tls=`` (a server-side :class:`ssl.SSLContext`, which may require client certificates)
it serves HTTPS. ``fail_next = N`` answers the next N requests 503; ``raw_next`` holds
``(status, body bytes)`` answers sent verbatim before anything else; ``types[id]`` sets an
id's ``schemaType``. Every request is recorded in ``requests`` (method, path without query,
``Authorization`` header) before it is answered.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = ["FakeSchemaRegistry", "SeenRequest"]


@dataclass(frozen=True)
class SeenRequest:
    """One request as the registry received it."""

    method: str
    path: str  # without the query string
    authorization: str | None


class FakeSchemaRegistry:
    """State and server of the stand-in registry (thread-safe; handlers run on server threads)."""

    def __init__(self, *, basic: tuple[str, str] | None = None, bearer: str | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.schemas: dict[int, str] = {}
        self.types: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[SeenRequest] = []
        self.fail_next = 0
        self.raw_next: list[tuple[int, bytes]] = []
        self._tls = tls
        self._lock = threading.Lock()
        self._expected: str | None = None
        if basic is not None:
            self._expected = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode("ascii")
        elif bearer is not None:
            self._expected = f"Bearer {bearer}"
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def calls(self) -> int:
        """Requests received so far (refused ones included)."""
        return len(self.requests)

    @property
    def url(self) -> str:
        """``http(s)://127.0.0.1:<port>``."""
        if self._server is None:
            raise RuntimeError("registry not started")
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self._server.server_address[1]}"

    def register(self, subject: str, schema: str) -> int:
        """Register ``schema`` under ``subject`` directly (as another producer would); return its id."""
        with self._lock:
            known = [i for i, text in self.schemas.items() if text == schema]
            schema_id = known[0] if known else len(self.schemas) + 1
            self.schemas[schema_id] = schema
            ids = self.subjects.setdefault(subject, [])
            if schema_id not in ids:
                ids.append(schema_id)
            return schema_id

    def seen(self, method: str, path: str | None = None) -> list[SeenRequest]:
        """Recorded requests with this method (and path, if given)."""
        return [r for r in self.requests if r.method == method and (path is None or r.path == path)]

    def __enter__(self) -> Self:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        if self._tls is not None:
            # The handshake happens in accept(); a failed one only drops that connection.
            self._server.socket = self._tls.wrap_socket(self._server.socket, server_side=True)
        server = self._server
        # A short poll interval: shutdown() waits for it, and tests start many registries.
        self._thread = threading.Thread(target=lambda: server.serve_forever(poll_interval=0.05),
                                        name="fake-schema-registry", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    # ----------------------------------------------------------------- request handling
    def _answer(self, method: str, target: str, authorization: str | None,
                body: bytes) -> tuple[int, dict[str, Any] | bytes]:
        path = urllib.parse.urlsplit(target).path
        refused = self._refusal(SeenRequest(method, path, authorization))
        if refused is not None:
            return refused
        parts = [urllib.parse.unquote(p) for p in path.split("/")]
        if method == "GET" and len(parts) == 4 and parts[1:3] == ["schemas", "ids"] and parts[3].isdigit():
            return self._by_id(int(parts[3]))
        if method == "POST" and len(parts) == 4 and parts[1] == "subjects" and parts[3] == "versions":
            return self._register(parts[2], json.loads(body)["schema"])
        if method == "POST" and len(parts) == 3 and parts[1] == "subjects":
            return self._lookup(parts[2], json.loads(body)["schema"])
        return 404, {"error_code": 404, "message": "HTTP 404 Not Found"}

    def _refusal(self, request: SeenRequest) -> tuple[int, dict[str, Any] | bytes] | None:
        """Record ``request``; the canned, 401 or 503 answer it gets instead of a real one, if any."""
        with self._lock:
            self.requests.append(request)
            if self.raw_next:
                return self.raw_next.pop(0)
            if self._expected is not None and request.authorization != self._expected:
                return 401, {"error_code": 401, "message": "Unauthorized"}
            if self.fail_next:
                self.fail_next -= 1
                return 503, {"error_code": 50301, "message": "unavailable"}
        return None

    def _register(self, subject: str, schema: str) -> tuple[int, dict[str, Any]]:
        if "Incompatible" in schema:
            return 409, {"error_code": 409, "message": "Schema being registered is incompatible"}
        return 200, {"id": self.register(subject, schema)}

    def _by_id(self, schema_id: int) -> tuple[int, dict[str, Any]]:
        with self._lock:
            text = self.schemas.get(schema_id)
            kind = self.types.get(schema_id)
        if text is None:
            return 404, {"error_code": 40403, "message": "Schema not found"}
        return 200, {"schema": text} if kind is None else {"schema": text, "schemaType": kind}

    def _lookup(self, subject: str, schema: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            ids = self.subjects.get(subject)
            if ids is None:
                return 404, {"error_code": 40401, "message": f"Subject '{subject}' not found."}
            wanted = json.loads(schema)
            for version, schema_id in enumerate(ids, start=1):
                if json.loads(self.schemas[schema_id]) == wanted:
                    return 200, {"subject": subject, "id": schema_id, "version": version, "schema": schema}
        return 404, {"error_code": 40403, "message": "Schema not found"}


def _handler(registry: FakeSchemaRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, doc = registry._answer(method, self.path, self.headers.get("Authorization"), body)
            payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

    return Handler
