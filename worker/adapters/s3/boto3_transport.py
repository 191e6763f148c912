"""boto3 transport of :class:`~worker.adapters.s3.ObjectStore`: every request obstore cannot
serve (LIST, DELETE, the bucket probe, Object Lock), and all of them with
``client_library="boto3"``.

The client is configured for the adapter's contract: botocore's own retries are off (one
attempt per call; tenacity in the store owns retries, so they are bounded, counted and
limited to transient faults), and CRC checksum trailers are off (SR verifies sha256 itself;
they only cost client CPU and trip some S3-compatible servers). Write-once PUTs carry
``Content-MD5`` instead: the server then refuses a body that never fully arrived
(``tests/reliability``, torn PUT). Every PUT of an object carries ``S3Config.sse``
(``x-amz-server-side-encryption``, and the KMS key id with ``aws:kms``). Credentials and the
region come from the store's :class:`~worker.adapters.s3.credentials.CredentialChain` (static
keys with their session token, else botocore's default chain), shared with obstore.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, cast

from worker.adapters.s3.config import S3Config
from worker.adapters.s3.credentials import CredentialChain
from worker.adapters.s3.errors import client_error_answer, translate_boto3_error, with_sse_hint
from worker.adapters.s3.transport import DEFAULT_CHUNK_SIZE, ListPage
from worker.app.ports import ObjectMeta
from worker.errors import ObjectNotFoundError, S3AccessError

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import ObjectLockRetentionTypeDef

__all__ = ["Boto3Transport", "raw_boto3_client"]


def raw_boto3_client(config: S3Config, *, chain: CredentialChain | None = None) -> S3Client:
    """A boto3 S3 client configured exactly like the adapter's (no botocore retries, no CRC
    checksums, same pool, timeouts, addressing, credentials and region). No S3 request is sent;
    resolving the credentials may fetch them (container, STS, SSO).

    For benchmarks that measure the library's own limits; SR code goes through ObjectStore.

    Args:
        config: the adapter's settings.
        chain: the credentials to sign with (the store shares one with obstore); ``None``
            resolves a chain of its own from ``config``.

    Raises:
        S3CredentialsError: no usable credentials (see :meth:`CredentialChain.resolve`).
        S3UnavailableError: a credential endpoint could not answer.
    """
    from botocore.config import Config

    if chain is None:
        chain = CredentialChain(config)
    chain.resolve()
    botocore_config = Config(
        region_name=chain.region,
        max_pool_connections=config.max_pool_connections,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        # One attempt per botocore call: tenacity owns retries so they are bounded,
        # counted and limited to the faults we classify as transient. (botocore's
        # "max_attempts" counts *retries*: 1 would still send each failing request twice.)
        retries={"total_max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": "path" if config.uses_path_style() else "auto"},
        # SR verifies sha256 itself; CRC trailers only cost client CPU (the measured
        # bottleneck) and trip some S3-compatible servers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # No keys passed here: the session holds the chain's credentials (static keys and token
    # included), so this client and obstore sign with the very same ones.
    return chain.boto3_session().client(
        "s3", endpoint_url=config.endpoint_url, region_name=chain.region, config=botocore_config)


def _strip_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


@dataclass(frozen=True, slots=True)
class _Boto3Get:
    """An answered boto3 GET (:class:`~worker.adapters.s3.transport.OpenedGet`)."""

    size: int
    etag: str
    total: int
    body: Any  # botocore StreamingBody
    what: str

    def chunks(self, chunk_size: int) -> Iterator[bytes]:
        while True:
            try:
                chunk = self.body.read(chunk_size)
            except Exception as exc:
                raise translate_boto3_error(exc, self.what) from exc
            if not chunk:
                return
            yield chunk

    def read_all(self, limit: int) -> bytes:
        # Read in chunks and stop once past the limit: the announced length was checked, but
        # a body without one (chunked encoding) must not be buffered unbounded.
        parts: list[bytes] = []
        received = 0
        try:
            for chunk in self.chunks(DEFAULT_CHUNK_SIZE):
                parts.append(chunk)
                received += len(chunk)
                if received > limit:
                    break
        finally:
            self.close()
        return b"".join(parts)

    def close(self) -> None:
        self.body.close()


class Boto3Transport:
    """boto3's S3 client behind the :class:`~worker.adapters.s3.transport.Transport` protocol.

    Args:
        config: the adapter's settings.
        client: an already-built client to send requests with (e.g. one with botocore event
            hooks registered, :func:`raw_boto3_client`); ``None`` builds one in :meth:`open`.
        chain: the credentials and region to build the client with (the store shares one
            with its obstore transport); ``None`` resolves one from ``config`` in :meth:`open`.

    Raises (every request method):
        S3Error subclasses, translated by :func:`~worker.adapters.s3.errors.translate_boto3_error`.
        S3AccessError: the transport was not opened.
    """

    def __init__(self, config: S3Config, *, client: S3Client | None = None,
                 chain: CredentialChain | None = None) -> None:
        self._config = config
        self._client = client
        self._chain = chain
        self._lock = threading.Lock()

    @property
    def name(self) -> Literal["boto3"]:
        """``"boto3"``."""
        return "boto3"

    def open(self) -> None:
        """Build the client if there is none (idempotent; no S3 request is sent).

        Raises:
            S3CredentialsError / S3UnavailableError: as :meth:`CredentialChain.resolve`.
        """
        with self._lock:
            if self._client is None:
                self._client = raw_boto3_client(self._config, chain=self._chain)

    def close(self) -> None:
        """Release the client's connection pool (idempotent)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _s3(self) -> S3Client:
        client = self._client
        if client is None:
            raise S3AccessError("ObjectStore used before open()/__enter__")
        return client

    # ----------------------------------------------------------------- object requests
    def put(self, bucket: str, key: str, data: bytes, *, create: bool) -> None:
        """One PUT (``If-None-Match: *`` and ``Content-MD5`` with ``create``), carrying the
        configured server-side encryption (``ServerSideEncryption`` / ``SSEKMSKeyId``)."""
        client = self._s3()
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": data}
        if create:
            kwargs["IfNoneMatch"] = "*"
            kwargs["ContentMD5"] = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
        if self._config.sse is not None:
            kwargs["ServerSideEncryption"] = self._config.sse
        if self._config.sse_kms_key_id is not None:
            kwargs["SSEKMSKeyId"] = self._config.sse_kms_key_id
        try:
            client.put_object(**kwargs)
        except Exception as exc:
            error = translate_boto3_error(exc, f"PUT s3://{bucket}/{key}")
            raise with_sse_hint(error, status=client_error_answer(exc)[0], sse=self._config.sse) from exc

    def open_get(self, bucket: str, key: str, *, start: int = 0, end: int | None = None,
                 etag: str | None = None) -> _Boto3Get:
        """One GET of bytes ``[start, end)``, body unread."""
        what = f"GET s3://{bucket}/{key}"
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if end is not None:
            kwargs["Range"] = f"bytes={start}-{end - 1}"
        elif start > 0:
            kwargs["Range"] = f"bytes={start}-"
        if etag is not None:
            kwargs["IfMatch"] = f'"{etag}"'
        client = self._s3()
        try:
            raw = client.get_object(**kwargs)
        except Exception as exc:
            raise translate_boto3_error(exc, what) from exc
        size = int(raw.get("ContentLength", 0) or 0)
        # "bytes 0-99/1000": the object's size is after the slash.
        total = str(raw.get("ContentRange") or "").rpartition("/")[2]
        return _Boto3Get(size=size, etag=_strip_etag(raw.get("ETag")),
                         total=int(total) if total.isdigit() else start + size, body=raw["Body"], what=what)

    def head(self, bucket: str, key: str) -> ObjectMeta:
        """One HEAD of an object."""
        client = self._s3()
        try:
            response = client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise translate_boto3_error(exc, f"HEAD s3://{bucket}/{key}") from exc
        return ObjectMeta(key=key, size=int(response.get("ContentLength", 0) or 0),
                          etag=_strip_etag(response.get("ETag")))

    # ----------------------------------------------------------------- listing, deletion, buckets
    def list_page(self, bucket: str, prefix: str, *, page_size: int, token: str | None,
                  start_after: str | None) -> ListPage:
        """One ListObjectsV2 request."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
        if token is not None:
            kwargs["ContinuationToken"] = token
        elif start_after is not None:
            kwargs["StartAfter"] = start_after
        client = self._s3()
        try:
            response = client.list_objects_v2(**kwargs)
        except Exception as exc:
            raise translate_boto3_error(exc, f"LIST s3://{bucket}/{prefix}") from exc
        objects = [ObjectMeta(key=item["Key"], size=int(item.get("Size", 0) or 0), etag=_strip_etag(item.get("ETag")))
                   for item in response.get("Contents", []) or []]
        next_token = response.get("NextContinuationToken")
        return ListPage(objects=objects, next_token=next_token if response.get("IsTruncated") and next_token else None)

    def delete(self, bucket: str, key: str) -> None:
        """One DELETE of an object."""
        client = self._s3()
        try:
            client.delete_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise translate_boto3_error(exc, f"DELETE s3://{bucket}/{key}") from exc

    def bucket_exists(self, bucket: str) -> bool:
        """One HEAD of a bucket: True if it exists and answers, False on 404 / NoSuchBucket."""
        client = self._s3()
        try:
            client.head_bucket(Bucket=bucket)
        except Exception as exc:
            translated = translate_boto3_error(exc, f"HEAD s3://{bucket}")
            # A HEAD has no body, but some servers still name the code: a missing bucket.
            if isinstance(translated, ObjectNotFoundError) or client_error_answer(exc)[1] == "NoSuchBucket":
                return False
            raise translated from exc
        return True

    # ----------------------------------------------------------------- Object Lock
    def object_lock_enabled(self, bucket: str) -> bool:
        """One GET of the bucket's Object Lock configuration."""
        what = f"GET object-lock configuration of s3://{bucket}"
        client = self._s3()
        try:
            response = client.get_object_lock_configuration(Bucket=bucket)
        except Exception as exc:
            raise translate_boto3_error(exc, what, object_lock="configuration") from exc
        return (response.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled") == "Enabled"

    def put_object_retention(self, bucket: str, key: str, *, mode: str, retain_until: datetime) -> None:
        """One PUT of Object Lock retention on the current version of ``key``."""
        what = f"PUT retention of s3://{bucket}/{key}"
        # The server validates the mode (GOVERNANCE / COMPLIANCE); a bad one is an S3AccessError.
        retention = cast("ObjectLockRetentionTypeDef", {"Mode": mode, "RetainUntilDate": retain_until})
        client = self._s3()
        try:
            client.put_object_retention(Bucket=bucket, Key=key, Retention=retention)
        except Exception as exc:
            raise translate_boto3_error(exc, what, object_lock="retention") from exc
