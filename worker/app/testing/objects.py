"""An in-memory S3: the ``ObjectStore`` port with write-once semantics and injectable faults."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator

from worker.app.ports import ObjectMeta, WriteOutcome
from worker.errors import DriftError, MessageTooLargeError, ObjectNotFoundError, PreconditionFailedError

__all__ = ["InMemoryObjectStore"]


# --------------------------------------------------------------------------- object store
class InMemoryObjectStore:
    """An S3-like store in a dict. ``requests`` counts calls by verb (PUT/GET/HEAD/LIST)."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str], bytes] = {}
        self._faults: dict[str, list[BaseException]] = defaultdict(list)
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()

    # ---------------------------------------------------------------- test helpers
    def fail_next(self, verb: str, error: BaseException, times: int = 1) -> None:
        """Make the next ``times`` requests of ``verb`` (PUT/GET/HEAD/LIST) raise ``error``."""
        with self._lock:
            self._faults[verb].extend([error] * times)

    def put(self, bucket: str, key: str, body: bytes) -> None:
        """Plain overwrite (how evidence producers write; not write-once)."""
        self._request("PUT")
        with self._lock:
            self._objects[(bucket, key)] = bytes(body)

    def delete(self, bucket: str, key: str) -> None:
        """Remove ``key`` if present."""
        with self._lock:
            self._objects.pop((bucket, key), None)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix``, in key order (no request counted)."""
        with self._lock:
            return sorted((k for b, k in self._objects if b == bucket and k.startswith(prefix)),
                          key=lambda k: k.encode())

    def read(self, bucket: str, key: str) -> bytes:
        """The stored bytes (no request counted). Raises KeyError if absent."""
        with self._lock:
            return self._objects[(bucket, key)]

    def _request(self, verb: str) -> None:
        with self._lock:
            self.requests[verb] += 1
            faults = self._faults.get(verb)
            error = faults.pop(0) if faults else None
        if error is not None:
            raise error

    @staticmethod
    def _etag(data: bytes) -> str:
        # Deliberately not an MD5: nothing may assume an ETag is one.
        return hashlib.sha256(data).hexdigest()[:32]

    def _get_bytes(self, bucket: str, key: str) -> bytes:
        with self._lock:
            data = self._objects.get((bucket, key))
        if data is None:
            raise ObjectNotFoundError(f"s3://{bucket}/{key} not found")
        return data

    # ---------------------------------------------------------------- the port
    def create(self, bucket: str, key: str, body: bytes) -> bool:
        """PUT with ``If-None-Match: *``."""
        self._request("PUT")
        with self._lock:
            if (bucket, key) in self._objects:
                return False
            self._objects[(bucket, key)] = bytes(body)
            return True

    def put_write_once(self, bucket: str, key: str, body: bytes) -> WriteOutcome:
        """Write-once PUT; identical bytes at the key are adopted, different ones are DRIFT."""
        if self.create(bucket, key, body):
            return WriteOutcome.CREATED
        if self.get(bucket, key, max_bytes=len(body) + 1) != bytes(body):
            raise DriftError(f"s3://{bucket}/{key} exists with different content")
        return WriteOutcome.EXISTING_IDENTICAL

    def get(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        """The whole object, capped."""
        self._request("GET")
        data = self._get_bytes(bucket, key)
        if len(data) > max_bytes:
            raise MessageTooLargeError(f"s3://{bucket}/{key}: object is {len(data)} bytes, cap is {max_bytes}")
        return data

    def get_range(
        self, bucket: str, key: str, *, start: int, end: int, object_size: int, etag: str | None = None
    ) -> list[bytes | memoryview]:
        """Bytes ``[start, end)``, pinned to the listed size and ETag."""
        self._request("GET")
        data = self._get_bytes(bucket, key)
        if len(data) != object_size or (etag is not None and self._etag(data) != etag):
            raise PreconditionFailedError(f"s3://{bucket}/{key} changed since it was listed")
        return [memoryview(data)[start:end]]

    def sha256(self, bucket: str, key: str, *, max_bytes: int) -> tuple[str, int]:
        """(sha256 hex, size) of the object, capped."""
        data = self.get(bucket, key, max_bytes=max_bytes)
        return hashlib.sha256(data).hexdigest(), len(data)

    def head(self, bucket: str, key: str) -> ObjectMeta | None:
        """Metadata or None."""
        self._request("HEAD")
        with self._lock:
            data = self._objects.get((bucket, key))
        return None if data is None else ObjectMeta(key, len(data), self._etag(data))

    def list(
        self, bucket: str, prefix: str, *, start_after: str | None = None, page_size: int = 1000
    ) -> Iterator[ObjectMeta]:
        """Every object under ``prefix`` in UTF-8 key order; one LIST counted per page."""
        keys = [k for k in self.keys(bucket, prefix) if start_after is None or k.encode() > start_after.encode()]
        self._request("LIST")
        for i, key in enumerate(keys):
            if i and i % page_size == 0:
                self._request("LIST")
            with self._lock:
                data = self._objects.get((bucket, key))
            if data is not None:
                yield ObjectMeta(key, len(data), self._etag(data))


