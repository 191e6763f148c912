"""The one narrow object-store adapter of SR (contract §1, §5).

Every S3 request SR makes goes through :class:`ObjectStore`, so that

* every third-party exception is translated here into :mod:`worker.errors`
  (``raise ... from exc``) and nothing from botocore leaks past this module;
* retries are bounded and explicit: botocore's own retries are disabled and tenacity
  retries **only** :class:`~worker.errors.S3UnavailableError` (connection errors, timeouts,
  5xx, throttling) with exponential backoff and full jitter;
* every request *attempt* is counted by verb in :class:`RequestCounter`, because S3 requests
  are the main cost of a run on small machines;
* bodies are read streamed with a byte cap, never buffered unbounded;
* the requests a run makes many of (write-once PUT, GET, HEAD) go through obstore by default
  (:mod:`worker.adapters.s3.obstore`, ~8x less client CPU per request than boto3, measured in
  ``bench/``); LIST, bucket, Object Lock and DELETE calls stay on boto3.
  ``S3Config.client_library="boto3"`` sends everything through boto3.

The adapter is thread-safe once entered: both clients may be shared by threads.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from worker.adapters.s3.obstore import ObstoreGet, ObstoreTransport
from worker.app.ports import ObjectMeta, WriteOutcome
from worker.errors import (
    DriftError,
    MessageTooLargeError,
    ObjectNotFoundError,
    PreconditionFailedError,
    S3AccessError,
    S3Error,
    S3UnavailableError,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ObjectMeta",
    "ObjectStore",
    "RequestCounter",
    "S3Config",
    "WriteOutcome",
]

DEFAULT_CHUNK_SIZE: Final = 1024 * 1024
Verb = Literal["PUT", "GET", "HEAD", "LIST", "DELETE"]
_VERBS: Final[tuple[Verb, ...]] = ("PUT", "GET", "HEAD", "LIST", "DELETE")
_T = TypeVar("_T")

# Error codes that mean "transient, try again" even though the HTTP status is 4xx.
# RequestTimeout is a 400 on AWS; ConditionalRequestConflict (409) is what AWS answers when
# two conditional writes race — a retry then resolves to 412 or success.
_RETRYABLE_CODES: Final = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "ConditionalRequestConflict",
        "OperationAborted",
        # The body that arrived does not match its checksum / length: corrupted or torn in
        # transit, so sending it again is the fix (bounded by max_attempts like any retry).
        "BadDigest",
        "IncompleteBody",
    }
)
_NOT_FOUND_CODES: Final = frozenset({"NoSuchKey", "NotFound", "404"})
_PRECONDITION_CODES: Final = frozenset({"PreconditionFailed", "412"})


# --------------------------------------------------------------------------- config
class S3Config(BaseModel):
    """Connection and retry settings of an :class:`ObjectStore`.

    Attributes:
        endpoint_url: S3 endpoint (``None`` = AWS default for ``region``).
        region: signing region.
        access_key_id / secret_access_key: static credentials; ``None`` uses boto3's
            default credential chain (``AWS_*`` env, profiles, instance roles).
        max_pool_connections: HTTP connection pool size (should be ≥ verifier concurrency).
        connect_timeout / read_timeout: seconds, per attempt.
        max_attempts: total attempts per request (1 = no retry), tenacity-driven.
        backoff_initial / backoff_max: seconds; exponential backoff with full jitter
            between attempts, each wait at most ``backoff_max``.
        path_style: force path-style addressing; ``None`` = path style when a custom
            ``endpoint_url`` is set (MinIO, SeaweedFS), virtual-host style on AWS.
        client_library: ``"obstore"`` (default) serves PUT, GET and HEAD with obstore and the
            rest with boto3; ``"boto3"`` serves everything with boto3.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    max_pool_connections: int = Field(default=32, ge=1, le=1024)
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff_initial: float = Field(default=0.1, ge=0)
    backoff_max: float = Field(default=5.0, ge=0)
    path_style: bool | None = None
    client_library: Literal["obstore", "boto3"] = "obstore"


