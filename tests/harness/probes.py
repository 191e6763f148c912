"""Looking at SR's state from outside: bounded polling, S3 listings, Postgres locks and counts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg

from worker.core.identity import run_lock_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "list_objects",
    "lock_holder",
    "status_counts",
    "terminate_backend",
    "unpublished_count",
    "wait_for",
]


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.2) -> bool:
    """Poll ``predicate`` every ``interval`` seconds until true or ``timeout`` seconds pass.

    Returns:
        The predicate's last value (checked once more at the deadline).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def list_objects(s3_client: S3Client, bucket: str, prefix: str) -> dict[str, str]:
    """key → ETag of every object under ``prefix``."""
    found: dict[str, str] = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = obj["ETag"]
    return found


def lock_holder(dsn: str, run_id: str) -> int | None:
    """Backend pid holding the run's advisory lock (None if nobody holds it)."""
    key = run_lock_key(run_id) & 0xFFFF_FFFF_FFFF_FFFF
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
            (key >> 32, key & 0xFFFF_FFFF)).fetchone()
    return None if row is None else int(row[0])


def terminate_backend(dsn: str, pid: int) -> bool:
    """pg_terminate_backend(pid): what a long pause plus TCP keepalive expiry does to a session."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
    return bool(row and row[0])


def status_counts(dsn: str) -> dict[str, int]:
    """Run rows per status in the index."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT status, count(*) FROM sr_runs GROUP BY status").fetchall()
    return {str(s): int(n) for s, n in rows}


def unpublished_count(dsn: str) -> int:
    """Publications in the outbox that were never marked published."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM sr_publications WHERE published_at IS NULL").fetchone()
    return int(row[0]) if row else 0
