"""obstore transport of :class:`~worker.adapters.s3.ObjectStore`: the hot-path S3 requests.

Why a second client: on small machines the worker's CPU per READY run is mostly S3 client
overhead. boto3 spends ~2 ms of Python per small request; obstore (Rust ``object_store``
behind a thin binding, GIL released while the request runs) spends ~0.25 ms
(``bench/README.md``). This transport serves the requests a run makes many of — write-once
PUT, small GET, streamed GET, HEAD — while boto3 keeps the rest (LIST, bucket and
Object Lock calls, DELETE); :func:`~worker.adapters.s3.transport.routes_for` is the table.

The contract is the boto3 transport's:

* obstore's own retries are off (``max_retries=0``); tenacity in ``ObjectStore`` owns them,
  so every attempt is counted and only faults classified transient are retried;
* every obstore/OS exception is translated by
  :func:`~worker.adapters.s3.errors.translate_obstore_error`; nothing from obstore leaks;
* write-once PUTs carry a body checksum (``x-amz-checksum-sha256``), so a PUT whose body never
  fully arrived is refused by the server instead of committing a short object
  (``tests/reliability``, torn PUT).
* every PUT carries ``S3Config.sse`` (``x-amz-server-side-encryption``, and the KMS key id with
  ``aws:kms``): it is part of the store's configuration, so no PUT can go without it.

No I/O happens in ``__init__``; credentials are resolved in :meth:`ObstoreTransport.open` and
one store per bucket is built on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from worker.adapters.s3.config import S3Config
from worker.adapters.s3.errors import obstore_answer, translate_obstore_error, with_sse_hint
from worker.app.ports import ObjectMeta
from worker.errors import S3AccessError

if TYPE_CHECKING:
    from obstore import GetOptions

__all__ = ["ObstoreTransport", "obstore_available", "raw_obstore_store"]


def obstore_available() -> bool:
    """True when the ``obstore`` package can be imported."""
    try:
        import obstore  # noqa: F401
    except ImportError:
        return False
    return True


def _credential_provider(config: S3Config) -> Any:
    """boto3's default credential chain for obstore when ``config`` has no static keys, else None.

    Same chain as boto3 (env, profiles, SSO, instance roles), refreshed by obstore.

    Raises:
        S3AccessError: no static keys and the chain finds no credentials.
    """
    if config.access_key_id is not None and config.secret_access_key is not None:
        return None
    import boto3
    from obstore.auth.boto3 import Boto3CredentialProvider

    try:
        return Boto3CredentialProvider(boto3.session.Session(region_name=config.region))
    except Exception as exc:
        raise S3AccessError(f"no S3 credentials: no static keys and boto3's default chain found none ({exc})") from exc


def _build_store(config: S3Config, bucket: str, credential_provider: Any) -> Any:
    """obstore's ``S3Store`` for ``bucket`` with the adapter's settings.

    Raises:
        S3AccessError: obstore refuses the configuration.
    """
    from obstore.store import S3Store

    client_options: dict[str, Any] = {
        "connect_timeout": timedelta(seconds=config.connect_timeout),
        "read_timeout": timedelta(seconds=config.read_timeout),
        "pool_max_idle_per_host": str(config.max_pool_connections),
    }
    if config.endpoint_url is not None and config.endpoint_url.startswith("http://"):
        client_options["allow_http"] = True
    kwargs: dict[str, Any] = {
        "region": config.region,
        "virtual_hosted_style_request": not config.uses_path_style(),
        # Only the checksum makes the server refuse a torn body (see module docstring).
        "checksum_algorithm": "sha256",
        "client_options": client_options,
        # tenacity in ObjectStore owns retries: counted, bounded, transient faults only.
        "retry_config": {"max_retries": 0, "retry_timeout": timedelta(seconds=config.read_timeout)},
    }
    if config.endpoint_url is not None:
        kwargs["endpoint"] = config.endpoint_url
    # object_store adds the SSE headers to each object PUT (tests/unit/test_s3_sse.py captures
    # them on the wire); GET and HEAD need none for SSE-S3 / SSE-KMS.
    if config.sse is not None:
        kwargs["server_side_encryption"] = config.sse
    if config.sse_kms_key_id is not None:
        kwargs["sse_kms_key_id"] = config.sse_kms_key_id
    if credential_provider is not None:
        kwargs["credential_provider"] = credential_provider
    else:
        kwargs["access_key_id"] = config.access_key_id.get_secret_value() if config.access_key_id else None
        kwargs["secret_access_key"] = (
            config.secret_access_key.get_secret_value() if config.secret_access_key else None
        )
    try:
        return S3Store(bucket, **kwargs)
    except Exception as exc:
        raise S3AccessError(f"cannot configure obstore for bucket {bucket!r}: {exc}") from exc


def raw_obstore_store(config: S3Config, bucket: str) -> Any:
    """obstore's ``S3Store`` for ``bucket`` configured exactly like the adapter's (checksums,
    timeouts, no obstore retries, same credentials). No request is sent.

    For benchmarks that measure the library's own limits; SR code goes through ObjectStore.

    Raises:
        S3AccessError: obstore is not installed or refuses the configuration.
    """
    if not obstore_available():
        raise S3AccessError("obstore requested but the obstore package is not installed")
    return _build_store(config, bucket, _credential_provider(config))


@dataclass(frozen=True, slots=True)
class _ObstoreGet:
    """An answered obstore GET (:class:`~worker.adapters.s3.transport.OpenedGet`)."""

    size: int
    etag: str
    total: int
    result: Any  # obstore GetResult
    what: str

    def read_all(self, limit: int) -> bytes:
        # The announced size is within the cap already; the caller checks what arrived too.
        del limit
        try:
            return bytes(self.result.bytes())
        except Exception as exc:
            raise translate_obstore_error(exc, self.what) from exc

    def chunks(self, chunk_size: int) -> Iterator[memoryview]:
        # Zero-copy views of what arrived, re-cut to at most chunk_size bytes.
        stream = iter(self.result.stream(min_chunk_size=chunk_size))
        while True:
            try:
                chunk = next(stream)
            except StopIteration:
                return
            except Exception as exc:
                raise translate_obstore_error(exc, self.what) from exc
            view = memoryview(chunk)
            for offset in range(0, len(view), chunk_size):
                yield view[offset:offset + chunk_size]

    def close(self) -> None:
        # Nothing to release: an unread obstore response is dropped with its connection.
        return


class ObstoreTransport:
    """obstore behind the :class:`~worker.adapters.s3.transport.ObjectTransport` protocol.

    obstore stores are bound to a bucket; SR addresses several (truth, evidence, runpacks),
    so one store per bucket is created on first use and reused (they are thread-safe).

    Raises (every request method):
        S3Error subclasses, translated by
        :func:`~worker.adapters.s3.errors.translate_obstore_error`. No retries here.
        S3AccessError: the transport was not opened.
    """

    def __init__(self, config: S3Config) -> None:
        self._config = config
        self._stores: dict[str, Any] = {}
        self._credential_provider: Any = None
        self._opened = False
        self._lock = threading.Lock()

    @property
    def name(self) -> Literal["obstore"]:
        """``"obstore"``."""
        return "obstore"

    def open(self) -> None:
        """Resolve credentials (static keys, else boto3's default chain); no request is sent.

        Raises:
            S3AccessError: obstore is not installed.
        """
        with self._lock:
            if self._opened:
                return
            if not obstore_available():
                raise S3AccessError("S3 client 'obstore' selected but the obstore package is not installed")
            self._credential_provider = _credential_provider(self._config)
            self._opened = True

    def close(self) -> None:
        """Drop the per-bucket stores (idempotent)."""
        with self._lock:
            self._stores = {}
            self._credential_provider = None
            self._opened = False

    def _store_for(self, bucket: str) -> Any:
        store = self._stores.get(bucket)
        if store is not None:
            return store
        if not self._opened:
            raise S3AccessError("ObjectStore used before open()/__enter__")
        store = _build_store(self._config, bucket, self._credential_provider)
        # Racing threads may both build one; either is fine, the dict keeps the last.
        self._stores[bucket] = store
        return store

    def put(self, bucket: str, key: str, data: bytes, *, create: bool) -> None:
        """One PUT (``mode="create"``: ``If-None-Match: *``), with ``x-amz-checksum-sha256`` and
        the configured server-side encryption (set on the store, :func:`_build_store`)."""
        import obstore

        store = self._store_for(bucket)
        try:
            obstore.put(store, key, data, mode="create" if create else "overwrite", use_multipart=False)
        except Exception as exc:
            error = translate_obstore_error(exc, f"PUT s3://{bucket}/{key}")
            raise with_sse_hint(error, status=obstore_answer(str(exc))[0], sse=self._config.sse) from exc

    def open_get(self, bucket: str, key: str, *, start: int = 0, end: int | None = None,
                 etag: str | None = None) -> _ObstoreGet:
        """One GET of bytes ``[start, end)``, body unread."""
        import obstore

        what = f"GET s3://{bucket}/{key}"
        options: GetOptions = {}
        if end is not None:
            options["range"] = (start, end)
        elif start > 0:
            options["range"] = {"offset": start}
        if etag is not None:
            options["if_match"] = f'"{etag}"'
        store = self._store_for(bucket)
        try:
            result = obstore.get(store, key, options=options or None)
            meta = result.meta
            first, last = result.range
        except Exception as exc:
            raise translate_obstore_error(exc, what) from exc
        return _ObstoreGet(size=int(last) - int(first), etag=str(meta.get("e_tag") or "").strip('"'),
                           total=int(meta["size"]), result=result, what=what)

    def head(self, bucket: str, key: str) -> ObjectMeta:
        """One HEAD of an object."""
        import obstore

        store = self._store_for(bucket)
        try:
            meta = obstore.head(store, key)
        except Exception as exc:
            raise translate_obstore_error(exc, f"HEAD s3://{bucket}/{key}") from exc
        return ObjectMeta(key=key, size=int(meta["size"]), etag=str(meta.get("e_tag") or "").strip('"'))
