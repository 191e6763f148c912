"""What an S3 client library must do for :class:`~worker.adapters.s3.ObjectStore`, and
which library does it.

A *transport* sends exactly one request per call and translates every fault of its library
with :mod:`worker.adapters.s3.errors` (it raises only :class:`~worker.errors.S3Error`). It
does not retry, count, cap or compare bytes: :class:`~worker.adapters.s3.ObjectStore` does
that once for all of them.

* :class:`ObjectTransport` — the object requests a run makes many of (PUT, GET, HEAD). Both
  boto3 and obstore implement it.
* :class:`Transport` — that plus LIST, DELETE, the bucket probe and the Object Lock calls.
  Only boto3 implements it (obstore has no bucket or Object Lock API).

:func:`routes_for` is the one table choosing the transport of each operation.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final, Literal, Protocol

from worker.app.ports import ObjectMeta

if TYPE_CHECKING:
    from worker.adapters.s3.config import ClientLibrary

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "OPERATIONS",
    "ListPage",
    "ObjectTransport",
    "OpenedGet",
    "Operation",
    "Routes",
    "Transport",
    "routes_for",
    "single_route",
]

#: Bytes per chunk of a streamed body unless a caller asks for another size.
DEFAULT_CHUNK_SIZE: Final = 1024 * 1024

#: What the adapter routes: the five object/bucket verbs, the bucket probe and Object Lock calls.
Operation = Literal["PUT", "GET", "HEAD", "LIST", "DELETE", "BUCKET", "LOCK"]
OPERATIONS: Final[tuple[Operation, ...]] = ("PUT", "GET", "HEAD", "LIST", "DELETE", "BUCKET", "LOCK")


class OpenedGet(Protocol):
    """An answered GET whose body is not read yet (read it once, by one of the two methods).

    Raises (every method):
        S3Error subclasses (a body cut off mid-way is an S3UnavailableError).
    """

    @property
    def size(self) -> int:
        """Bytes this response delivers (the range's length for a ranged GET)."""
        ...

    @property
    def etag(self) -> str:
        """The object's ETag without quotes ("" if the server sent none)."""
        ...

    @property
    def total(self) -> int:
        """The whole object's size in bytes."""
        ...

    def read_all(self, limit: int) -> bytes:
        """The body in one ``bytes``. Reading may stop once more than ``limit`` bytes arrived
        (the result is then longer than ``limit``, but not the whole body); the caller
        enforces the cap."""
        ...

    def chunks(self, chunk_size: int) -> Iterator[bytes | memoryview]:
        """The body as buffers of at most ``chunk_size`` bytes, in order."""
        ...

    def close(self) -> None:
        """Drop the response and its connection without draining an unread body."""
        ...


@dataclass(frozen=True, slots=True)
class ListPage:
    """One ListObjectsV2 page: its objects in key order, and the token of the next page
    (``None`` on the last page)."""

    objects: list[ObjectMeta]
    next_token: str | None


class ObjectTransport(Protocol):
    """The per-request object primitives both client libraries serve. One request per call,
    no retries; ``open`` builds the client without sending a request.

    Raises (every request method):
        S3Error subclasses, translated by :mod:`worker.adapters.s3.errors`.
    """

    @property
    def name(self) -> ClientLibrary:
        """The library this transport sends requests with."""
        ...

    def open(self) -> None:
        """Build the client (idempotent; no request is sent).

        Raises:
            S3AccessError: the library is missing or cannot be configured.
        """
        ...

    def close(self) -> None:
        """Release connections (idempotent)."""
        ...

    def put(self, bucket: str, key: str, data: bytes, *, create: bool) -> None:
        """One PUT carrying a body checksum; with ``create`` only if the key is absent
        (``If-None-Match: *``). The checksum makes the server refuse a body that never fully
        arrived instead of committing a short object (the torn-PUT guard).

        Raises:
            PreconditionFailedError: ``create`` and the key already exists (412).
        """
        ...

    def open_get(self, bucket: str, key: str, *, start: int = 0, end: int | None = None,
                 etag: str | None = None) -> OpenedGet:
        """Send one GET of bytes ``[start, end)`` (``end=None``: to the end), pinned to
        ``etag`` with ``If-Match`` when given; the body is not read.

        Raises:
            ObjectNotFoundError: no such key. PreconditionFailedError: the ETag differs.
        """
        ...

    def head(self, bucket: str, key: str) -> ObjectMeta:
        """One HEAD of an object.

        Raises:
            ObjectNotFoundError: no such key.
        """
        ...


class Transport(ObjectTransport, Protocol):
    """:class:`ObjectTransport` plus listing, deletion, the bucket probe and Object Lock."""

    def list_page(self, bucket: str, prefix: str, *, page_size: int, token: str | None,
                  start_after: str | None) -> ListPage:
        """One ListObjectsV2 request: the page after ``token`` (or, without a token, the first
        page of keys after ``start_after``).

        Raises:
            S3AccessError: e.g. the bucket does not exist.
        """
        ...

    def delete(self, bucket: str, key: str) -> None:
        """One DELETE of an object."""
        ...

    def bucket_exists(self, bucket: str) -> bool:
        """One HEAD of a bucket: False if the server says it does not exist."""
        ...

    def object_lock_enabled(self, bucket: str) -> bool:
        """One GET of the bucket's Object Lock configuration: is Object Lock enabled?

        Raises:
            ObjectLockUnsupportedError: the bucket has no Object Lock configuration, or the
                server does not implement Object Lock.
        """
        ...

    def put_object_retention(self, bucket: str, key: str, *, mode: str, retain_until: datetime) -> None:
        """One PUT of Object Lock retention (``mode`` GOVERNANCE or COMPLIANCE) on the current
        version of ``key``.

        Raises:
            ObjectLockUnsupportedError: the server refuses Object Lock for this bucket.
            S3AccessError: e.g. shortening a COMPLIANCE retention, missing permissions.
        """
        ...


@dataclass(frozen=True, slots=True)
class Routes:
    """The transport serving each :data:`Operation` of one ObjectStore.

    The field types say which library can serve what: any :class:`ObjectTransport` for the
    object requests, a full :class:`Transport` (boto3) for the rest.
    """

    put: ObjectTransport
    get: ObjectTransport
    head: ObjectTransport
    list: Transport
    delete: Transport
    bucket: Transport
    lock: Transport

    def names(self) -> dict[Operation, ClientLibrary]:
        """Which library serves each operation, e.g. ``{"PUT": "obstore", ..., "LIST": "boto3"}``."""
        served: dict[Operation, ObjectTransport] = {
            "PUT": self.put, "GET": self.get, "HEAD": self.head, "LIST": self.list,
            "DELETE": self.delete, "BUCKET": self.bucket, "LOCK": self.lock,
        }
        return {operation: transport.name for operation, transport in served.items()}

    def transports(self) -> builtins.list[ObjectTransport]:
        """Each distinct transport once, in operation order (to open or close them)."""
        distinct: builtins.list[ObjectTransport] = []
        for transport in (self.put, self.get, self.head, self.list, self.delete, self.bucket, self.lock):
            if all(transport is not seen for seen in distinct):
                distinct.append(transport)
        return distinct


def routes_for(client_library: ClientLibrary, *, boto3: Transport, obstore: ObjectTransport | None) -> Routes:
    """The one table: which transport serves each operation for ``client_library``.

    ``"obstore"``: obstore serves PUT, GET and HEAD, the requests a run makes many of (~8x
    less client CPU per request than boto3, measured in ``bench/``); boto3 keeps LIST,
    DELETE, the bucket probe and Object Lock. ``"boto3"``: boto3 serves everything.

    Args:
        client_library: ``S3Config.client_library``.
        boto3: the boto3 transport.
        obstore: the obstore transport (needed only for ``"obstore"``).

    Raises:
        ValueError: ``"obstore"`` without an obstore transport.
    """
    if client_library == "obstore":
        if obstore is None:
            raise ValueError("client_library 'obstore' needs an obstore transport")
        objects: ObjectTransport = obstore
    else:
        objects = boto3
    return Routes(put=objects, get=objects, head=objects,
                  list=boto3, delete=boto3, bucket=boto3, lock=boto3)


def single_route(transport: Transport) -> Routes:
    """Routes sending every operation through one transport (a custom client, a test double)."""
    return Routes(put=transport, get=transport, head=transport, list=transport, delete=transport,
                  bucket=transport, lock=transport)
