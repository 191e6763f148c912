"""Who may do what, and recovery without mutation (contract §10, §11), on a real worker and real
servers: the signature matrix for intents, triggers and engine results (unsigned, another
principal's key, a flipped bit, an unknown key id, rotation), RETRY of a quarantined run and its
refusals, revocation of a READY whose evidence was tampered with, and what re-emission sends after
it."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable
from datetime import UTC, datetime

import pytest

from tests.harness.evidence import EvidenceWriter
from tests.harness.kafka import read_topic
from tests.harness.probes import wait_for
from tests.harness.sr_env import SREnv, make_intent
from tests.harness.workers import WorkerThread, sr_binary
from tests.integration.test_engine_orchestration import ledger_kinds, requests_for, row
from worker.adapters.kafka import EventProducer
from worker.core.engine import EngineResult, EngineStatus
from worker.core.identity import run_id_of
from worker.core.models import EventType, RunIntent, RunTrigger, Strategy, TriggerKind
from worker.core.partitioning import partition_for
from worker.core.signatures import SIGNATURE_HEADER
from worker.core.vocabulary import EVIDENCE_CONTRADICTS_READY
from worker.runtime.compose import kafka_config
from worker.signing import Signer, key_set

pytestmark = pytest.mark.integration

Item = tuple[bytes, bytes, dict[str, bytes]]


def produce(env: SREnv, topic: str, items: Iterable[Item]) -> None:
    """Produce (key, value, headers) records and wait for every ack."""
    with EventProducer(kafka_config(env.settings)) as producer:
        for future in [producer.send(topic, key=k, value=v, headers=list(h.items())) for k, v, h in items]:
            future.result(60)


def flipped(signer: Signer, value: bytes) -> dict[str, bytes]:
    """A header by ``signer`` over ``value`` with one bit of the signature flipped."""
    header = bytearray(signer.signature_header(value))
    header[-5] ^= 0x01
    return {SIGNATURE_HEADER: bytes(header)}


def s3_requests(worker: WorkerThread) -> float:
    """S3 request attempts the worker made so far (its own metrics)."""
    return sum(sample.value for metric in worker.worker.metrics.registry.collect()
               for sample in metric.samples if sample.name == "sr_s3_request_duration_seconds_count")


def dlq_classes(env: SREnv, want: int) -> list[tuple[str, bytes]]:
    records = read_topic(env.settings.kafka_bootstrap, env.settings.topics.dlq, until=lambda rs: len(rs) >= want,
                         timeout=60, settle=1.0)
    return [(r.topic, dict(r.headers)["sr-error-class"]) for r in records]


def trigger(intent: RunIntent, kind: TriggerKind, by: str, reason: str = "test") -> RunTrigger:
    # A trigger is identified by who asked for what, when (ms): no two of these share a ms.
    time.sleep(0.002)
    return RunTrigger(run_id=run_id_of(intent), kind=kind, reason=reason, requested_by=by,
                      requested_at=datetime.now(UTC))


@pytest.mark.timeout(240)
def test_the_signature_matrix_on_a_real_worker(sr_env: SREnv, write_evidence: EvidenceWriter) -> None:
    env, codec, topics = sr_env, sr_env.codec, sr_env.settings.topics
    a_old, a_new, b = Signer.generate(env.tenant), Signer.generate(env.tenant), Signer.generate("tenant-b")
    ops_old, ops_new, eve = Signer.generate("ops"), Signer.generate("ops"), Signer.generate("eve")
    engine, other_engine = Signer.generate("ref-engine"), Signer.generate("other-engine")
    stranger = Signer.generate(env.tenant, key_id="never-listed")
    worker = WorkerThread(env, sweep_interval=3600,
                          signing_keys=json.dumps(key_set(a_old, a_new, b)),
                          operator_keys=json.dumps(key_set(ops_old, ops_new, eve)),
                          engine_keys=json.dumps(key_set(engine, other_engine))).start()
    try:
        # --- intents: four refusals first, with the worker's S3 request count before and after.
        bad = {name: make_intent(env, name) for name in ("unsigned", "other-tenant", "flipped", "unknown-key")}
        values = {name: codec.encode_intent(intent) for name, intent in bad.items()}
        headers = {"unsigned": {}, "other-tenant": b.headers_for(values["other-tenant"]),
                   "flipped": flipped(a_new, values["flipped"]),
                   "unknown-key": stranger.headers_for(values["unknown-key"])}
        before = s3_requests(worker)
        produce(env, topics.intents, [(run_id_of(bad[n]).encode(), values[n], headers[n]) for n in bad])
        assert dlq_classes(env, 4) == [(topics.dlq, b"UNAUTHENTICATED")] * 4
        assert s3_requests(worker) == before  # checked before any evidence read
        assert all(row(env, intent) is None for intent in bad.values())  # and before any index write
        # Rotation: the tenant's old and new keys both verify.
        good = {signer.key_id: make_intent(env, f"good-{i}") for i, signer in enumerate((a_old, a_new))}
        for i in range(2):
            write_evidence(f"good-{i}")
        produce(env, topics.intents, [
            (run_id_of(intent).encode(), value, signer.headers_for(value))
            for signer, intent in zip((a_old, a_new), good.values(), strict=True)
            for value in [codec.encode_intent(intent)]])
        assert wait_for(lambda: all(row(env, i) == ("READY", None) for i in good.values()), timeout=60)
        run = next(iter(good.values()))

        # --- triggers: REEMIT must be signed by the operator it names.
        def frame(t: RunTrigger) -> bytes:
            return codec.encode_trigger(t)

        refused = [trigger(run, TriggerKind.REEMIT, "ops", reason=f"bad-{i}") for i in range(4)]
        produce(env, topics.triggers, [
            (run_id_of(run).encode(), frame(refused[0]), {}),
            (run_id_of(run).encode(), frame(refused[1]), eve.headers_for(frame(refused[1]))),
            (run_id_of(run).encode(), frame(refused[2]), flipped(ops_new, frame(refused[2]))),
            (run_id_of(run).encode(), frame(refused[3]), Signer.generate("ops").headers_for(frame(refused[3]))),
        ])
        assert dlq_classes(env, 8).count((topics.dlq, b"UNAUTHENTICATED")) == 8
        assert ledger_kinds(env, run) == ["READY"]  # nothing recorded for a refused signature
        accepted = [trigger(run, TriggerKind.REEMIT, "ops", reason=signer.key_id) for signer in (ops_old, ops_new)]
        produce(env, topics.triggers, [(run_id_of(run).encode(), frame(t), s.headers_for(frame(t)))
                                       for t, s in zip(accepted, (ops_old, ops_new), strict=True)])
        assert wait_for(lambda: ledger_kinds(env, run) == ["READY", "TRIGGER", "TRIGGER"], timeout=60), \
            ledger_kinds(env, run)
        ready = read_topic(env.settings.kafka_bootstrap, topics.ready, until=lambda rs: len(rs) >= 4, timeout=60)
        assert len([r for r in ready if r.key == run_id_of(run).encode()]) == 3  # READY + two re-sends

        # --- engine results: signed by the engine named in reported_by.
        invoked = make_intent(env, "engine-run", strategy=Strategy.INVOKE)
        value = codec.encode_intent(invoked)
        produce(env, topics.intents, [(run_id_of(invoked).encode(), value, a_new.headers_for(value))])
        [request] = requests_for(env, 1)
        write_evidence("engine-run", instance=invoked)
        result = EngineResult(attempt_id=request.attempt_id, run_id=request.run_id, status=EngineStatus.SUCCEEDED,
                              detail="", reported_by="ref-engine", finished_at=datetime.now(UTC))
        body = codec.encode_engine_result(result)
        produce(env, topics.engine_results, [
            (request.run_id.encode(), body, {}),
            (request.run_id.encode(), body, other_engine.headers_for(body)),
            (request.run_id.encode(), body, flipped(engine, body)),
            (request.run_id.encode(), body, Signer.generate("ref-engine").headers_for(body)),  # unknown key id
        ])
        assert dlq_classes(env, 12).count((topics.dlq, b"UNAUTHENTICATED")) == 12
        assert "ENGINE_RESULT" not in ledger_kinds(env, invoked)
        produce(env, topics.engine_results, [(request.run_id.encode(), body, engine.headers_for(body))])
        assert wait_for(lambda: row(env, invoked) == ("READY", None), timeout=60), row(env, invoked)
    finally:
        worker.stop()
    rejected = [codec.decode_status(r.value or b"") for r in read_topic(
        env.settings.kafka_bootstrap, topics.status, until=lambda rs: len(rs) >= 5, timeout=30)]
    assert [(s.status.value, s.reason_code) for s in rejected if s.status.value == "REJECTED"] == \
        [("REJECTED", "UNAUTHENTICATED")] * 4


def sr(env: SREnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sr_binary(), *args], env={**env.env(), "SR_OPERATORS": "ops"}, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.timeout(240)
def test_retry_and_revocation_on_a_real_worker(sr_env: SREnv, write_evidence: EvidenceWriter) -> None:
    env, codec, topics = sr_env, sr_env.codec, sr_env.settings.topics
    quarantined, ready = make_intent(env, "q"), make_intent(env, "r")
    write_evidence("q", tamper="6B")
    write_evidence("r")
    worker = WorkerThread(env, sweep_interval=3600, operators=["ops"]).start()

    def send(*triggers: RunTrigger) -> None:
        produce(env, topics.triggers, [(t.run_id.encode(), codec.encode_trigger(t), {}) for t in triggers])

    try:
        produce(env, topics.intents, [(run_id_of(i).encode(), codec.encode_intent(i), {})
                                      for i in (quarantined, ready)])
        assert wait_for(lambda: row(env, quarantined) == ("QUARANTINED", "DIGEST_MISMATCH")
                        and row(env, ready) == ("READY", None), timeout=60), (row(env, quarantined), row(env, ready))
        # RETRY by someone outside SR_OPERATORS, and RETRY of a READY run: refused, on record.
        write_evidence("q")  # the evidence is fixed
        send(trigger(quarantined, TriggerKind.RETRY, "mallory"), trigger(ready, TriggerKind.RETRY, "ops"))
        assert wait_for(lambda: ledger_kinds(env, quarantined)[-1:] == ["TRIGGER"]
                        and ledger_kinds(env, ready)[-1:] == ["TRIGGER"], timeout=60)
        assert row(env, quarantined)[0] == "QUARANTINED" and row(env, ready) == ("READY", None)  # type: ignore[index]
        # RETRY by an authorized operator: READY, the quarantine still in the ledger.
        send(trigger(quarantined, TriggerKind.RETRY, "ops"))
        assert wait_for(lambda: row(env, quarantined) == ("READY", None), timeout=60), row(env, quarantined)
        assert ledger_kinds(env, quarantined) == ["QUARANTINED", "TRIGGER", "TRIGGER", "RETRIED", "READY"]

        # Revocation: tamper with the READY run's member, REEVALUATE.
        write_evidence("r", tamper="6B")
        send(trigger(ready, TriggerKind.REEVALUATE, "auditor"))
        assert wait_for(lambda: row(env, ready) == ("QUARANTINED", EVIDENCE_CONTRADICTS_READY), timeout=60)
    finally:
        worker.stop()
    assert ledger_kinds(env, ready) == ["READY", "TRIGGER", "TRIGGER", "REVOKED"]
    key = run_id_of(ready).encode()

    def facts() -> list[tuple[EventType, str]]:
        records = read_topic(env.settings.kafka_bootstrap, topics.ready, until=lambda rs: len(rs) >= 3, timeout=30)
        return [(e.event_type, e.facts_view_hash) for e in
                (codec.decode_ready(r.value or b"") for r in records if r.key == key)]

    revoked_fact = facts()
    assert [kind for kind, _ in revoked_fact] == [EventType.READY, EventType.REVOKED]  # after the READY it revokes
    assert revoked_fact[0][1] == revoked_fact[1][1]
    status = [codec.decode_status(r.value or b"") for r in read_topic(
        env.settings.kafka_bootstrap, topics.status, until=lambda rs: len(rs) >= 2, timeout=30) if r.key == key]
    assert [(s.status.value, s.reason_code) for s in status] == [("QUARANTINED", EVIDENCE_CONTRADICTS_READY)]
    # Re-emission afterwards never re-sends the revoked READY as current.
    reemit = sr(env, "reemit", run_id_of(ready), "--operator", "ops")
    assert reemit.returncode != 0 and "not READY" in reemit.stderr, reemit.stderr
    replayed = sr(env, "replay", "--topic", topics.ready, "--partition", str(partition_for(key, 4)),
                  "--idle-timeout", "1", "--operator", "ops", "--json")
    assert replayed.returncode == 0, replayed.stderr
    after = facts()
    assert after[: len(revoked_fact)] == revoked_fact
    assert all(kind is not EventType.READY for kind, _ in after[len(revoked_fact):]), after
