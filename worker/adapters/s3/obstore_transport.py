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

* credentials and the region come from the store's
  :class:`~worker.adapters.s3.credentials.CredentialChain`, shared with boto3: obstore signs
  with what :class:`~worker.adapters.s3.credentials.ObstoreCredentials` hands it (static keys
  with their session token, or botocore's default chain, refreshed before expiry), never with
  credentials object_store finds on its own.

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
from worker.adapters.s3.credentials import CredentialChain
from worker.adapters.s3.errors import obstore_answer, translate_obstore_error, with_sse_hint
from worker.app.ports import ObjectMeta
from worker.errors import S3AccessError, S3Error

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


def _build_store(config: S3Config, bucket: str, chain: CredentialChain) -> Any:
    """obstore's ``S3Store`` for ``bucket`` with the adapter's settings, signing with ``chain``
    (resolved) in its region.

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
        "region": chain.region,
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
    # Static keys go through the provider too: given as keys, object_store would add an
    # AWS_SESSION_TOKEN from the environment that belongs to other keys.
    kwargs["credential_provider"] = chain.obstore_credentials()
    try:
        return S3Store(bucket, **kwargs)
    except Exception as exc:
        raise S3AccessError(f"cannot configure obstore for bucket {bucket!r}: {exc}") from exc


def raw_obstore_store(config: S3Config, bucket: str) -> Any:
    """obstore's ``S3Store`` for ``bucket`` configured exactly like the adapter's (checksums,
    timeouts, no obstore retries, same credentials and region). No S3 request is sent.

    For benchmarks that measure the library's own limits; SR code goes through ObjectStore.

    Raises:
        S3AccessError: obstore is not installed or refuses the configuration.
        S3CredentialsError / S3UnavailableError: as :meth:`CredentialChain.resolve`.
    """
    if not obstore_available():
        raise S3AccessError("obstore requested but the obstore package is not installed")
    chain = CredentialChain(config)
    chain.resolve()
    return _build_store(config, bucket, chain)


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

    Args:
        config: the adapter's settings.
        chain: the credentials and region to sign with (the store shares one with its boto3
            transport); ``None`` resolves one from ``config`` in :meth:`open`.

    Raises (every request method):
        S3Error subclasses, translated by
        :func:`~worker.adapters.s3.errors.translate_obstore_error`. No retries here.
        S3AccessError: the transport was not opened.
    """

    def __init__(self, config: S3Config, *, chain: CredentialChain | None = None) -> None:
        self._config = config
        self._stores: dict[str, Any] = {}
        self._given_chain = chain
        self._chain: CredentialChain | None = None
        self._opened = False
        self._lock = threading.Lock()

    @property
    def name(self) -> Literal["obstore"]:
        """``"obstore"``."""
        return "obstore"

    def open(self) -> None:
        """Resolve credentials (static keys, else botocore's default chain); no S3 request is sent.

        Raises:
            S3AccessError: obstore is not installed.
            S3CredentialsError / S3UnavailableError: as :meth:`CredentialChain.resolve`.
        """
        with self._lock:
            if self._opened:
                return
            if not obstore_available():
                raise S3AccessError("S3 client 'obstore' selected but the obstore package is not installed")
            chain = self._given_chain if self._given_chain is not None else CredentialChain(self._config)
            chain.resolve()
            self._chain = chain
            self._opened = True

    def close(self) -> None:
        """Drop the per-bucket stores (idempotent)."""
        with self._lock:
            self._stores = {}
            self._chain = None
            self._opened = False

    def _translate(self, exc: BaseException, what: str) -> S3Error:
        # A failed credential fetch reaches us as obstore's UnauthenticatedError whose text
        # holds a Python traceback; the provider remembered the typed error instead.
        from obstore.exceptions import UnauthenticatedError

        chain = self._chain
        failure = chain.take_failure() if chain is not None and isinstance(exc, UnauthenticatedError) else None
        if failure is not None:
            return type(failure)(f"{what}: {str(failure).removeprefix('obstore: ')}")
        return translate_obstore_error(exc, what)

    def _store_for(self, bucket: str) -> Any:
        store = self._stores.get(bucket)
        if store is not None:
            return store
        chain = self._chain
        if not self._opened or chain is None:
            raise S3AccessError("ObjectStore used before open()/__enter__")
        store = _build_store(self._config, bucket, chain)
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
            error = self._translate(exc, f"PUT s3://{bucket}/{key}")
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
            raise self._translate(exc, what) from exc
        return _ObstoreGet(size=int(last) - int(first), etag=str(meta.get("e_tag") or "").strip('"'),
                           total=int(meta["size"]), result=result, what=what)

    def head(self, bucket: str, key: str) -> ObjectMeta:
        """One HEAD of an object."""
        import obstore

        store = self._store_for(bucket)
        try:
            meta = obstore.head(store, key)
        except Exception as exc:
            raise self._translate(exc, f"HEAD s3://{bucket}/{key}") from exc
        return ObjectMeta(key=key, size=int(meta["size"]), etag=str(meta.get("e_tag") or "").strip('"'))
