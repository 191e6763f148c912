"""The Confluent Schema Registry client the Avro codec uses for the Confluent wire format."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from typing import Any, Final, Protocol, runtime_checkable

from worker.core.canonical import parse_json_strict
from worker.errors import (
    ConfigError,
    InvalidJSONError,
    MessageTooLargeError,
    SchemaRegistryRejectedError,
    SchemaRegistryUnavailableError,
    UnknownSchemaError,
)

__all__ = ["HttpSchemaRegistry", "SchemaRegistry"]

_MAX_REGISTRY_RESPONSE: Final = 4 * 1024 * 1024


# --------------------------------------------------------------------------- registry
@runtime_checkable
class SchemaRegistry(Protocol):
    """The two Confluent Schema Registry operations the codec needs."""

    def register(self, subject: str, schema_json: str) -> int:
        """Register (or look up) ``schema_json`` under ``subject``; return its global id."""
        ...

    def get_schema(self, schema_id: int) -> str:
        """Return the schema JSON text of a global schema id.

        Raises:
            UnknownSchemaError: the registry does not know the id.
        """
        ...


class HttpSchemaRegistry:
    """Confluent Schema Registry REST client on :mod:`urllib` (no extra dependency).

    Credentials (``basic_auth``) are sent as an ``Authorization`` header and never appear in
    error messages or ``repr``.
    """

    def __init__(self, url: str, *, timeout: float = 10.0, basic_auth: tuple[str, str] | None = None) -> None:
        """Create a client for the registry at ``url`` (``http://`` or ``https://``).

        Raises:
            ConfigError: the URL is not http(s) or carries no host.
        """
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError("schema registry URL must be http(s)://host[:port][/path]")
        self._base = url.rstrip("/")
        self._timeout = timeout
        self._headers = {
            "Accept": "application/vnd.schemaregistry.v1+json",
            "Content-Type": "application/vnd.schemaregistry.v1+json",
        }
        if basic_auth is not None:
            token = b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"

    def __repr__(self) -> str:
        return f"HttpSchemaRegistry({urllib.parse.urlsplit(self._base).hostname!r})"

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self._base + path, data=data, method=method, headers=self._headers)  # noqa: S310 - scheme checked in __init__
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310 - scheme checked in __init__
                raw = response.read(_MAX_REGISTRY_RESPONSE + 1)
        except urllib.error.HTTPError as exc:
            status = exc.code
            if status >= 500 or status == 429:
                raise SchemaRegistryUnavailableError(f"schema registry {method} {path}: HTTP {status}") from exc
            if status == 404 and path.startswith("/schemas/ids/"):
                raise UnknownSchemaError(f"schema registry does not know schema id {path.rsplit('/', 1)[-1]}") from exc
            raise SchemaRegistryRejectedError(f"schema registry {method} {path}: HTTP {status}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise SchemaRegistryUnavailableError(f"schema registry unreachable: {type(exc).__name__}") from exc
        try:
            doc = parse_json_strict(raw, max_bytes=_MAX_REGISTRY_RESPONSE)
        except (InvalidJSONError, MessageTooLargeError) as exc:
            raise SchemaRegistryRejectedError(f"schema registry {method} {path}: bad response: {exc}") from exc
        if not isinstance(doc, dict):
            raise SchemaRegistryRejectedError(f"schema registry {method} {path}: response is not an object")
        return doc

    def register(self, subject: str, schema_json: str) -> int:
        """POST ``/subjects/<subject>/versions``; return the schema id.

        Raises:
            SchemaRegistryUnavailableError: network error, timeout, 5xx or 429.
            SchemaRegistryRejectedError: other 4xx (e.g. incompatible schema) or a bad response.
        """
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions"
        doc = self._call("POST", path, {"schema": schema_json})
        schema_id = doc.get("id")
        if isinstance(schema_id, bool) or not isinstance(schema_id, int) or not 0 <= schema_id < 2**31:
            raise SchemaRegistryRejectedError(f"schema registry returned no valid id for subject {subject!r}")
        return schema_id

    def get_schema(self, schema_id: int) -> str:
        """GET ``/schemas/ids/<id>``; return the schema JSON text.

        Raises:
            UnknownSchemaError: 404 — the registry does not know the id.
            SchemaRegistryUnavailableError: network error, timeout, 5xx or 429.
            SchemaRegistryRejectedError: other 4xx or a bad response.
        """
        doc = self._call("GET", f"/schemas/ids/{int(schema_id)}", None)
        schema = doc.get("schema")
        if not isinstance(schema, str):
            raise SchemaRegistryRejectedError(f"schema registry returned no schema for id {schema_id}")
        return schema


