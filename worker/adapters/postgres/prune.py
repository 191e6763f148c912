"""Pruning of outbox rows no code path will ever need again (``sr index prune``).

Which rows qualify is decided by the ``prune_count`` / ``prune_delete`` statements of
``sql/queries.sql``: *published* READY/SUPERSEDE rows of facts views that are no longer the
run's current one, and *published* STATUS rows of runs whose status is final, published
longer ago than a given age (measured with the database's clock). Run rows and unpublished
rows are never deleted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from worker.adapters.postgres.config import PgConfig
from worker.adapters.postgres.pool import close_quietly, connect
from worker.adapters.postgres.queries import execute, query
from worker.errors import PostgresError

__all__ = ["PrunedRows", "prune_publications"]


@dataclass(frozen=True, slots=True)
class PrunedRows:
    """Outbox rows deleted (or, in a dry run, that would be) by kind, and the age cutoff used."""

    #: Rows published before this time (the database's clock) were eligible.
    cutoff: datetime
    #: kind -> number of rows; kinds with no row are absent.
    by_kind: dict[str, int]


def prune_publications(config: PgConfig, *, older_than: timedelta, dry_run: bool = False,
                       batch_size: int = 1000) -> PrunedRows:
    """Delete (or with ``dry_run`` only count) the prunable outbox rows older than ``older_than``.

    Runs on one fresh connection (not a pool). Deletes in batches of ``batch_size`` rows,
    each its own transaction; rows locked by someone else are skipped and left for the next
    prune. Round trips: a dry run 1 (2 when nothing qualifies), otherwise 1 + one per batch.

    Raises:
        ValueError: ``older_than`` is negative or ``batch_size`` < 1.
        PostgresUnavailableError: the server is unreachable or the connection dropped.
        PostgresError: another database error, or the database returned no cutoff time.
    """
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    params: dict[str, Any] = {"older_than_s": older_than.total_seconds(), "limit": batch_size}
    conn = connect(config)
    try:
        if dry_run:
            rows = execute(conn, query("prune_count"), params)
            cutoff_rows = rows or execute(conn, query("prune_cutoff"), params)
            return PrunedRows(cutoff=_cutoff(cutoff_rows), by_kind={str(r["kind"]): int(r["n"]) for r in rows})
        cutoff = _cutoff(execute(conn, query("prune_cutoff"), params))
        counts: Counter[str] = Counter()
        while True:
            deleted = execute(conn, query("prune_delete"), params)
            counts.update(str(r["kind"]) for r in deleted)
            if len(deleted) < batch_size:
                break
        return PrunedRows(cutoff=cutoff, by_kind=dict(sorted(counts.items())))
    finally:
        close_quietly(conn)


def _cutoff(rows: list[dict[str, Any]]) -> datetime:
    if not rows or not isinstance(rows[0].get("cutoff"), datetime):
        raise PostgresError("prune: the database returned no cutoff time")
    value: datetime = rows[0]["cutoff"]
    return value
