"""Retention: WORM (S3 Object Lock) for exported runpacks, and pruning of index working data.

Two very different things are retained or not:

* **S3 truth** (plans, ledgers, facts views) is never deleted or modified by SR — no code
  path here touches it. Exported runpacks can additionally be put under S3 Object Lock
  retention (``GOVERNANCE`` or ``COMPLIANCE`` mode) so not even an administrator (in
  compliance mode) can delete or overwrite those object versions before the date.
* The **Postgres index** is rebuildable working data. :func:`prune_index` deletes outbox rows
  that no code path will ever need again: *published* READY/SUPERSEDE rows of facts views
  that are no longer the run's current one (superseded facts), and *published* STATUS rows of
  runs whose status is final. It never deletes run rows (they carry idempotency: a deleted
  row would let a duplicate intent be admitted again), never an unpublished row (that is
  the outbox a crash re-drives), and never the rows of the current facts view (``sr reemit``
  re-sends them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from worker.adapters.postgres import PgConfig, prune_publications
from worker.adapters.s3 import ObjectStore
from worker.errors import ObjectLockUnsupportedError, S3AccessError, S3UnavailableError

__all__ = [
    "LockMode",
    "PruneResult",
    "Retention",
    "apply_retention",
    "prune_index",
    "require_object_lock",
]


class LockMode(StrEnum):
    """S3 Object Lock retention modes."""

    GOVERNANCE = "GOVERNANCE"  # privileged users (s3:BypassGovernanceRetention) may still delete
    COMPLIANCE = "COMPLIANCE"  # nobody can delete or shorten it until the date


@dataclass(frozen=True, slots=True)
class Retention:
    """WORM retention to apply to every exported object.

    Raises:
        ValueError: ``retain_until`` is naive or not in the future of ``now``.
    """

    mode: LockMode
    retain_until: datetime

    @classmethod
    def until(cls, mode: LockMode | str, retain_until: datetime, *, now: datetime | None = None) -> Retention:
        """Validated constructor: an aware timestamp strictly after ``now`` (default: the wall clock).

        The clock is only used for this check; nothing derived from it enters a runpack.

        Raises:
            ValueError: unknown mode, naive timestamp, or a date that is not in the future.
        """
        if retain_until.tzinfo is None or retain_until.utcoffset() is None:
            raise ValueError("retain-until must carry a timezone (e.g. 2031-01-01T00:00:00Z)")
        moment = now or datetime.now(UTC)
        if retain_until <= moment:
            raise ValueError(f"retain-until {retain_until.isoformat()} is not in the future")
        return cls(LockMode(str(mode).upper()), retain_until.astimezone(UTC))


# Error codes S3-compatible servers use when a bucket has no Object Lock (or none at all).
_NO_LOCK_CODES: Final = frozenset({
    "ObjectLockConfigurationNotFoundError",
    "ObjectLockConfigurationNotFound",
    "NotImplemented",
    "InvalidBucketState",
    "InvalidRequest",
    "XNotImplemented",
})


def _client_error(exc: Exception) -> tuple[str, int] | None:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return None
    response: dict[str, Any] = dict(exc.response or {})
    code = str(response.get("Error", {}).get("Code", "") or "")
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _transient(exc: Exception, what: str) -> S3UnavailableError | S3AccessError:
    err = _client_error(exc)
    if err is None:
        return S3UnavailableError(f"{what}: {type(exc).__name__}")
    code, status = err
    if status >= 500 or status == 429 or code in {"SlowDown", "RequestTimeout", "ServiceUnavailable"}:
        return S3UnavailableError(f"{what}: {code or 'HTTP'} {status}")
    return S3AccessError(f"{what}: {code or 'HTTP'} {status}")


def require_object_lock(store: ObjectStore, bucket: str) -> None:
    """Check that ``bucket`` has S3 Object Lock enabled (one request, nothing written).

    Raises:
        ObjectLockUnsupportedError: the bucket has no Object Lock configuration, or the
            server does not implement Object Lock (SeaweedFS buckets created without it,
            plain MinIO buckets, ...).
        S3UnavailableError / S3AccessError: the check itself failed.
    """
    what = f"GET object-lock configuration of s3://{bucket}"
    store.counter.add("GET")
    try:
        response = store.client.get_object_lock_configuration(Bucket=bucket)
    except Exception as exc:
        err = _client_error(exc)
        if err is not None and (err[0] in _NO_LOCK_CODES or err[1] in (404, 501)):
            raise ObjectLockUnsupportedError(
                f"bucket {bucket!r} has no S3 Object Lock configuration ({err[0] or err[1]}): WORM retention "
                "needs a bucket created with Object Lock enabled; nothing was written"
            ) from exc
        raise _transient(exc, what) from exc
    enabled = (response.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled")
    if enabled != "Enabled":
        raise ObjectLockUnsupportedError(
            f"bucket {bucket!r} does not have S3 Object Lock enabled; nothing was written")


def apply_retention(store: ObjectStore, bucket: str, key: str, retention: Retention) -> None:
    """Put Object Lock retention on the current version of ``bucket/key`` (one request).

    Raises:
        ObjectLockUnsupportedError: the server refuses Object Lock for this bucket.
        S3AccessError: e.g. shortening a COMPLIANCE retention, or missing permissions.
        S3UnavailableError: a transient fault.
    """
    what = f"PUT retention of s3://{bucket}/{key}"
    store.counter.add("PUT")
    try:
        store.client.put_object_retention(
            Bucket=bucket,
            Key=key,
            Retention={"Mode": retention.mode.value, "RetainUntilDate": retention.retain_until},
        )
    except Exception as exc:
        err = _client_error(exc)
        if err is not None and err[0] in _NO_LOCK_CODES:
            raise ObjectLockUnsupportedError(f"{what}: {err[0]}") from exc
        raise _transient(exc, what) from exc


# --------------------------------------------------------------------------- index pruning
# Which rows qualify is decided by the prune statements of the Postgres adapter
# (worker.adapters.postgres.prune; see the module docstring).


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune_index` deleted (or would delete, with ``dry_run``), by kind."""

    cutoff: datetime
    dry_run: bool
    by_kind: dict[str, int]

    @property
    def total(self) -> int:
        """Rows deleted (or that would be)."""
        return sum(self.by_kind.values())


def prune_index(config: PgConfig, *, older_than: timedelta, dry_run: bool = False,
                batch_size: int = 1000) -> PruneResult:
    """Delete superseded working data from the Postgres index; never touches S3.

    Deletes published outbox rows older than ``older_than`` (by ``published_at``, measured
    with the database's clock) that are of superseded facts views, or STATUS rows of runs in
    a final status. Batches of ``batch_size`` rows, each its own transaction, rows locked
    by someone else are skipped (and left for the next prune).

    Raises:
        ValueError: ``older_than`` is negative or ``batch_size`` < 1.
        PostgresUnavailableError / PostgresError.
    """
    rows = prune_publications(config, older_than=older_than, dry_run=dry_run, batch_size=batch_size)
    return PruneResult(cutoff=rows.cutoff, dry_run=dry_run, by_kind=rows.by_kind)
