"""obstore transport of :class:`~worker.adapters.s3.ObjectStore`: the hot-path S3 requests.

Why a second client: on small machines the worker's CPU per READY run is mostly S3 client
overhead. boto3 spends ~2 ms of Python per small request; obstore (Rust ``object_store``
behind a thin binding, GIL released while the request runs) spends ~0.25 ms
(``bench/README.md``). The transport serves the requests a run makes many of — write-once
PUT, small GET, streamed GET, HEAD — while boto3 keeps the rest (LIST, bucket and
Object Lock calls, DELETE).

The contract is the same as boto3's path in :mod:`worker.adapters.s3`:

* obstore's own retries are off (``max_retries=0``); tenacity in ``ObjectStore`` owns them,
  so every attempt is counted and only faults classified transient are retried;
* every obstore/OS exception is translated here into :mod:`worker.errors` (``raise ... from
  exc``); nothing from obstore leaks past the adapter;
* write-once PUTs carry a body checksum (``x-amz-checksum-sha256``), so a PUT whose body never
  fully arrived is refused by the server instead of committing a short object
  (``tests/reliability``, torn PUT).

No I/O happens in ``__init__``; the store is built in :meth:`ObstoreTransport.open`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from worker.errors import (
    ObjectNotFoundError,
    PreconditionFailedError,
    S3AccessError,
    S3Error,
    S3UnavailableError,
)

if TYPE_CHECKING:
    from obstore import GetOptions

    from worker.adapters.s3 import S3Config

__all__ = ["ObstoreGet", "ObstoreTransport", "obstore_available", "translate_obstore_error"]

_STATUS_RE: Final = re.compile(r"status code: (\d{3})")
_CODE_RE: Final = re.compile(r"<Code>([A-Za-z0-9.]+)</Code>")


def obstore_available() -> bool:
    """True when the ``obstore`` package can be imported."""
    try:
        import obstore  # noqa: F401
    except ImportError:
        return False
    return True


def _status_and_code(text: str) -> tuple[int, str]:
    """The HTTP status and S3 error code object_store puts into its error text (0 / "" if absent).

    object_store reports a non-2xx answer as ``... Server returned non-2xx status code: 503
    Service Unavailable: <?xml ...><Code>SlowDown</Code>...``; a transport failure (refused,
    reset, timed out) has no status at all.
    """
    status_match = _STATUS_RE.search(text)
    code_match = _CODE_RE.search(text)
    return (int(status_match.group(1)) if status_match else 0, code_match.group(1) if code_match else "")


def translate_obstore_error(exc: BaseException, what: str, *, retryable_codes: frozenset[str]) -> S3Error:
    """Map an obstore (or OS) exception to the SR hierarchy; never returns a raw one.

    Args:
        exc: what obstore raised.
        what: the request, for the message (``"GET s3://bucket/key"``).
        retryable_codes: S3 error codes that mean "transient" although their status is 4xx.
    """
    if isinstance(exc, S3Error):
        return exc
    text = str(exc)
    status, code = _status_and_code(text)
    kind = _classify(exc, status, code, retryable_codes)
    if kind in {PreconditionFailedError, ObjectNotFoundError}:
        return kind(f"{what}: {code or type(exc).__name__} {status or ''}".rstrip())
    return kind(f"{what}: {code or type(exc).__name__} {status or ''}: {text[:300]}")


def _classify(
    exc: BaseException, status: int, code: str, retryable_codes: frozenset[str]
) -> type[S3Error]:
    import obstore.exceptions as oe

    if isinstance(exc, (oe.AlreadyExistsError, oe.PreconditionError)) or status == 412:
        return PreconditionFailedError
    # obstore raises the builtin FileNotFoundError for a 404. A missing *bucket* is a 404 too,
    # but it is a configuration fault, not an absent object: never "evidence missing".
    if isinstance(exc, (FileNotFoundError, oe.NotFoundError)) or status == 404:
        return S3AccessError if code == "NoSuchBucket" else ObjectNotFoundError
    if isinstance(exc, (oe.PermissionDeniedError, oe.UnauthenticatedError)):
        return S3AccessError
    if code in retryable_codes or status >= 500 or status == 429:
        return S3UnavailableError
    # No HTTP status: the request never got an answer (refused, reset, timeout, torn body).
    # Invalid path, unsupported operation, configuration, any other 4xx: fail closed.
    transport = isinstance(exc, (oe.GenericError, TimeoutError, ConnectionError, OSError))
    return S3UnavailableError if transport and not status else S3AccessError


@dataclass(frozen=True, slots=True)
class ObstoreGet:
    """An answered GET whose body is not read yet.

    Attributes:
        size: bytes this response will deliver (the range's length for a ranged GET).
        etag: the object's ETag without quotes ("" if the server sent none).
        result: obstore's ``GetResult`` (read with ``bytes()`` or ``stream()``).
        total: the whole object's size in bytes.
    """

    size: int
    etag: str
    result: Any
    total: int


class ObstoreTransport:
    """The obstore ``S3Store`` of one bucket-agnostic client configuration.

    obstore stores are bound to a bucket; SR addresses several (truth, evidence, runpacks),
    so one store per bucket is created on first use and reused (they are thread-safe).

    Raises (every method):
        S3Error subclasses, translated by :func:`translate_obstore_error`. No retries here.
    """

    def __init__(self, config: S3Config, *, retryable_codes: frozenset[str]) -> None:
        self._config = config
        self._retryable_codes = retryable_codes
        self._stores: dict[str, Any] = {}
        self._credential_provider: Any = None

    def open(self) -> None:
        """Resolve credentials (static keys, else boto3's default chain); no request is sent.

        Raises:
            S3AccessError: obstore is not installed.
        """
        if not obstore_available():
            raise S3AccessError("S3 client 'obstore' selected but the obstore package is not installed")
        cfg = self._config
        if cfg.access_key_id is None or cfg.secret_access_key is None:
            # Same chain as boto3 (env, profiles, SSO, instance roles), refreshed by obstore.
            import boto3
            from obstore.auth.boto3 import Boto3CredentialProvider

            self._credential_provider = Boto3CredentialProvider(boto3.session.Session(region_name=cfg.region))

    def store_for(self, bucket: str) -> Any:
        """The obstore ``S3Store`` for ``bucket``, built on first use (benchmarks use it to
        measure raw rates with exactly SR's client configuration).

        Raises:
            S3AccessError: the store cannot be configured.
        """
        store = self._stores.get(bucket)
        if store is not None:
            return store
        from obstore.store import S3Store

        cfg = self._config
        path_style = cfg.path_style if cfg.path_style is not None else cfg.endpoint_url is not None
        client_options: dict[str, Any] = {
            "connect_timeout": timedelta(seconds=cfg.connect_timeout),
            "read_timeout": timedelta(seconds=cfg.read_timeout),
            "pool_max_idle_per_host": str(cfg.max_pool_connections),
        }
        if cfg.endpoint_url is not None and cfg.endpoint_url.startswith("http://"):
            client_options["allow_http"] = True
        kwargs: dict[str, Any] = {
            "region": cfg.region,
            "virtual_hosted_style_request": not path_style,
            # Only the checksum makes the server refuse a torn body (see module docstring).
            "checksum_algorithm": "sha256",
            "client_options": client_options,
            # tenacity in ObjectStore owns retries: counted, bounded, transient faults only.
            "retry_config": {"max_retries": 0, "retry_timeout": timedelta(seconds=cfg.read_timeout)},
        }
        if cfg.endpoint_url is not None:
            kwargs["endpoint"] = cfg.endpoint_url
        if self._credential_provider is not None:
            kwargs["credential_provider"] = self._credential_provider
        else:
            kwargs["access_key_id"] = cfg.access_key_id.get_secret_value() if cfg.access_key_id else None
            kwargs["secret_access_key"] = cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None
        try:
            store = S3Store(bucket, **kwargs)
        except Exception as exc:
            raise S3AccessError(f"cannot configure obstore for bucket {bucket!r}: {exc}") from exc
        # Racing threads may both build one; either is fine, the dict keeps the last.
        self._stores[bucket] = store
        return store

    def _translate(self, exc: BaseException, what: str) -> S3Error:
        return translate_obstore_error(exc, what, retryable_codes=self._retryable_codes)

    # ----------------------------------------------------------------- requests (one attempt each)
    def put(self, bucket: str, key: str, data: bytes, *, create: bool) -> None:
        """One PUT; with ``create`` only if the key is absent (``If-None-Match: *``).

        Raises:
            PreconditionFailedError: ``create`` and the key already exists (412).
        """
        import obstore

        try:
            obstore.put(self.store_for(bucket), key, data, mode="create" if create else "overwrite",
                        use_multipart=False)
        except Exception as exc:
            raise self._translate(exc, f"PUT s3://{bucket}/{key}") from exc

    def open_get(self, bucket: str, key: str, *, start: int = 0, end: int | None = None,
                 etag: str | None = None) -> ObstoreGet:
        """Send one GET of bytes ``[start, end)`` (``end=None``: to the end; pinned to ``etag``
        with ``If-Match``), body unread."""
        import obstore

        what = f"GET s3://{bucket}/{key}"
        options: GetOptions = {}
        if end is not None:
            options["range"] = (start, end)
        elif start > 0:
            options["range"] = {"offset": start}
        if etag is not None:
            options["if_match"] = f'"{etag}"'
        try:
            result = obstore.get(self.store_for(bucket), key, options=options or None)
            meta = result.meta
            first, last = result.range
        except Exception as exc:
            raise self._translate(exc, what) from exc
        return ObstoreGet(size=int(last) - int(first), etag=str(meta.get("e_tag") or "").strip('"'), result=result,
                          total=int(meta["size"]))

    def read_all(self, response: ObstoreGet, what: str) -> bytes:
        """The whole body of an answered GET."""
        try:
            return bytes(response.result.bytes())
        except Exception as exc:
            raise self._translate(exc, what) from exc

    def stream(self, response: ObstoreGet, what: str, chunk_size: int) -> Iterator[memoryview]:
        """The body of an answered GET as zero-copy views of at most ``chunk_size`` bytes."""
        chunks = iter(response.result.stream(min_chunk_size=chunk_size))
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            except Exception as exc:
                raise self._translate(exc, what) from exc
            view = memoryview(chunk)
            for offset in range(0, len(view), chunk_size):
                yield view[offset:offset + chunk_size]

    def head(self, bucket: str, key: str) -> tuple[int, str]:
        """One HEAD: ``(size in bytes, ETag without quotes)``."""
        import obstore

        try:
            meta = obstore.head(self.store_for(bucket), key)
        except Exception as exc:
            raise self._translate(exc, f"HEAD s3://{bucket}/{key}") from exc
        return int(meta["size"]), str(meta.get("e_tag") or "").strip('"')