# --------------------------------------------------------------------------- values
class RequestCounter:
    """Thread-safe count of S3 request attempts by verb, plus payload bytes.

    Every *attempt* counts (a retried GET counts twice): attempts are what the server pays
    for. ``bytes_in`` counts body bytes actually read from responses; ``bytes_out`` counts
    body bytes sent in PUTs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.reset()

    def add(self, verb: Verb) -> None:
        """Count one request attempt of ``verb``."""
        with self._lock:
            self._counts[verb] += 1

    def add_bytes(self, *, bytes_in: int = 0, bytes_out: int = 0) -> None:
        """Count payload bytes received / sent."""
        with self._lock:
            self._counts["bytes_in"] += bytes_in
            self._counts["bytes_out"] += bytes_out

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts: keys ``PUT GET HEAD LIST DELETE bytes_in bytes_out``."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        """Zero every count."""
        with self._lock:
            self._counts = {verb: 0 for verb in _VERBS}
            self._counts["bytes_in"] = 0
            self._counts["bytes_out"] = 0

    @property
    def requests(self) -> int:
        """Total request attempts over all verbs."""
        with self._lock:
            return sum(self._counts[verb] for verb in _VERBS)


# --------------------------------------------------------------------------- error translation
def _client_error_code(exc: Any) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", "") or "")
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _translate_client_error(exc: Any, what: str) -> S3Error:
    """Map an S3 error response (status + code) to the SR hierarchy."""
    code, status = _client_error_code(exc)
    detail = f"{what}: {code or 'HTTP'} {status}"
    # NoSuchBucket is a 404 too, but it is a configuration fault, not an absent object.
    if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
        return ObjectNotFoundError(detail)
    if code in _PRECONDITION_CODES or status == 412:
        return PreconditionFailedError(detail)
    if code in _RETRYABLE_CODES or status >= 500 or status == 429:
        return S3UnavailableError(detail)
    return S3AccessError(detail)


def _translate(exc: Exception, what: str) -> S3Error:
    """Map a botocore/urllib3/OS exception to the SR hierarchy (never returns a raw one)."""
    from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError, ResponseStreamingError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, S3Error):
        return exc
    if isinstance(exc, ClientError):
        return _translate_client_error(exc, what)
    # Connection refused/reset, DNS, connect/read timeouts, truncated bodies are transient;
    # urllib3 errors can escape StreamingBody.read in some botocore versions.
    transient = (BotoConnectionError, HTTPClientError, ResponseStreamingError, IncompleteReadError, OSError)
    if isinstance(exc, transient) or type(exc).__module__.startswith("urllib3"):
        return S3UnavailableError(f"{what}: {type(exc).__name__}: {exc}")
    # Missing credentials, parameter validation and anything unknown: permanent, fail closed.
    return S3AccessError(f"{what}: {type(exc).__name__}: {exc}")


def _strip_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


@dataclass(frozen=True, slots=True)
class _Response:
    """An answered GET of either client, body not read yet.

    ``size`` is what this response delivers (the range's length for a ranged GET); ``total``
    the whole object's size.
    """

    size: int
    etag: str
    total: int
    boto_body: Any = None
    obstore_get: ObstoreGet | None = None

    def close(self) -> None:
        if self.boto_body is not None:
            self.boto_body.close()


# --------------------------------------------------------------------------- the store
class ObjectStore:
    """The narrow S3 adapter. Use as a context manager; no I/O happens in ``__init__``.

    Args:
        config: connection/retry settings.
        on_request: optional observer called after every attempt with
            ``(verb, seconds, ok)`` — the hook for latency histograms.
    """

    def __init__(
        self, config: S3Config, *, on_request: Callable[[str, float, bool], None] | None = None
    ) -> None:
        self.config = config
        self.counter = RequestCounter()
        self._on_request = on_request
        self._client: S3Client | None = None
        self._fast: ObstoreTransport | None = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Self:
        """Create the boto3 client (no request is sent yet)."""
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        """Create the clients if not yet created (idempotent, thread-safe; no request is sent).

        Raises:
            S3AccessError: ``client_library="obstore"`` but obstore is not installed.
        """
        with self._lock:
            if self._client is not None:
                return
            if self.config.client_library == "obstore":
                fast = ObstoreTransport(self.config, retryable_codes=_RETRYABLE_CODES)
                fast.open()
                self._fast = fast
            import boto3
            from botocore.config import Config

            cfg = self.config
            path_style = cfg.path_style if cfg.path_style is not None else cfg.endpoint_url is not None
            botocore_config = Config(
                region_name=cfg.region,
                max_pool_connections=cfg.max_pool_connections,
                connect_timeout=cfg.connect_timeout,
                read_timeout=cfg.read_timeout,
                # One attempt per botocore call: tenacity owns retries so they are bounded,
                # counted and limited to the faults we classify as transient.
                retries={"max_attempts": 1, "mode": "standard"},
                s3={"addressing_style": "path" if path_style else "auto"},
                # SR verifies sha256 itself; CRC trailers only cost client CPU (the measured
                # bottleneck) and trip some S3-compatible servers.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            session = boto3.session.Session()
            self._client = session.client(
                "s3",
                endpoint_url=cfg.endpoint_url,
                region_name=cfg.region,
                aws_access_key_id=cfg.access_key_id.get_secret_value() if cfg.access_key_id else None,
                aws_secret_access_key=(
                    cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None
                ),
                config=botocore_config,
            )

    def close(self) -> None:
        """Release the client's connection pool (idempotent)."""
        with self._lock:
            client, self._client = self._client, None
            self._fast = None
        if client is not None:
            client.close()

    @property
    def client(self) -> S3Client:
        """The underlying boto3 client.

        Raises:
            S3AccessError: the store was not entered/opened (a caller bug).
        """
        client = self._client
        if client is None:
            raise S3AccessError("ObjectStore used before open()/__enter__")
        return client

    def obstore_store(self, bucket: str) -> Any | None:
        """obstore's raw ``S3Store`` for ``bucket`` as this store configured it, or ``None`` when
        ``client_library="boto3"`` (benchmarks measure raw rates with it).

        Raises:
            S3AccessError: the store was not opened, or obstore cannot be configured.
        """
        if self._client is None:
            raise S3AccessError("ObjectStore used before open()/__enter__")
        return self._fast.store_for(bucket) if self._fast is not None else None

    # ----------------------------------------------------------------- request plumbing
    def _retrying(self) -> Retrying:
        cfg = self.config
        return Retrying(
            stop=stop_after_attempt(cfg.max_attempts),
            wait=wait_random_exponential(multiplier=cfg.backoff_initial, max=cfg.backoff_max),
            retry=retry_if_exception_type(S3UnavailableError),
            reraise=True,
        )

    def _attempt(self, verb: Verb, what: str, fn: Callable[[], _T]) -> _T:
        """Run one counted attempt of ``fn`` and translate its exception."""
        self.counter.add(verb)
        started = time.perf_counter()
        ok = False
        try:
            result = fn()
            ok = True
            return result
        except Exception as exc:
            raise _translate(exc, what) from exc
        finally:
            if self._on_request is not None:
                self._on_request(verb, time.perf_counter() - started, ok)

    def _call(self, verb: Verb, what: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` with bounded retries of transient faults; every attempt is counted.

        Raises:
            S3UnavailableError: still failing after ``max_attempts``.
            S3Error: any non-retryable translated fault (first occurrence).
        """
        result: _T = self._retrying()(self._attempt, verb, what, fn)
        return result

    def _boto_chunks(self, body: Any, what: str, chunk_size: int) -> Iterator[bytes]:
        while True:
            try:
                chunk = body.read(chunk_size)
            except Exception as exc:
                raise _translate(exc, what) from exc
            if not chunk:
                return
            yield chunk

    def _read_capped(
        self, response: _Response, *, max_bytes: int, what: str, chunk_size: int
    ) -> Iterator[bytes | memoryview]:
        """Yield a response body's chunks, raising once more than ``max_bytes`` arrive."""
        total = 0
        chunks: Iterator[bytes | memoryview]
        if response.obstore_get is not None and self._fast is not None:
            chunks = self._fast.stream(response.obstore_get, what, chunk_size)
        else:
            chunks = self._boto_chunks(response.boto_body, what, chunk_size)
        try:
            for chunk in chunks:
                total += len(chunk)
                self.counter.add_bytes(bytes_in=len(chunk))
                if total > max_bytes:
                    raise MessageTooLargeError(f"{what}: object exceeds the {max_bytes}-byte cap")
                yield chunk
        finally:
            # Close early on error/abandonment so an oversized body is never drained (an
            # unread obstore response is dropped with its connection).
            response.close()

    def _open_get(
        self, bucket: str, key: str, *, max_bytes: int, start: int = 0, end: int | None = None,
        etag: str | None = None,
    ) -> _Response:
        """Send one GET of bytes ``[start, end)`` (``end=None``: to the end), pinned to ``etag``
        when given; check its size.

        Raises:
            MessageTooLargeError: the announced length exceeds ``max_bytes`` (body unread).
        """
        what = f"GET s3://{bucket}/{key}"
        fast = self._fast

        def get() -> _Response:
            if fast is not None:
                answered = fast.open_get(bucket, key, start=start, end=end, etag=etag)
                return _Response(size=answered.size, etag=answered.etag, total=answered.total,
                                 obstore_get=answered)
            kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
            if end is not None:
                kwargs["Range"] = f"bytes={start}-{end - 1}"
            elif start > 0:
                kwargs["Range"] = f"bytes={start}-"
            if etag is not None:
                kwargs["IfMatch"] = f'"{etag}"'
            raw = self.client.get_object(**kwargs)
            size = int(raw.get("ContentLength", 0) or 0)
            # "bytes 0-99/1000": the object's size is after the slash.
            total = str(raw.get("ContentRange") or "").rpartition("/")[2]
            return _Response(size=size, etag=_strip_etag(raw.get("ETag")),
                             total=int(total) if total.isdigit() else start + size, boto_body=raw["Body"])

        response = self._attempt("GET", what, get)
        if start + response.size > max_bytes:
            response.close()
            raise MessageTooLargeError(f"{what}: object is {start + response.size} bytes, cap is {max_bytes}")
        return response

    # ----------------------------------------------------------------- writes
    def create(self, bucket: str, key: str, body: bytes) -> bool:
        """PUT ``body`` only if ``key`` does not exist (``If-None-Match: *``).

        Returns:
            True if this call created the object, False if the key already existed (412).

        Raises:
            S3UnavailableError: transient faults persisted through all attempts.
            S3AccessError: access denied, missing bucket, other permanent faults.
        """
        what = f"PUT s3://{bucket}/{key}"
        data = bytes(body)
        # A body checksum makes the server refuse a PUT whose body never fully arrived. Without
        # it, SeaweedFS commits a 0-byte object when the client dies after the headers, and
        # write-once then makes that empty object permanent (tests/reliability, torn PUT).
        fast = self._fast

        def put() -> None:
            self.counter.add_bytes(bytes_out=len(data))
            if fast is not None:  # sends x-amz-checksum-sha256, which guards the same way
                fast.put(bucket, key, data, create=True)
                return
            md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
            self.client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*", ContentMD5=md5)

        try:
            self._call("PUT", what, put)
        except PreconditionFailedError:
            return False
        return True

    def put(self, bucket: str, key: str, body: bytes) -> None:
        """Unconditional PUT (overwrites). SR never uses it for truth; evidence producers,
        the demo and tools do.

        Raises:
            S3UnavailableError / S3AccessError: see :meth:`create`.
        """
        what = f"PUT s3://{bucket}/{key}"
        data = bytes(body)

        fast = self._fast

        def put() -> None:
            self.counter.add_bytes(bytes_out=len(data))
            if fast is not None:
                fast.put(bucket, key, data, create=False)
            else:
                self.client.put_object(Bucket=bucket, Key=key, Body=data)

        self._call("PUT", what, put)

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

        def delete() -> None:
            self.client.delete_object(Bucket=bucket, Key=key)

        self._call("DELETE", f"DELETE s3://{bucket}/{key}", delete)

    # ----------------------------------------------------------------- reads
    def get(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        """GET a whole object into memory, at most ``max_bytes`` bytes.

        The announced Content-Length is checked before reading and the stream is capped
        while reading, so an oversized object is never buffered. The whole GET+read is one
        retried unit (a truncated body is retried from scratch).

        Raises:
            ObjectNotFoundError: no such key.
            MessageTooLargeError: the object has more than ``max_bytes`` bytes.
            S3UnavailableError / S3AccessError.
        """
        what = f"GET s3://{bucket}/{key}"

        def attempt() -> bytes:
            response = self._open_get(bucket, key, max_bytes=max_bytes)
            if response.obstore_get is not None and self._fast is not None:
                # The announced size is already within the cap; check what really arrived too.
                data = self._fast.read_all(response.obstore_get, what)
                self.counter.add_bytes(bytes_in=len(data))
                if len(data) > max_bytes:
                    raise MessageTooLargeError(f"{what}: object exceeds the {max_bytes}-byte cap")
                return data
            return b"".join(self._read_capped(response, max_bytes=max_bytes, what=what,
                                              chunk_size=DEFAULT_CHUNK_SIZE))

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
            except S3UnavailableError:
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

        fast = self._fast

        def head() -> tuple[int, str]:
            if fast is not None:
                return fast.head(bucket, key)
            response = self.client.head_object(Bucket=bucket, Key=key)
            return int(response.get("ContentLength", 0) or 0), _strip_etag(response.get("ETag"))

        try:
            size, etag = self._call("HEAD", f"HEAD s3://{bucket}/{key}", head)
        except ObjectNotFoundError:
            return None
        return ObjectMeta(key=key, size=size, etag=etag)

    def bucket_exists(self, bucket: str) -> bool:
        """HEAD a bucket (one counted, retried ``HEAD`` request): does it exist and answer?

        Returns:
            True if the bucket exists and is accessible, False if the server says it does
            not exist (404).

        Raises:
            S3UnavailableError: the server could not be reached (after the retry budget).
            S3AccessError: access denied or another permanent fault.
        """

        def head_bucket() -> Any:
            return self.client.head_bucket(Bucket=bucket)

        try:
            self._call("HEAD", f"HEAD s3://{bucket}", head_bucket)
        except ObjectNotFoundError:
            return False
        except S3AccessError as exc:
            # A HEAD has no body, but some servers still name the code: a missing bucket.
            if isinstance(exc.__cause__, Exception) and _client_error_code(exc.__cause__)[0] == "NoSuchBucket":
                return False
            raise
        return True

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
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
            if token is not None:
                kwargs["ContinuationToken"] = token
            elif start_after is not None:
                kwargs["StartAfter"] = start_after

            def page(kw: dict[str, Any] = kwargs) -> Any:
                return self.client.list_objects_v2(**kw)

            response = self._call("LIST", what, page)
            for item in response.get("Contents", []) or []:
                yield ObjectMeta(key=item["Key"], size=int(item.get("Size", 0) or 0),
                                 etag=_strip_etag(item.get("ETag")))
            token = response.get("NextContinuationToken")
            if not response.get("IsTruncated") or not token:
                return
