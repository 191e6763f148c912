"""The join surface downstream (contract §9) on real servers: ``sr follow`` and the client's READY
follower hand over each run's current fact once per change, verified, and refuse a facts view that
was changed in S3."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.harness.evidence import GATE_6B_MEMBERS, EvidenceWriter, instance_of, receipt_bytes, upload_bundle_gate
from tests.harness.kafka import produce_raw, read_topic, submit
from tests.harness.probes import wait_for
from tests.harness.sr_env import SREnv, make_intent
from tests.harness.workers import WorkerThread, sr_binary
from tests.integration.test_engine_orchestration import row
from worker.client import ReadyFollower, VerifiedFact, submit_many
from worker.core.identity import run_id_of
from worker.core.keys import parse_s3_uri
from worker.core.models import RunTrigger, TriggerKind

pytestmark = pytest.mark.integration

CORRECTED_6B = {**GATE_6B_MEMBERS, "transactions/part-0000.csv": b"tx_id,account_id,amount\n1,1,11\n"}


def sr(env: SREnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sr_binary(), *args], env=env.env(), capture_output=True, text=True, timeout=120,
                          check=False)


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_follow_hands_each_current_fact_once_and_refuses_a_changed_facts_view(
    sr_env: SREnv, write_evidence: EvidenceWriter, s3_client: Any,
) -> None:
    settings = sr_env.settings
    steady, corrected = make_intent(sr_env, "steady"), make_intent(sr_env, "corrected")
    write_evidence("steady")
    write_evidence("corrected")
    worker = WorkerThread(sr_env).start()
    try:
        assert submit_many([steady, corrected], settings) == [run_id_of(steady), run_id_of(corrected)]
        assert wait_for(lambda: row(sr_env, steady) == row(sr_env, corrected) == ("READY", None), timeout=60)
        # A re-send of steady's READY and a correction of the other run: SUPERSEDE + READY(new).
        upload_bundle_gate(s3_client, sr_env.bucket, sr_env.evidence_prefix("corrected"), "gates/6B", CORRECTED_6B,
                           receipt=receipt_bytes("gate_6B", instance_of(corrected)))
        triggers = [RunTrigger(run_id=run_id_of(i), kind=k, reason="test", requested_by="ops",
                               requested_at=i.submitted_at)
                    for i, k in ((steady, TriggerKind.REEMIT), (corrected, TriggerKind.SUPERSEDE))]
        produce_raw(sr_env, settings.topics.triggers,
                    [(t.run_id.encode(), sr_env.codec.encode_trigger(t)) for t in triggers])
        events = read_topic(settings.kafka_bootstrap, settings.topics.ready, until=lambda rs: len(rs) >= 5,
                            timeout=60, settle=1.0)
    finally:
        worker.stop()
    assert len(events) == 5  # READY x2, the re-send, SUPERSEDE, READY(new)

    raw = sr(sr_env, "follow", "ready", "--until-end", "-o", "jsonl")
    assert raw.returncode == 0, raw.stderr[-2000:]
    assert sorted(e["event_type"] for e in jsonl(raw.stdout)) == ["READY", "READY", "READY", "READY", "SUPERSEDE"]

    verified = sr(sr_env, "follow", "ready", "--from", "beginning", "--until-end", "-o", "jsonl", "--verify")
    assert verified.returncode == 0, verified.stderr[-2000:]
    facts = jsonl(verified.stdout)
    # steady once (its re-send dropped), corrected twice: its first fact, then the corrected one.
    assert [(f["run_id"], f["verified"]) for f in facts].count((run_id_of(steady), True)) == 1
    changes = [f for f in facts if f["run_id"] == run_id_of(corrected)]
    assert len(changes) == 2 and changes[1]["supersedes_facts_view_hash"] == changes[0]["facts_view_hash"]
    assert all(f["facts_view"]["outputs"][0]["output_id"] == "transactions" for f in facts)
    table = sr(sr_env, "follow", "ready", "--until-end", "--verify")
    assert table.returncode == 0 and len(table.stdout.splitlines()) == 3

    # Someone overwrites steady's facts view in S3: the follower names the run and exits 1.
    steady_fact = next(f for f in facts if f["run_id"] == run_id_of(steady))
    where = parse_s3_uri(steady_fact["facts_view_uri"])
    body = s3_client.get_object(Bucket=where.bucket, Key=where.prefix)["Body"].read()
    s3_client.put_object(Bucket=where.bucket, Key=where.prefix, Body=body.replace(b'"seed":1', b'"seed":2'))
    tampered = sr(sr_env, "follow", "ready", "--until-end", "-o", "jsonl", "--verify")
    assert tampered.returncode == 1
    assert run_id_of(steady) in tampered.stderr and "does not verify" in tampered.stderr
    assert {f["run_id"] for f in jsonl(tampered.stdout)} == {run_id_of(corrected)}

    # The client in group mode: handed facts are committed; the same group sees nothing again.
    seen: list[VerifiedFact] = []

    def errors(event: Any, exc: Exception) -> None:
        seen.append(event)  # the tampered run: reported, never handed as a fact

    with ReadyFollower(settings, group=f"{settings.group_id}-downstream", on_mismatch=errors) as follower:
        follower.run(seen.append, stop=lambda: len(seen) >= 3)
    handed = [f for f in seen if isinstance(f, VerifiedFact)]
    assert [f.run_id for f in handed] == [run_id_of(corrected)] * 2
    assert all(f.facts_view is not None and f.facts_view.run_id == f.run_id for f in handed)
    again: list[VerifiedFact] = []
    with ReadyFollower(settings, group=f"{settings.group_id}-downstream", on_mismatch=errors) as follower:
        rounds = iter(range(8))
        follower.run(again.append, stop=lambda: next(rounds, None) is None)
    assert again == []


def test_follow_status_and_dlq_print_decoded_events(sr_env: SREnv) -> None:
    settings = sr_env.settings
    waiting = make_intent(sr_env, "follow-waiting")
    worker = WorkerThread(sr_env).start()
    try:
        submit(sr_env, [waiting])
        produce_raw(sr_env, settings.topics.intents, [(b"poison", b"\xc3\x01" + b"\x00" * 12)])
        assert wait_for(lambda: row(sr_env, waiting) == ("WAITING", "EVIDENCE_MISSING"), timeout=60)
        assert read_topic(settings.kafka_bootstrap, settings.topics.dlq, until=lambda rs: len(rs) >= 1, timeout=30)
    finally:
        worker.stop()
    status = sr(sr_env, "follow", "status", "--until-end", "-o", "jsonl")
    assert status.returncode == 0, status.stderr[-2000:]
    assert [(e["run_id"], e["status"], e["reason_code"]) for e in jsonl(status.stdout)] == [
        (run_id_of(waiting), "WAITING", "EVIDENCE_MISSING")]
    dlq = sr(sr_env, "follow", "dlq", "--until-end")
    assert dlq.returncode == 0 and "UNKNOWN_SCHEMA" in dlq.stdout and "poison" in dlq.stdout, dlq.stdout
    bad = sr(sr_env, "follow", "status", "--from", "yesterday")
    assert bad.returncode == 2 and bad.stderr.startswith("sr: error: --from")
