"""The one narrow object-store adapter of SR (contract §1, §5): :class:`ObjectStore`.

Every S3 request SR makes goes through it, so that

* every fault arrives translated into :mod:`worker.errors` (the transports translate with
  :mod:`worker.adapters.s3.errors`) and nothing from botocore or obstore leaks;
* retries are bounded and explicit: the libraries' own retries are disabled and tenacity
  retries **only** :class:`~worker.errors.RetryableError` (connection errors, timeouts, 5xx,
  throttling) with exponential backoff and full jitter;
* every request *attempt* is counted by verb in :class:`RequestCounter` — Object Lock calls
  included — because S3 requests are the main cost of a run on small machines;
* bodies are read streamed with a byte cap, never buffered unbounded;
* write-once PUTs are idempotent for identical bytes and fail closed on different ones
  (:class:`~worker.errors.DriftError`), and carry a body checksum so a torn PUT commits nothing;
* each operation is served by the transport :func:`~worker.adapters.s3.transport.routes_for`
  picks from ``S3Config.client_library``: by default obstore for PUT/GET/HEAD, boto3 for the rest.

The adapter is thread-safe once entered: the transports may be shared by threads.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from types import TracebackType
from typing import Self, TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from worker.adapters.s3.boto3_transport import Boto3Transport
from worker.adapters.s3.config import ClientLibrary, S3Config
from worker.adapters.s3.counter import RequestCounter, Verb
from worker.adapters.s3.credentials import CredentialChain
from worker.adapters.s3.obstore_transport import ObstoreTransport
from worker.adapters.s3.transport import (
    DEFAULT_CHUNK_SIZE,
    ListPage,
    ObjectTransport,
    OpenedGet,
    Operation,
    Routes,
    Transport,
    routes_for,
    single_route,
)
from worker.app.ports import ObjectMeta, WriteOutcome
from worker.errors import (
    DriftError,
    MessageTooLargeError,
    ObjectNotFoundError,
    PreconditionFailedError,
    RetryableError,
    S3AccessError,
    S3UnavailableError,
    SRError,
)

__all__ = ["ObjectStore"]

_T = TypeVar("_T")


class ObjectStore:
    """The narrow S3 adapter. Use as a context manager; no I/O happens in ``__init__``.

    Args:
        config: connection/retry settings; ``config.client_library`` picks the transports.
        on_request: optional observer called after every attempt with
            ``(verb, seconds, ok)`` — the hook for latency histograms.
        transport: serve every operation with this transport instead of the configured
            ones (a client with hooks attached, a test double); it is opened and closed with
            the store.
    """

    def __init__(
        self, config: S3Config, *, on_request: Callable[[str, float, bool], None] | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.counter = RequestCounter()
        self._on_request = on_request
        self._custom_transport = transport
        self._routes: Routes | None = None
        self._chain: CredentialChain | None = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Self:
        """Create the clients (no request is sent yet)."""
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        """Create the clients if not yet created (idempotent, thread-safe; no S3 request is sent).

        Both transports share one :class:`~worker.adapters.s3.credentials.CredentialChain`:
        the same credentials and region, resolved once (static keys with their session token,
        else the SDK's default chain; fetching them may ask a container, STS or SSO endpoint).

        Raises:
            S3AccessError: ``client_library="obstore"`` but obstore is not installed.
            S3CredentialsError: no usable credentials (none found, a missing profile, an
                expired SSO session); not retryable.
            S3UnavailableError: a credential endpoint could not answer.
        """
        with self._lock:
            if self._routes is not None:
                return
            if self._custom_transport is not None:
                routes = single_route(self._custom_transport)
            else:
                chain = self._chain = CredentialChain(self.config)
                obstore = (ObstoreTransport(self.config, chain=chain)
                           if self.config.client_library == "obstore" else None)
                routes = routes_for(self.config.client_library, boto3=Boto3Transport(self.config, chain=chain),
                                    obstore=obstore)
            opened: list[ObjectTransport] = []
            try:
                # In operation order: obstore (PUT) before boto3, so a missing obstore package
                # fails before any connection pool exists.
                for transport in routes.transports():
                    transport.open()
                    opened.append(transport)
            except BaseException:
                for transport in opened:
                    transport.close()
                raise
            self._routes = routes

    def close(self) -> None:
        """Release the clients' connection pools (idempotent)."""
        with self._lock:
            routes, self._routes = self._routes, None
        if routes is not None:
            for transport in routes.transports():
                transport.close()

    def credential_source(self) -> str | None:
        """Where the credentials of an opened store came from: ``"static keys"`` or the SDK
        provider's name (``"env"``, ``"shared-credentials-file"``, ``"sso"``,
        ``"assume-role-with-web-identity"``, ``"container-role"``, ``"iam-role"``, ...); ``None``
        before :meth:`open` or with a custom transport. Never a secret."""
        chain = self._chain
        return chain.source if chain is not None and self._routes is not None else None

    def route_names(self) -> dict[Operation, ClientLibrary]:
        """Which client library serves each operation, e.g. ``{"PUT": "obstore", ...}``.

        Raises:
            S3AccessError: the store was not entered/opened (a caller bug).
        """
        return self._served().names()

    def _served(self) -> Routes:
        """The transport of each operation. Called inside a counted attempt, so a store used
        before ``open()`` fails like a request (counted, S3AccessError)."""
        routes = self._routes
        if routes is None:
            raise S3AccessError("ObjectStore used before open()/__enter__")
        return routes

    # ----------------------------------------------------------------- request plumbing
    def _retrying(self) -> Retrying:
        cfg = self.config
        return Retrying(
            stop=stop_after_attempt(cfg.max_attempts),
            wait=wait_random_exponential(multiplier=cfg.backoff_initial, max=cfg.backoff_max),
            retry=retry_if_exception_type(RetryableError),
            reraise=True,
        )

    def _attempt(self, verb: Verb, what: str, fn: Callable[[], _T]) -> _T:
        """Run one counted attempt of ``fn`` (which sends one request)."""
        self.counter.add(verb)
        started = time.perf_counter()
        ok = False
        try:
            result = fn()
            ok = True
            return result
        except SRError:
            raise
        except Exception as exc:
            # Transports translate every fault of their library; anything else is a bug: fail closed.
            raise S3AccessError(f"{what}: {type(exc).__name__}: {exc}") from exc
        finally:
            if self._on_request is not None:
                self._on_request(verb, time.perf_counter() - started, ok)

    def _call(self, verb: Verb, what: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` with bounded retries of transient faults; every attempt is counted.

        Raises:
            S3UnavailableError: still failing after ``max_attempts``.
            S3Error: any non-retryable fault (first occurrence).
        """
        result: _T = self._retrying()(self._attempt, verb, what, fn)
        return result

    def _read_capped(
        self, response: OpenedGet, *, max_bytes: int, what: str, chunk_size: int
    ) -> Iterator[bytes | memoryview]:
        """Yield a response body's chunks, raising once more than ``max_bytes`` arrive."""
        total = 0
        try:
            for chunk in response.chunks(chunk_size):
                total += len(chunk)
                self.counter.add_bytes(bytes_in=len(chunk))
                if total > max_bytes:
                    raise MessageTooLargeError(f"{what}: object exceeds the {max_bytes}-byte cap")
                yield chunk
        finally:
            # Close early on error/abandonment so an oversized body is never drained.
            response.close()

    def _open_get(
        self, bucket: str, key: str, *, max_bytes: int, start: int = 0, end: int | None = None,
        etag: str | None = None,
    ) -> OpenedGet:
        """Send one counted GET of bytes ``[start, end)`` (``end=None``: to the end), pinned to
        ``etag`` when given; check its size.

        Raises:
            MessageTooLargeError: the announced length exceeds ``max_bytes`` (body unread).
        """
        what = f"GET s3://{bucket}/{key}"
        response = self._attempt(
            "GET", what, lambda: self._served().get.open_get(bucket, key, start=start, end=end, etag=etag))
        if start + response.size > max_bytes:
            response.close()
            raise MessageTooLargeError(f"{what}: object is {start + response.size} bytes, cap is {max_bytes}")
        return response

    # ----------------------------------------------------------------- writes
    def create(self, bucket: str, key: str, body: bytes) -> bool:
        """PUT ``body`` only if ``key`` does not exist (``If-None-Match: *``).

        The PUT carries a body checksum (Content-MD5 with boto3, x-amz-checksum-sha256 with
        obstore): without it, SeaweedFS commits a 0-byte object when the client dies after
        the headers, and write-once then makes that empty object permanent
        (tests/reliability, torn PUT).

        Returns:
            True if this call created the object, False if the key already existed (412).

        Raises:
            S3UnavailableError: transient faults persisted through all attempts.
            S3AccessError: access denied, missing bucket, other permanent faults.
        """
        data = bytes(body)

        def put() -> None:
            self.counter.add_bytes(bytes_out=len(data))
            self._served().put.put(bucket, key, data, create=True)

        try:
            self._call("PUT", f"PUT s3://{bucket}/{key}", put)
        except PreconditionFailedError:
            return False
        return True

    def put(self, bucket: str, key: str, body: bytes) -> None:
        """Unconditional PUT (overwrites). SR never uses it for truth; evidence producers,
        the demo and tools do.

        Raises:
            S3UnavailableError / S3AccessError: see :meth:`create`.
        """
        data = bytes(body)

        def put() -> None:
            self.counter.add_bytes(bytes_out=len(data))
            self._served().put.put(bucket, key, data, create=False)

        self._call("PUT", f"PUT s3://{bucket}/{key}", put)

    def put_write_once(self, bucket: str, key: str, body: bytes) -> WriteOutcome:
        """Write-once PUT that is idempotent for identical content.

        On 412 the existing object is read (capped at ``len(body)`` bytes, since anything
        longer differs anyway) and compared byte for byte. This is how racing writers of
        deterministic content (plans, facts views) both succeed.

        Returns:
            ``CREATED`` or ``EXISTING_IDENTICAL``.

        Raises:
            DriftError: the key holds different bytes (fail closed; the message names the key).
            S3UnavailableError / S3AccessError: see :meth:`create`.
        """
        data = bytes(body)
        # Two rounds: if the existing object vanished between the 412 and our GET (only a
        # test or an operator deletes), one re-create is the right answer; more is a fight.
        for _ in range(2):
            if self.create(bucket, key, data):
                return WriteOutcome.CREATED
            try:
                existing = self.get(bucket, key, max_bytes=len(data))
            except MessageTooLargeError as exc:
                raise DriftError(f"s3://{bucket}/{key} already holds different (longer) bytes") from exc
            except ObjectNotFoundError:
                continue
            if existing == data:
                return WriteOutcome.EXISTING_IDENTICAL
            raise DriftError(f"s3://{bucket}/{key} already holds different bytes")
        raise DriftError(f"s3://{bucket}/{key} keeps appearing and disappearing under a write-once PUT")

    def delete(self, bucket: str, key: str) -> None:
        """DELETE an object (tests and tools only; SR's truth is never deleted).

        Raises:
            S3UnavailableError / S3AccessError.
        """
        self._call("DELETE", f"DELETE s3://{bucket}/{key}", lambda: self._served().delete.delete(bucket, key))

    # ----------------------------------------------------------------- reads
    def get(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        """GET a whole object into memory, at most ``max_bytes`` bytes.

        The announced Content-Length is checked before reading and the body is capped
        while reading, so an oversized object is never buffered. The whole GET+read is one
        retried unit (a truncated body is retried from scratch).

        Raises:
            ObjectNotFoundError: no such key.
            MessageTooLargeError: the object has more than ``max_bytes`` bytes.
            S3UnavailableError / S3AccessError.
        """
        what = f"GET s3://{bucket}/{key}"

        def attempt() -> bytes:
            data = self._open_get(bucket, key, max_bytes=max_bytes).read_all(max_bytes)
            self.counter.add_bytes(bytes_in=len(data))
            if len(data) > max_bytes:
                raise MessageTooLargeError(f"{what}: object exceeds the {max_bytes}-byte cap")
            return data

        return self._retrying()(attempt)

    def get_range(
        self, bucket: str, key: str, *, start: int, end: int, object_size: int, etag: str | None = None
    ) -> list[bytes | memoryview]:
        """GET bytes ``[start, end)`` of an object known (from a listing) to be ``object_size``
        bytes with ``etag``; one retried unit like :meth:`get`.

        Returns:
            The range's bytes as the buffers they arrived in, in order (no copy into one
            ``bytes``: a hasher takes them one by one; ``b"".join`` makes one if needed).

        Several ranges of one large object can then be fetched concurrently and hashed in
        order. The ETag pin (``If-Match``) and the size check make sure every range comes from
        the same version of the object that was listed.

        Raises:
            ObjectNotFoundError: no such key.
            PreconditionFailedError: the object is no longer that version (ETag or size differ).
            S3UnavailableError / S3AccessError.
        """
        what = f"GET s3://{bucket}/{key} bytes {start}-{end - 1}"
        length = end - start

        def attempt() -> list[bytes | memoryview]:
            response = self._open_get(bucket, key, max_bytes=end, start=start, end=end, etag=etag)
            if response.total != object_size or response.size != length:
                response.close()
                raise PreconditionFailedError(f"{what}: object is {response.total} bytes now, "
                                              f"{object_size} when listed")
            chunks = list(self._read_capped(response, max_bytes=length, what=what, chunk_size=DEFAULT_CHUNK_SIZE))
            received = sum(len(chunk) for chunk in chunks)
            if received != length:
                raise S3UnavailableError(f"{what}: {received} of {length} bytes arrived")
            return chunks

        return self._retrying()(attempt)

    def iter_chunks(
        self, bucket: str, key: str, *, max_bytes: int, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> Iterator[bytes | memoryview]:
        """Stream an object in chunks of at most ``chunk_size`` bytes, capped at ``max_bytes``.

        Chunks are ``bytes`` or zero-copy ``memoryview`` s (obstore); both are buffers that
        ``hashlib`` and ``bytes()`` accept.

        A transient fault mid-stream resumes with a ranged GET pinned to the first
        response's ETag (``If-Match``), so the caller sees one consistent byte sequence;
        resumptions share the ``max_attempts`` budget.

        Raises:
            ObjectNotFoundError: no such key (on the first request).
            MessageTooLargeError: more than ``max_bytes`` bytes.
            PreconditionFailedError: the object changed while being streamed.
            S3UnavailableError / S3AccessError.
        """
        what = f"GET s3://{bucket}/{key}"
        response = self._retrying()(lambda: self._open_get(bucket, key, max_bytes=max_bytes))
        etag = response.etag or None
        offset = 0
        failures = 0
        while True:
            try:
                for chunk in self._read_capped(response, max_bytes=max_bytes - offset, what=what,
                                               chunk_size=chunk_size):
                    offset += len(chunk)
                    yield chunk
                return
            except RetryableError:
                failures += 1
                if failures >= self.config.max_attempts:
                    raise
            response = self._retrying()(
                lambda start=offset: self._open_get(bucket, key, max_bytes=max_bytes, start=start, etag=etag)
            )

    def sha256(self, bucket: str, key: str, *, max_bytes: int) -> tuple[str, int]:
        """Streamed sha256 of an object.

        Returns:
            ``(hex digest, size in bytes)``.

        Raises:
            ObjectNotFoundError, MessageTooLargeError, PreconditionFailedError,
            S3UnavailableError, S3AccessError: as :meth:`iter_chunks`.
        """
        digest = hashlib.sha256()
        size = 0
        for chunk in self.iter_chunks(bucket, key, max_bytes=max_bytes):
            digest.update(chunk)
            size += len(chunk)
        return digest.hexdigest(), size

    def head(self, bucket: str, key: str) -> ObjectMeta | None:
        """HEAD an object.

        Returns:
            Its metadata, or ``None`` if it does not exist.

        Raises:
            S3UnavailableError / S3AccessError.
        """
        try:
            return self._call("HEAD", f"HEAD s3://{bucket}/{key}", lambda: self._served().head.head(bucket, key))
        except ObjectNotFoundError:
            return None

    def bucket_exists(self, bucket: str) -> bool:
        """HEAD a bucket (one counted, retried ``HEAD`` request): does it exist and answer?

        Returns:
            True if the bucket exists and is accessible, False if the server says it does
            not exist (404).

        Raises:
            S3UnavailableError: the server could not be reached (after the retry budget).
            S3AccessError: access denied or another permanent fault.
        """
        return self._call("HEAD", f"HEAD s3://{bucket}", lambda: self._served().bucket.bucket_exists(bucket))

    def list(
        self, bucket: str, prefix: str, *, start_after: str | None = None, page_size: int = 1000
    ) -> Iterator[ObjectMeta]:
        """List every object whose key starts with ``prefix``, in key (UTF-8 byte) order.

        Paginated ListObjectsV2 (``page_size`` keys per page, 1000 is the S3 maximum); each
        page is one counted, retried LIST request, fetched lazily as the iterator advances.
        ``start_after`` lists only keys after that key.

        Raises:
            S3UnavailableError / S3AccessError (NoSuchBucket is an access error).
        """
        what = f"LIST s3://{bucket}/{prefix}"
        token: str | None = None
        while True:

            def one_page(token: str | None = token) -> ListPage:
                return self._served().list.list_page(bucket, prefix, page_size=page_size, token=token,
                                                     start_after=start_after)

            page = self._call("LIST", what, one_page)
            yield from page.objects
            if page.next_token is None:
                return
            token = page.next_token

    # ----------------------------------------------------------------- Object Lock
    def object_lock_enabled(self, bucket: str) -> bool:
        """Read ``bucket``'s S3 Object Lock configuration (one counted, retried ``GET``).

        Returns:
            True if Object Lock is enabled on the bucket, False if it is configured but not
            enabled.

        Raises:
            ObjectLockUnsupportedError: the bucket has no Object Lock configuration, or the
                server does not implement Object Lock.
            S3UnavailableError / S3AccessError.
        """
        return self._call("GET", f"GET object-lock configuration of s3://{bucket}",
                          lambda: self._served().lock.object_lock_enabled(bucket))

    def put_object_retention(self, bucket: str, key: str, *, mode: str, retain_until: datetime) -> None:
        """Put S3 Object Lock retention on the current version of ``bucket/key`` (one counted,
        retried ``PUT``; setting the same retention again is harmless).

        Args:
            mode: ``"GOVERNANCE"`` or ``"COMPLIANCE"``.
            retain_until: an aware timestamp.

        Raises:
            ObjectLockUnsupportedError: the server refuses Object Lock for this bucket.
            S3AccessError: e.g. shortening a COMPLIANCE retention, or missing permissions.
            S3UnavailableError: a transient fault persisted through all attempts.
        """
        self._call("PUT", f"PUT retention of s3://{bucket}/{key}", lambda: self._served().lock.put_object_retention(
            bucket, key, mode=mode, retain_until=retain_until))
