"""``sr run`` as real processes: duplicates across two workers, and kill -9 mid-stream (points 2 and 7)."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.harness.evidence import EvidenceWriter
from tests.harness.kafka import read_topic, submit
from tests.harness.parallel import HEAVY
from tests.harness.probes import wait_for
from tests.harness.sr_env import SREnv, make_intent
from tests.harness.workers import start_worker_process, stop_process
from worker.adapters.postgres import RoundTripCounter, RunIndex
from worker.core.identity import run_id_of
from worker.core.keys import run_keys
from worker.runtime.compose import pg_config

# HEAVY (tests/harness/parallel.py): several worker processes under load, run one at a time.
pytestmark = [pytest.mark.integration, HEAVY]


def _stop_stats(log_path: Path) -> dict[str, Any]:
    """The counters a worker logs when it stops cleanly."""
    for line in reversed(log_path.read_text().splitlines()):
        if line.startswith("{") and '"worker stopped"' in line:
            data: dict[str, Any] = json.loads(line)
            return data
    raise AssertionError(f"no 'worker stopped' line in {log_path}:\n{log_path.read_text()[-3000:]}")


def test_fifty_duplicates_over_two_processes_make_one_ready(sr_env: SREnv, write_evidence: EvidenceWriter,
                                                            s3_client: Any, tmp_path: Path) -> None:
    write_evidence("dups")
    base = make_intent(sr_env, "dups")
    copies = [base.model_copy(update={"request_id": f"copy-{i}", "submitted_by": f"producer{i % 7}"})
              for i in range(50)]
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers = [start_worker_process(sr_env, log_path=p) for p in logs]
    try:
        # Random keys spread the copies over all partitions, so both workers see some.
        submit(sr_env, copies, key=lambda _i: uuid.uuid4().bytes)
        ready = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.ready,
                           until=lambda rs: len(rs) >= 1, timeout=90, settle=3.0)
        assert wait_for(lambda: _committed_all(sr_env, 50), timeout=60)
    finally:
        codes = [stop_process(w) for w in workers]
    assert codes == [0, 0]
    assert len(ready) == 1
    keys = run_keys(sr_env.settings.s3_prefix, base.tenant_id, base.namespace, run_id_of(base))
    objects = sorted(o["Key"][len(keys.root) + 1:] for page in s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=sr_env.bucket, Prefix=keys.root + "/") for o in page.get("Contents", []))
    assert objects == ["facts/" + sr_env.codec.decode_ready(ready[0].value or b"").facts_view_hash + ".json",
                       "plan.json", "record/000000000000.json"]
    stats = [_stop_stats(p) for p in logs]
    puts = sum(s["s3_requests"]["PUT"] for s in stats)
    print(f"\nworkers' S3 requests: {[s['s3_requests'] for s in stats]}; pg round trips: "
          f"{[s['pg_round_trips'] for s in stats]}")
    # The only S3 writes are the run's three objects: the 49 duplicates wrote nothing.
    assert puts == 3
    # Both workers took part (the copies were spread over partitions owned by both).
    assert all(s["pg_round_trips"] > 0 for s in stats)


def _committed_all(env: SREnv, total: int) -> bool:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": env.settings.kafka_bootstrap, "group.id": env.settings.group_id})
    try:
        md = consumer.list_topics(env.settings.topics.intents, timeout=10)
        topic = env.settings.topics.intents
        parts = [TopicPartition(topic, p) for p in md.topics[topic].partitions]
        committed = consumer.committed(parts, timeout=10)
        return sum(max(tp.offset, 0) for tp in committed) >= total
    finally:
        consumer.close()


# 150 runs share one evidence root to save writes: gate_6B unscoped (contract §4).
@pytest.mark.shared_evidence
def test_kill_9_mid_stream_loses_and_duplicates_nothing(sr_env: SREnv, write_evidence: EvidenceWriter,
                                                        tmp_path: Path) -> None:
    write_evidence("shared-complete")
    complete_root = sr_env.evidence_root("shared-complete")
    waiting_root = sr_env.evidence_root("nothing-here")
    intents = [make_intent(sr_env, f"k{i}", evidence_root=waiting_root if i % 5 == 4 else complete_root, seed=i)
               for i in range(150)]
    expect_ready = {run_id_of(i) for n, i in enumerate(intents) if n % 5 != 4}
    expect_waiting = {run_id_of(i) for n, i in enumerate(intents) if n % 5 == 4}
    assert len(expect_ready) == 120 and len(expect_waiting) == 30

    log = tmp_path / "worker.log"
    first = start_worker_process(sr_env, log_path=log)
    try:
        submit(sr_env, intents)
        seen = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.ready,
                          until=lambda rs: len(rs) >= 40, timeout=180)
        assert len(seen) >= 40, "worker made too little progress before the kill"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == -signal.SIGKILL

    second = start_worker_process(sr_env, log_path=log)
    try:
        ready = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.ready,
                           until=lambda rs: {r.key.decode() for r in rs if r.key} >= expect_ready,
                           timeout=300, settle=1.5)
        statuses = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.status,
                              until=lambda rs: {r.key.decode() for r in rs if r.key} >= expect_waiting, timeout=120)
    finally:
        assert stop_process(second) == 0

    by_fact: dict[tuple[bytes, bytes], set[tuple[bytes | None, bytes | None]]] = defaultdict(set)
    per_run: dict[str, set[bytes]] = defaultdict(set)
    for record in ready:
        header = record.header("sr-idempotency-key")
        assert record.key is not None and header is not None
        by_fact[(record.key, header)].add((record.key, record.value))
        per_run[record.key.decode()].add(header)
    assert set(per_run) == expect_ready, "a READY is missing or unexpected"
    assert all(len(v) == 1 for v in per_run.values()), "a run got two different facts"
    assert all(len(v) == 1 for v in by_fact.values()), "two READY records for one fact differ"
    resends = len(ready) - len(by_fact)
    print(f"\nkill -9: {len(ready)} READY records for {len(by_fact)} facts ({resends} byte-identical re-sends)")
    waiting = {r.key.decode() for r in statuses if r.key}
    assert waiting == expect_waiting
    with RunIndex(pg_config(sr_env.settings), RoundTripCounter()) as index:
        rows = index.list_runs(limit=1000)
    final = {r.run_id: r.status.value for r in rows}
    assert {k for k, v in final.items() if v == "READY"} == expect_ready
    assert {k for k, v in final.items() if v == "WAITING"} == expect_waiting
    assert not index_has_unpublished(sr_env)


def index_has_unpublished(env: SREnv) -> bool:
    with RunIndex(pg_config(env.settings), RoundTripCounter()) as index:
        return bool(index.unpublished(10))
