"""S3's part of the worker's health surface: the readiness check of the object store.

:func:`s3_check` probes with its own :class:`~worker.adapters.s3.ObjectStore` (short
timeouts, a single attempt), so a probe never waits through the worker's retry budget and
never adds to the worker's S3 request counter (the cost tests count those). Errors are the
adapter's own (already translated) with the secret key scrubbed from their text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from worker.adapters.s3 import ObjectStore, S3Config
from worker.errors import S3AccessError, SRError, redact

__all__ = ["s3_check"]


class _S3Check:
    """``HEAD bucket`` through a private probe store: short timeouts, no retries."""

    def __init__(self, config: S3Config, bucket: str, timeout: float) -> None:
        self._config = config.model_copy(update={
            "connect_timeout": timeout, "read_timeout": timeout, "max_attempts": 1, "max_pool_connections": 2,
        })
        self._bucket = bucket
        self._store: ObjectStore | None = None
        self._lock = threading.Lock()
        self._secrets = [s.get_secret_value() for s in (config.secret_access_key, config.session_token)
                         if s is not None]

    def _probe(self) -> ObjectStore:
        with self._lock:
            if self._store is None:
                store = ObjectStore(self._config)
                store.open()
                self._store = store
            return self._store

    def __call__(self) -> None:
        try:
            exists = self._probe().bucket_exists(self._bucket)
        except SRError as exc:
            raise type(exc)(redact(str(exc), self._secrets)) from None
        if not exists:
            raise S3AccessError(f"bucket {self._bucket!r} does not exist")

    def close(self) -> None:
        """Release the probe client's connections."""
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()


def s3_check(store: ObjectStore | S3Config, bucket: str, *, timeout: float = 1.5) -> Callable[[], None]:
    """A readiness check of the object store: ``HEAD`` the bucket.

    The probe uses its own client built from ``store``'s configuration with ``timeout``
    seconds for connect and read and a single attempt. The returned object also has a
    ``close()`` that releases the probe client.

    Args:
        store: the worker's store (only its configuration is used) or an ``S3Config``.
        bucket: the bucket SR keeps its truth in.
        timeout: seconds, per connect and per read.

    The returned check raises:
        S3UnavailableError: the server could not be reached, or timed out, or answered 5xx.
        S3AccessError: the bucket does not exist or access is denied.
    """
    config = store.config if isinstance(store, ObjectStore) else store
    return _S3Check(config, bucket, timeout)
