"""Avro as other libraries speak it (contract §2), against a real worker on real servers: an intent
and a trigger single-object-encoded by the official Apache Avro library (its own fingerprint), an
intent of the previous RunIntent version, SR's READY and status events read back with that
library, and every keyed event SR publishes on the partition the Java client's murmur2 picks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.harness.evidence import EvidenceWriter
from tests.harness.kafka import produce_raw, read_topic
from tests.harness.official_avro import avro_decode, avro_encode, avro_schema, with_datetimes
from tests.harness.probes import wait_for
from tests.harness.sr_env import SREnv, make_intent
from tests.harness.workers import WorkerThread
from tests.integration.test_engine_orchestration import ledger_kinds, row
from worker.adapters.avro import default_schema_dir
from worker.core.identity import run_id_of
from worker.core.models import RunTrigger, Strategy, TriggerKind
from worker.core.partitioning import partition_for

pytestmark = pytest.mark.integration

PARTITIONS = 4  # build_env's default for every keyed topic


def test_the_official_avro_library_talks_to_sr(sr_env: SREnv, write_evidence: EvidenceWriter) -> None:
    settings, codec = sr_env.settings, sr_env.codec
    late = make_intent(sr_env, "interop-late")  # REUSE, evidence not there yet: WAITING
    old = make_intent(sr_env, "interop-v1", strategy=Strategy.AUTO)  # sent as RunIntent version 1 (no strategy)
    write_evidence("interop-v1")
    intent_schema = avro_schema("RunIntent")
    old_schema = avro_schema("RunIntent", default_schema_dir() / "history" / "RunIntent.v1.avsc")
    old_datum = with_datetimes(old.to_avro())
    del old_datum["strategy"]
    # The sweeper is slowed down so that only the trigger can move the waiting run.
    worker = WorkerThread(sr_env, sweep_interval=3600).start()
    try:
        produce_raw(sr_env, settings.topics.intents, [
            (run_id_of(late).encode(), avro_encode(intent_schema, with_datetimes(late.to_avro()))),
            (b"any-key", avro_encode(old_schema, old_datum)),
        ])
        assert wait_for(lambda: row(sr_env, late) == ("WAITING", "EVIDENCE_MISSING")
                        and row(sr_env, old) == ("READY", None), timeout=60), (row(sr_env, late), row(sr_env, old))
        write_evidence("interop-late")
        trigger = RunTrigger(run_id=run_id_of(late), kind=TriggerKind.EVIDENCE_ARRIVED, reason="upload finished",
                             requested_by="loader", requested_at=datetime.now(UTC))
        frame = avro_encode(avro_schema("RunTrigger"), with_datetimes(trigger.to_avro()))
        produce_raw(sr_env, settings.topics.triggers, [(run_id_of(late).encode(), frame)])
        assert wait_for(lambda: row(sr_env, late) == ("READY", None), timeout=60), row(sr_env, late)
    finally:
        worker.stop()
    assert "TRIGGER" in ledger_kinds(sr_env, late)
    dlq = read_topic(settings.kafka_bootstrap, settings.topics.dlq, timeout=2)
    assert dlq == [], [dict(r.headers) for r in dlq]

    # Downstream, with the same library: READY and status events decode, keyed by run_id.
    ready = read_topic(settings.kafka_bootstrap, settings.topics.ready, until=lambda rs: len(rs) >= 2, timeout=30)
    status = read_topic(settings.kafka_bootstrap, settings.topics.status, until=lambda rs: len(rs) >= 1, timeout=30)
    fingerprints = codec.fingerprints()
    accepted = {name: {bytes.fromhex(r.hex) for r in fingerprints if r.record == name}
                for name in ("ReadyEvent", "RunStatusEvent")}
    ready_data = [avro_decode(avro_schema("ReadyEvent"), r.value or b"", accepted["ReadyEvent"]) for r in ready]
    assert sorted(d["run_id"] for d in ready_data) == sorted([run_id_of(late), run_id_of(old)])
    assert {d["event_type"] for d in ready_data} == {"READY"}
    status_data = [avro_decode(avro_schema("RunStatusEvent"), r.value or b"", accepted["RunStatusEvent"])
                   for r in status]
    assert [(d["run_id"], d["status"], d["reason_code"]) for d in status_data] == [
        (run_id_of(late), "WAITING", "EVIDENCE_MISSING")]
    assert all(d["emitted_at"].tzinfo is not None for d in status_data)
    # The version-1 intent is the run a current intent would be (same run_id, strategy AUTO).
    assert run_id_of(codec.decode_intent(avro_encode(old_schema, old_datum))) == run_id_of(old)

    # Every keyed record SR produced sits on the partition murmur2 assigns to its key.
    for record in [*ready, *status]:
        assert record.key is not None
        assert record.partition == partition_for(record.key, PARTITIONS), (record.key, record.partition)
    assert len({r.partition for r in ready}) >= 1


# kafka-python 3 loads its protocol schemas with a deprecated importlib.resources call.
@pytest.mark.filterwarnings(r"ignore:.*is deprecated\. Use files\(\) instead:DeprecationWarning")
def test_keys_land_where_the_java_partitioner_puts_them(sr_env: SREnv) -> None:
    """200 keys on Tansu, sent by SR's producer and by kafka-python (whose default partitioner is
    the Java client's murmur2): each key is stored on the same partition by both, the one
    ``partition_for`` computes."""
    from kafka import KafkaProducer

    topic = sr_env.settings.topics.triggers
    keys = [f"{i:032x}".encode() for i in range(200)]
    produce_raw(sr_env, topic, [(k, b"sr") for k in keys])
    other = KafkaProducer(bootstrap_servers=sr_env.settings.kafka_bootstrap, acks="all")
    try:
        for future in [other.send(topic, key=k, value=b"kafka-python") for k in keys]:
            future.get(timeout=30)
    finally:
        other.close(timeout=10)
    records = read_topic(sr_env.settings.kafka_bootstrap, topic, until=lambda rs: len(rs) >= 2 * len(keys),
                         timeout=30)
    placed: dict[bytes, dict[bytes, int]] = {}
    for r in records:
        placed.setdefault(r.value or b"", {})[r.key or b""] = r.partition
    assert sorted(placed) == [b"kafka-python", b"sr"]
    assert placed[b"sr"] == placed[b"kafka-python"] == {k: partition_for(k, PARTITIONS) for k in keys}
    assert set(placed[b"sr"].values()) == set(range(PARTITIONS))
