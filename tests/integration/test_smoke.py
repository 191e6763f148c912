"""Smoke tests of the real servers the product stands on (issue: foundation, points 2–4)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError
from confluent_kafka import Consumer, Producer

pytestmark = pytest.mark.integration




def test_kafka_1000_keyed_records_and_group_rebalance(kafka_bootstrap: str, topic_factory: Any,
                                                       group_id: str) -> None:
    topic = topic_factory("smoke", partitions=4)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "acks": "all"})
    for i in range(1000):
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    assert producer.flush(30) == 0

    first_assignments: list[list[int]] = []
    c1 = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group_id,
                   "auto.offset.reset": "earliest", "enable.auto.commit": False,
                   "session.timeout.ms": 6000})
    c1.subscribe([topic], on_assign=lambda _c, ps: first_assignments.append(sorted(p.partition for p in ps)))
    seen: dict[bytes | None, bytes | None] = {}
    deadline = time.monotonic() + 60
    while len(seen) < 1000 and time.monotonic() < deadline:
        for msg in c1.consume(500, 0.5):
            assert msg.error() is None, msg.error()
            seen[msg.key()] = msg.value()
    c1.commit(asynchronous=False)
    assert len(seen) == 1000
    assert all(seen[f"k{i}".encode()] == f"v{i}".encode() for i in range(1000))
    assert first_assignments and first_assignments[0] == [0, 1, 2, 3]

    # A second member joins: the group rebalances and the four partitions are split.
    second_assignments: list[list[int]] = []
    c2 = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group_id,
                   "auto.offset.reset": "earliest", "enable.auto.commit": False,
                   "session.timeout.ms": 6000})
    c2.subscribe([topic], on_assign=lambda _c, ps: second_assignments.append(sorted(p.partition for p in ps)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        c1.poll(0.2)
        c2.poll(0.2)
        mine1 = {p.partition for p in c1.assignment()}
        mine2 = {p.partition for p in c2.assignment()}
        if mine1 and mine2 and mine1 | mine2 == {0, 1, 2, 3} and not mine1 & mine2:
            break
    assert mine1 and mine2, (mine1, mine2)
    assert mine1 | mine2 == {0, 1, 2, 3}
    assert not mine1 & mine2
    # Committed offsets survived the rebalance: nothing is re-delivered to the newcomer.
    redelivered = [m for m in c2.consume(100, 2.0) if m.error() is None]
    assert redelivered == []
    c2.close()
    c1.close()


def _hold_lock_forever(dsn: str, key: int) -> subprocess.Popen[bytes]:
    code = textwrap.dedent(f"""
        import psycopg, sys, time
        conn = psycopg.connect({dsn!r}, autocommit=True)
        conn.execute("SELECT pg_advisory_lock(%s)", ({key},))
        sys.stdout.write("locked\\n"); sys.stdout.flush()
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"locked\n"
    return proc


def test_postgres_advisory_lock_exclusive_and_released_on_abrupt_close(pg_dsn: str) -> None:
    import psycopg

    key = -(2**63) + 12345  # the full signed 64-bit range is usable
    holder = _hold_lock_forever(pg_dsn, key)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as other:
            assert other.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone() == (False,)
            # Same key is exclusive; a different key is independent.
            assert other.execute("SELECT pg_try_advisory_lock(%s)", (key + 1,)).fetchone() == (True,)
            holder.kill()  # SIGKILL: the connection dies without a goodbye
            holder.wait(10)
            deadline = time.monotonic() + 20
            got = False
            while time.monotonic() < deadline and not got:
                got = other.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone() == (True,)
                time.sleep(0.1)
            assert got, "advisory lock was not released after the holder died"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


def test_s3_conditional_writes(s3_client: Any, servers: Any, s3_prefix: str) -> None:
    bucket = servers.s3_bucket
    key = f"{s3_prefix}/race"
    results: list[str] = []
    barrier = threading.Barrier(8)

    def put(i: int) -> None:
        barrier.wait()
        try:
            s3_client.put_object(Bucket=bucket, Key=key, Body=f"writer-{i}".encode(), IfNoneMatch="*")
            results.append("won")
        except ClientError as exc:
            results.append(str(exc.response["ResponseMetadata"]["HTTPStatusCode"]))

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["412"] * 7 + ["won"]
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body.startswith(b"writer-")

    etag = s3_client.head_object(Bucket=bucket, Key=key)["ETag"]
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"second", IfMatch=etag)
    with pytest.raises(ClientError) as info:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"third", IfMatch=etag)  # stale ETag
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"second"
