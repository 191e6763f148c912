"""The run authority on real Kafka, Postgres and S3 (issue: run authority core, points 1, 3, 4, 6)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.harness.evidence import (
    GATE_3A_MEMBERS,
    GATE_6B_MEMBERS,
    RECEIPT_NAME,
    EvidenceWriter,
    bundle_digest,
    instance_of,
    member_concat_digest_of,
    receipt_bytes,
)
from tests.harness.kafka import produce_raw, read_topic, submit
from tests.harness.sr_env import SREnv, make_intent, replace_intent
from tests.harness.workers import WorkerThread
from worker.adapters.postgres import RoundTripCounter, RunIndex
from worker.app.publisher import error_headers
from worker.core.identity import run_id_of
from worker.core.keys import parse_s3_uri, run_keys
from worker.core.models import ReadyEvent, RunStatusEvent, Strategy
from worker.runtime.compose import pg_config

pytestmark = pytest.mark.integration


def ready_events(env: SREnv, records: list[Any]) -> list[ReadyEvent]:
    return [env.codec.decode_ready(r.value) for r in records]


def status_events(env: SREnv, records: list[Any]) -> list[RunStatusEvent]:
    return [env.codec.decode_status(r.value) for r in records]


def read_status(env: SREnv, want: int, settle: float = 1.0) -> list[RunStatusEvent]:
    recs = read_topic(env.settings.kafka_bootstrap, env.settings.topics.status,
                      until=lambda rs: len(rs) >= want, timeout=60, settle=settle)
    return status_events(env, recs)


def test_complete_evidence_gives_exactly_one_verifiable_ready(sr_env: SREnv, write_evidence: EvidenceWriter,
                                                              s3_client: Any) -> None:
    write_evidence("complete")
    intent = make_intent(sr_env, "complete", outputs=("transactions",))
    worker = WorkerThread(sr_env).start()
    try:
        submit(sr_env, [intent])
        records = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.ready,
                             until=lambda rs: len(rs) >= 1, settle=2.0)
    finally:
        worker.stop()
    assert len(records) == 1
    record = records[0]
    event = sr_env.codec.decode_ready(record.value or b"")
    assert event.event_type.value == "READY"
    assert event.run_id == run_id_of(intent)
    assert record.key == event.run_id.encode()
    assert record.header("sr-idempotency-key") == f"{event.run_id}:{event.facts_view_hash}:READY".encode()

    loc = parse_s3_uri(event.facts_view_uri)
    body = s3_client.get_object(Bucket=loc.bucket, Key="/".join(loc.segments))["Body"].read()
    assert hashlib.sha256(body).hexdigest() == event.facts_view_hash
    view = json.loads(body)
    receipts = {r["gate_id"]: r for r in view["receipts"]}
    # transactions needs gate_6B, which depends on gate_3A: both methods are exercised.
    assert set(receipts) == {"gate_3A", "gate_6B"}
    assert receipts["gate_3A"]["method"] == "sha256_member_digest_concat"
    assert receipts["gate_3A"]["digest"] == member_concat_digest_of(GATE_3A_MEMBERS)
    assert receipts["gate_3A"]["member_count"] == 4
    assert receipts["gate_6B"]["method"] == "sha256_bundle_digest"
    # gate_6B is scoped: its receipt is a fifth member, covered by the digest, and what it proved is on record.
    proof = receipt_bytes("gate_6B", instance_of(intent))
    assert receipts["gate_6B"]["digest"] == bundle_digest({**GATE_6B_MEMBERS, RECEIPT_NAME: proof})
    assert receipts["gate_6B"]["member_count"] == 5
    assert receipts["gate_6B"]["bound"] == instance_of(intent) and receipts["gate_3A"]["bound"] == {}
    assert view["plan_hash"] == event.plan_hash


def test_failure_classes_never_ready(sr_env: SREnv, write_evidence: EvidenceWriter) -> None:
    write_evidence("missing6b", gates=("3A",))
    write_evidence("tampered6b", tamper="6B")
    write_evidence("tampered3a", tamper="3A")
    write_evidence("badflag", flag_6b=b"sha256_hex=not-a-digest\n")
    write_evidence("unknown-output")
    other_tenant_root = f"s3://{sr_env.bucket}/evidence/someoneelse/data"
    cases = {
        "missing6b": (make_intent(sr_env, "missing6b"), "WAITING", "EVIDENCE_MISSING"),
        "tampered6b": (make_intent(sr_env, "tampered6b"), "QUARANTINED", "DIGEST_MISMATCH"),
        "tampered3a": (make_intent(sr_env, "tampered3a", outputs=("accounts",)), "QUARANTINED", "DIGEST_MISMATCH"),
        "badflag": (make_intent(sr_env, "badflag"), "FAILED", "BAD_FLAG"),
        "unknown-output": (make_intent(sr_env, "unknown-output", outputs=("no_such_output",)), "FAILED",
                           "UNKNOWN_OUTPUT"),
        "other-tenant": (make_intent(sr_env, "other-tenant", evidence_root=other_tenant_root), "REJECTED",
                         "EVIDENCE_ROOT_FORBIDDEN"),
        "traversal": (make_intent(sr_env, "traversal",
                                  evidence_root=f"s3://{sr_env.bucket}/evidence/{sr_env.tenant}0/x"),
                      "REJECTED", "EVIDENCE_ROOT_FORBIDDEN"),
    }
    worker = WorkerThread(sr_env).start()
    try:
        submit(sr_env, [intent for intent, _, _ in cases.values()])
        statuses = read_status(sr_env, len(cases), settle=2.0)
    finally:
        worker.stop()
    got = {e.run_id: (e.status.value, e.reason_code) for e in statuses}
    for name, (intent, status, reason) in cases.items():
        assert got.get(run_id_of(intent)) == (status, reason), name
    assert len(statuses) == len(cases)
    # Fail closed: nothing became READY.
    assert read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.ready, timeout=2) == []
    # The rejected intents were copied to the DLQ with their reason.
    dlq = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.dlq,
                     until=lambda rs: len(rs) >= 2, timeout=30)
    assert sorted(error_headers(r.headers)["sr-error-class"] for r in dlq) == ["EVIDENCE_ROOT_FORBIDDEN"] * 2


def test_collision_is_rejected_and_leaves_the_run_untouched(sr_env: SREnv, write_evidence: EvidenceWriter,
                                                             s3_client: Any) -> None:
    write_evidence("base")
    original = make_intent(sr_env, "base")
    colliding = replace_intent(original, strategy=Strategy.AUTO, request_id="req-other")
    assert run_id_of(colliding) == run_id_of(original)
    worker = WorkerThread(sr_env).start()
    try:
        submit(sr_env, [original])
        ready_before = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.ready,
                                  until=lambda rs: len(rs) >= 1)
        with RunIndex(pg_config(sr_env.settings), RoundTripCounter()) as index:
            row_before = index.get(run_id_of(original))
        keys = run_keys(sr_env.settings.s3_prefix, original.tenant_id, original.namespace, run_id_of(original))
        objects_before = _objects(s3_client, sr_env.bucket, keys.root)

        submit(sr_env, [colliding])
        statuses = read_status(sr_env, 1)
        dlq = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.dlq, until=lambda rs: len(rs) >= 1)
    finally:
        worker.stop()
    assert [(e.status.value, e.reason_code) for e in statuses] == [("REJECTED", "EQUIV_KEY_COLLISION")]
    assert len(dlq) == 1
    headers = error_headers(dlq[0].headers)
    assert headers["sr-error-class"] == "EQUIV_KEY_COLLISION"
    assert headers["sr-source-topic"] == sr_env.settings.topics.intents
    assert dlq[0].value == sr_env.codec.encode_intent(colliding)  # the original bytes, untouched
    # Untouched: same single READY, same index row, same S3 objects byte for byte.
    ready_after = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.ready, timeout=3)
    assert [(r.key, r.value) for r in ready_after] == [(r.key, r.value) for r in ready_before]
    with RunIndex(pg_config(sr_env.settings), RoundTripCounter()) as index:
        row_after = index.get(run_id_of(original))
    assert row_before is not None and row_after is not None
    assert (row_after.status, row_after.facts_view_hash, row_after.ledger_seq, row_after.intent_fingerprint) == (
        row_before.status, row_before.facts_view_hash, row_before.ledger_seq, row_before.intent_fingerprint)
    assert _objects(s3_client, sr_env.bucket, keys.root) == objects_before


def _objects(client: Any, bucket: str, prefix: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = obj["ETag"]
    return found


def test_poison_messages_are_dead_lettered_and_the_partition_flows(sr_env: SREnv,
                                                                    write_evidence: EvidenceWriter) -> None:
    write_evidence("after-poison")
    good = make_intent(sr_env, "after-poison")
    valid = sr_env.codec.encode_intent(good)
    unknown_fp = b"\xc3\x01" + os.urandom(8) + valid[10:]
    poison = [
        # A first byte that is neither framing magic (0x00 Confluent, 0xc3 single-object): random
        # bytes starting with 0x00 decode as UNKNOWN_SCHEMA, which made this test fail 1 run in 256.
        ("RANDOM", b"\xff" + os.urandom(63)),
        ("TRUNCATED", valid[: len(valid) // 2]),
        ("UNKNOWN_FP", unknown_fp),
        ("OVERSIZE", b"\xc3\x01" + b"x" * (sr_env.settings.max_message_bytes + 1024)),
        ("EMPTY", b""),
    ]
    key = b"same-key-same-partition"
    produce_raw(sr_env, sr_env.settings.topics.intents, [(key, value) for _, value in poison] + [(key, valid)])
    worker = WorkerThread(sr_env).start()
    try:
        ready = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.ready,
                           until=lambda rs: len(rs) >= 1)
        dlq = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.dlq,
                         until=lambda rs: len(rs) >= len(poison), settle=1.0)
        time.sleep(1.0)
    finally:
        worker.stop()
    assert [sr_env.codec.decode_ready(r.value or b"").run_id for r in ready] == [run_id_of(good)]
    assert len(dlq) == len(poison)
    classes: Counter[str] = Counter()
    offsets = []
    for record in dlq:
        headers = error_headers(record.headers)
        assert set(headers) >= {"sr-error-class", "sr-error-message", "sr-source-topic", "sr-source-partition",
                                "sr-source-offset"}
        assert headers["sr-source-topic"] == sr_env.settings.topics.intents
        assert record.key == key
        classes[headers["sr-error-class"]] += 1
        offsets.append(int(headers["sr-source-offset"]))
    assert sorted(offsets) == list(range(len(poison)))
    assert classes["MESSAGE_TOO_LARGE"] == 1
    assert classes["UNKNOWN_SCHEMA"] == 1
    # Originals are preserved byte for byte in the DLQ.
    assert sorted(r.value or b"" for r in dlq) == sorted(v for _, v in poison)
    # Offsets were committed past the poison and the good message.
    partition = dlq[0].header("sr-source-partition")
    assert partition is not None
    consumer = Consumer({"bootstrap.servers": sr_env.settings.kafka_bootstrap,
                         "group.id": sr_env.settings.group_id})
    try:
        committed = consumer.committed([TopicPartition(sr_env.settings.topics.intents, int(partition))], timeout=10)
    finally:
        consumer.close()
    assert committed[0].offset == len(poison) + 1
