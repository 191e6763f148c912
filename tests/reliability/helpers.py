"""Shared helpers of the reliability suite: worker logs, group assignment, S3 and Postgres probes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition

from tests.sr_harness import SREnv, start_worker_process, stop_process
from worker.app.ports import Record
from worker.core.identity import run_lock_key

# ----------------------------------------------------------------------------- worker logs


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log objects a worker wrote (non-JSON lines, e.g. librdkafka's, are skipped)."""
    if not path.exists():
        return []
    found: list[dict[str, Any]] = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def assigned_partitions(path: Path, topic: str) -> set[int]:
    """Partitions of ``topic`` a worker owns now, replayed from its assign/revoke/lost log lines."""
    owned: set[int] = set()
    for line in log_lines(path):
        msg = line.get("msg")
        if msg not in ("partitions assigned", "partitions revoked", "partitions lost"):
            continue
        parts = {int(p[len(topic) + 1:-1]) for p in line.get("partitions", []) if p.startswith(f"{topic}[")}
        if msg == "partitions assigned":
            owned |= parts
        else:
            owned -= parts
    return owned


def wait_group_split(logs: list[Path], topic: str, partitions: int, timeout: float = 90.0) -> None:
    """Wait until every worker owns some partitions of ``topic`` and together they own all of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owned = [assigned_partitions(p, topic) for p in logs]
        union: set[int] = set().union(*owned)
        if all(owned) and union == set(range(partitions)) and sum(map(len, owned)) == partitions:
            return
        time.sleep(0.2)
    raise AssertionError(f"consumer group never split {topic} over {len(logs)} workers: "
                         f"{[sorted(assigned_partitions(p, topic)) for p in logs]}")


def stopped_stats(path: Path) -> list[dict[str, Any]]:
    """The counters of every clean ``worker stopped`` line in a log (one per clean exit)."""
    return [line for line in log_lines(path) if line.get("msg") == "worker stopped"]


@dataclass
class WorkerProc:
    """An ``sr run`` subprocess owned by one test (stopped by PID in teardown)."""

    env: SREnv
    log: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProc:
        self.proc = start_worker_process(self.env, extra_env=self.extra_env, log_path=self.log)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (SIGCONT first, in case it is stopped), wait, SIGKILL if needed; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        return stop_process(proc, timeout)


def stop_all(workers: Iterable[WorkerProc]) -> list[int | None]:
    """Stop every worker (never raises before all were asked to stop)."""
    return [w.stop() for w in workers]


# ----------------------------------------------------------------------------- kafka


def committed_total(env: SREnv, topic: str) -> int:
    """Sum of the group's committed offsets over ``topic``'s partitions."""
    consumer = Consumer({"bootstrap.servers": env.settings.kafka_bootstrap, "group.id": env.settings.group_id})
    try:
        md = consumer.list_topics(topic, timeout=10)
        parts = [TopicPartition(topic, p) for p in md.topics[topic].partitions]
        committed = consumer.committed(parts, timeout=10)
        return sum(max(tp.offset, 0) for tp in committed)
    finally:
        consumer.close()


def group_by_idempotency_key(records: Iterable[Record]) -> dict[bytes, set[tuple[Any, ...]]]:
    """idempotency key → the distinct (key, value, headers) byte tuples published under it."""
    grouped: dict[bytes, set[tuple[Any, ...]]] = defaultdict(set)
    for r in records:
        header = r.header("sr-idempotency-key")
        assert header is not None, f"record without sr-idempotency-key: {r}"
        grouped[header].add((r.key, r.value, tuple(sorted(r.headers))))
    return grouped


# ----------------------------------------------------------------------------- s3


def list_objects(s3_client: Any, bucket: str, prefix: str) -> dict[str, str]:
    """key → ETag of every object under ``prefix``."""
    found: dict[str, str] = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = obj["ETag"]
    return found


# ----------------------------------------------------------------------------- postgres


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


def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
