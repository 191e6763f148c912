"""The S3 adapter: every object-store request SR makes.

Where things are:

* :mod:`~worker.adapters.s3.store` — :class:`ObjectStore`, the one class SR talks to:
  retries, request counting, byte caps, write-once / drift semantics;
* :mod:`~worker.adapters.s3.transport` — the :class:`Transport` protocol a client library
  implements, and :func:`routes_for`, the one table choosing the library per operation;
* :mod:`~worker.adapters.s3.boto3_transport` and :mod:`~worker.adapters.s3.obstore_transport`
  — the two client libraries (with ``credentials``, the only modules importing boto3 /
  obstore; neither imports the other). A new S3 client is a new ``*_transport.py`` and a line in :func:`routes_for`;
* :mod:`~worker.adapters.s3.credentials` — :class:`CredentialChain`, the credentials and
  region both libraries sign with (static keys with their session token, else botocore's
  default chain: env, profiles, SSO, web identity, container and instance roles), resolved
  once per store;
* :mod:`~worker.adapters.s3.errors` — the one translation of their faults into
  :mod:`worker.errors`;
* :mod:`~worker.adapters.s3.config` / :mod:`~worker.adapters.s3.counter` — settings and the
  per-verb request counter.

:func:`raw_boto3_client` and :func:`raw_obstore_store` build the bare clients exactly as the
adapter configures them, for benchmarks measuring the libraries' own limits.
"""

from __future__ import annotations

from worker.adapters.s3.boto3_transport import Boto3Transport, raw_boto3_client
from worker.adapters.s3.config import ClientLibrary, S3Config
from worker.adapters.s3.counter import RequestCounter, Verb
from worker.adapters.s3.credentials import CredentialChain
from worker.adapters.s3.obstore_transport import ObstoreTransport, obstore_available, raw_obstore_store
from worker.adapters.s3.store import ObjectStore
from worker.adapters.s3.transport import (
    DEFAULT_CHUNK_SIZE,
    ObjectTransport,
    Operation,
    Routes,
    Transport,
    routes_for,
)
from worker.app.ports import ObjectMeta, WriteOutcome

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "Boto3Transport",
    "ClientLibrary",
    "CredentialChain",
    "ObjectMeta",
    "ObjectStore",
    "ObjectTransport",
    "ObstoreTransport",
    "Operation",
    "RequestCounter",
    "Routes",
    "S3Config",
    "Transport",
    "Verb",
    "WriteOutcome",
    "obstore_available",
    "raw_boto3_client",
    "raw_obstore_store",
    "routes_for",
]
