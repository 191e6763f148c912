"""Retention: WORM (S3 Object Lock) for exported runpacks, and pruning of index working data.

Two very different things are retained or not:

* **S3 truth** (plans, ledgers, facts views) is never deleted or modified by SR — no code
  path here touches it. Exported runpacks can additionally be put under S3 Object Lock
  retention (``GOVERNANCE`` or ``COMPLIANCE`` mode) so not even an administrator (in
  compliance mode) can delete or overwrite those object versions before the date.
* The **Postgres index** is rebuildable working data. :func:`prune_index` deletes outbox rows
  that no code path will ever need again: *published* READY/SUPERSEDE/REVOKED rows of facts
  views that are no longer the run's current one (superseded or revoked-then-retried facts),
  and *published* STATUS rows of runs whose status is final. It never deletes run rows (they
  carry idempotency: a deleted row would let a duplicate intent be admitted again), never an
  unpublished row (that is the outbox a crash re-drives), and never the rows of the current
  facts view (``sr reemit`` re-sends them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from worker.adapters.postgres import PgConfig, prune_publications
from worker.adapters.s3 import ObjectStore
from worker.errors import ObjectLockUnsupportedError

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


def require_object_lock(store: ObjectStore, bucket: str) -> None:
    """Check that ``bucket`` has S3 Object Lock enabled (one counted, retried GET; nothing written).

    Raises:
        ObjectLockUnsupportedError: the bucket has no Object Lock configuration, or the
            server does not implement Object Lock (SeaweedFS buckets created without it,
            plain MinIO buckets, ...).
        S3UnavailableError / S3AccessError: the check itself failed.
    """
    try:
        enabled = store.object_lock_enabled(bucket)
    except ObjectLockUnsupportedError as exc:
        raise ObjectLockUnsupportedError(
            f"bucket {bucket!r} has no S3 Object Lock configuration ({exc}): WORM retention "
            "needs a bucket created with Object Lock enabled; nothing was written"
        ) from exc
    if not enabled:
        raise ObjectLockUnsupportedError(
            f"bucket {bucket!r} does not have S3 Object Lock enabled; nothing was written")


def apply_retention(store: ObjectStore, bucket: str, key: str, retention: Retention) -> None:
    """Put Object Lock retention on the current version of ``bucket/key`` (one counted,
    retried PUT).

    Raises:
        ObjectLockUnsupportedError: the server refuses Object Lock for this bucket.
        S3AccessError: e.g. shortening a COMPLIANCE retention, or missing permissions.
        S3UnavailableError: a transient fault persisted through the retry budget.
    """
    store.put_object_retention(bucket, key, mode=retention.mode.value, retain_until=retention.retain_until)


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
