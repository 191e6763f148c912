"""Run lifecycle: triggers, sweeper, deadlines, supersede, replay, index rebuild (issue: lifecycle, 1–4)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import pytest

from tests.harness.evidence import (
    GATE_3A_MEMBERS,
    GATE_6B_MEMBERS,
    EvidenceWriter,
    instance_of,
    receipt_bytes,
    upload_bundle_gate,
    upload_member_concat_gate,
)
from tests.harness.kafka import read_topic, submit
from tests.harness.paths import shared_evidence_policy
from tests.harness.probes import wait_for
from tests.harness.servers import Servers
from tests.harness.sr_env import SREnv, build_env, make_intent
from tests.harness.workers import WorkerThread
from worker.adapters.postgres import RoundTripCounter, RunIndex
from worker.core.identity import run_id_of
from worker.core.keys import run_keys
from worker.runtime.compose import pg_config

pytestmark = pytest.mark.integration

SR = str(Path(sys.executable).parent / "sr")


def sr_cli(env: SREnv, *args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc_env = env.env()
    proc_env.update(extra or {})
    return subprocess.run([SR, *args], env=proc_env, capture_output=True, text=True, timeout=180)


def run_status(env: SREnv, run_id: str) -> str | None:
    with RunIndex(pg_config(env.settings), RoundTripCounter()) as index:
        row = index.get(run_id)
    return None if row is None else row.status.value


def ready_records(env: SREnv, want: int, settle: float = 1.0, timeout: float = 90) -> list[Any]:
    return read_topic(env.settings.kafka_bootstrap, env.settings.topics.ready, until=lambda rs: len(rs) >= want,
                      timeout=timeout, settle=settle)


def test_evidence_arrived_trigger_completes_a_waiting_run(sr_env: SREnv, write_evidence: EvidenceWriter) -> None:
    intent = make_intent(sr_env, "by-trigger")
    run_id = run_id_of(intent)
    # Re-checks are far away: only the trigger can move this run now.
    worker = WorkerThread(sr_env, recheck_interval=600.0, sweep_interval=0.5).start()
    try:
        submit(sr_env, [intent])
        assert wait_for(lambda: run_status(sr_env, run_id) == "WAITING", timeout=60)
        write_evidence("by-trigger")
        assert len(ready_records(sr_env, 1, settle=0, timeout=2)) == 0
        res = sr_cli(sr_env, "trigger", run_id, "--kind", "EVIDENCE_ARRIVED", "--reason", "upload finished",
                     "--requested-by", "uploader")
        assert res.returncode == 0, res.stderr
        ready = ready_records(sr_env, 1, settle=1.0)
    finally:
        worker.stop()
    assert [sr_env.codec.decode_ready(r.value).run_id for r in ready] == [run_id]
    # The trigger is on record in the ledger with who asked, between WAITING and READY.
    status = sr_cli(sr_env, "status", run_id, "--json")
    ledger = json.loads(status.stdout)["ledger"]
    assert [e["kind"] for e in ledger] == ["WAITING", "TRIGGER", "READY"]
    assert ledger[1]["body"]["requested_by"] == "uploader"
    assert ledger[1]["body"]["kind"] == "EVIDENCE_ARRIVED"


def test_sweeper_picks_up_evidence_and_fails_expired_deadlines(sr_env: SREnv,
                                                               write_evidence: EvidenceWriter) -> None:
    by_sweeper = make_intent(sr_env, "by-sweeper")
    expiring = make_intent(sr_env, "expiring", deadline=datetime.now(UTC) + timedelta(seconds=10))
    worker = WorkerThread(sr_env, recheck_interval=1.0, sweep_interval=0.5).start()
    try:
        submit(sr_env, [by_sweeper, expiring])
        assert wait_for(lambda: run_status(sr_env, run_id_of(by_sweeper)) == "WAITING", timeout=60)
        # Evidence lands and nobody says so: the sweeper's re-check finds it.
        write_evidence("by-sweeper")
        ready = ready_records(sr_env, 1, settle=0.5)
        assert [sr_env.codec.decode_ready(r.value).run_id for r in ready] == [run_id_of(by_sweeper)]
        # The expiring run has no evidence: at its deadline the sweeper fails it.
        assert wait_for(lambda: run_status(sr_env, run_id_of(expiring)) == "FAILED", timeout=30)
        # Evidence that arrives too late changes nothing: FAILED stays FAILED, never READY.
        write_evidence("expiring")
        assert sr_cli(sr_env, "trigger", run_id_of(expiring), "--kind", "EVIDENCE_ARRIVED").returncode == 0
        statuses = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.status, timeout=2.5)
    finally:
        worker.stop()
    decoded = [sr_env.codec.decode_status(r.value or b"") for r in statuses]
    expiring_events = [(e.status.value, e.reason_code) for e in decoded if e.run_id == run_id_of(expiring)]
    assert expiring_events == [("WAITING", "EVIDENCE_MISSING"), ("FAILED", "EVIDENCE_MISSING_DEADLINE")]
    assert run_status(sr_env, run_id_of(expiring)) == "FAILED"
    assert len(ready_records(sr_env, 2, settle=0, timeout=2)) == 1


def _objects(client: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return found


def test_supersede_emits_supersede_then_ready_and_never_mutates(sr_env: SREnv, write_evidence: EvidenceWriter,
                                                                  s3_client: Any) -> None:
    write_evidence("corrected")
    intent = make_intent(sr_env, "corrected")
    run_id = run_id_of(intent)
    keys = run_keys(sr_env.settings.s3_prefix, intent.tenant_id, intent.namespace, run_id)
    worker = WorkerThread(sr_env).start()
    try:
        submit(sr_env, [intent])
        first = ready_records(sr_env, 1)
        before = _objects(s3_client, sr_env.bucket, keys.root)
        # A SUPERSEDE with unchanged evidence changes nothing.
        assert sr_cli(sr_env, "trigger", run_id, "--kind", "SUPERSEDE", "--reason", "noop").returncode == 0
        assert len(ready_records(sr_env, 2, settle=0, timeout=2)) == 1
        # The producer corrects the data: new members, new flags.
        root = sr_env.evidence_prefix("corrected")
        fixed_3a = {**GATE_3A_MEMBERS, "accounts/part-0001.csv": b"account_id,balance\n3,76\n"}
        fixed_6b = {**GATE_6B_MEMBERS, "transactions/part-0002.csv": b"tx_id,account_id,amount\n3,3,43\n"}
        upload_member_concat_gate(s3_client, sr_env.bucket, root, "gates/3A", fixed_3a)
        upload_bundle_gate(s3_client, sr_env.bucket, root, "gates/6B", fixed_6b,
                           receipt=receipt_bytes("gate_6B", instance_of(intent)))
        assert sr_cli(sr_env, "trigger", run_id, "--kind", "SUPERSEDE", "--reason", "restated").returncode == 0
        records = ready_records(sr_env, 3, settle=1.5)
    finally:
        worker.stop()
    assert len(records) == 3
    assert [r.key for r in records] == [run_id.encode()] * 3
    events = [sr_env.codec.decode_ready(r.value) for r in records]
    old = events[0].facts_view_hash
    assert [e.event_type.value for e in events] == ["READY", "SUPERSEDE", "READY"]
    assert events[1].supersedes_facts_view_hash == old and events[1].facts_view_hash != old
    assert events[2].facts_view_hash == events[1].facts_view_hash
    assert events[2].supersedes_facts_view_hash == old
    assert records[0].value == first[0].value
    # Every artifact that existed before is byte-for-byte unchanged; only new keys were added.
    after = _objects(s3_client, sr_env.bucket, keys.root)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {keys.facts(events[1].facts_view_hash), keys.record(1), keys.record(2),
                                        keys.record(3), keys.record(4)}
    assert run_status(sr_env, run_id) == "READY"

    # `sr reemit` re-publishes the *current* READY, byte-identical, for authorized operators only.
    ops = {"SR_OPERATORS": "ops-bob"}
    refused = sr_cli(sr_env, "reemit", run_id, "--operator", "eve", extra=ops)
    assert refused.returncode != 0 and "not authorized" in refused.stderr
    done = sr_cli(sr_env, "reemit", run_id, "--operator", "ops-bob", extra=ops)
    assert done.returncode == 0, done.stderr
    again = ready_records(sr_env, 4, settle=1.0)
    assert len(again) == 4
    assert (again[3].key, again[3].value, again[3].header("sr-idempotency-key")) == (
        records[2].key, records[2].value, records[2].header("sr-idempotency-key"))
    # `sr runs` lists it with its current facts.
    listed = sr_cli(sr_env, "runs", "--status", "READY", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["run_id"], r["facts_view_hash"]) for r in rows] == [(run_id, events[2].facts_view_hash)]


@pytest.fixture
def single_partition_env(servers: Servers, pg_dsn: str, s3_client: Any, kafka_bootstrap: str,
                         tmp_path: Path) -> SREnv:
    # The replay and rebuild tests put many runs on one evidence root: gate_6B unscoped (contract §4).
    return build_env(servers, pg_dsn, tmp_path, partitions=1, operators=["ops-alice"], policy=shared_evidence_policy())


#: Runs the replay test re-emits (enough for a partition of many records; the bench measures scale).
N_REPLAYED = 60


def test_replay_reemits_byte_identical_records_with_authorization(single_partition_env: SREnv,
                                                                   s3_client: Any) -> None:
    env = single_partition_env
    root = env.evidence_prefix("shared")
    upload_member_concat_gate(s3_client, env.bucket, root, "gates/3A", GATE_3A_MEMBERS)
    upload_bundle_gate(s3_client, env.bucket, root, "gates/6B", GATE_6B_MEMBERS)
    intents = [make_intent(env, f"r{i}", evidence_root=env.evidence_root("shared"), seed=i) for i in range(N_REPLAYED)]
    worker = WorkerThread(env).start()
    try:
        submit(env, intents)
        originals = ready_records(env, N_REPLAYED, settle=1.0, timeout=180)
    finally:
        worker.stop()
    assert len(originals) == N_REPLAYED
    ready_topic = env.settings.topics.ready
    operator_env = {"SR_OPERATORS": "ops-alice"}

    refused = sr_cli(env, "replay", "--topic", ready_topic, "--partition", "0", "--operator", "mallory",
                     extra=operator_env)
    assert refused.returncode != 0
    assert "not authorized" in refused.stderr and "Traceback" not in refused.stderr

    dry = sr_cli(env, "replay", "--idle-timeout", "1", "--topic", ready_topic, "--partition", "0", "--dry-run",
                 "--json", "--operator", "ops-alice", extra=operator_env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout.strip().splitlines()[-1])["reemitted"] == N_REPLAYED
    assert len(ready_records(env, N_REPLAYED + 1, settle=0, timeout=2)) == N_REPLAYED  # --dry-run emitted nothing

    real = sr_cli(env, "replay", "--topic", ready_topic, "--partition", "0", "--from-offset", "0",
                  "--to-offset", str(N_REPLAYED), "--json", "--operator", "ops-alice", extra=operator_env)
    assert real.returncode == 0, real.stderr
    summary = json.loads(real.stdout.strip().splitlines()[-1])
    assert summary["records"] == summary["runs"] == summary["reemitted"] == N_REPLAYED
    everything = ready_records(env, 2 * N_REPLAYED, settle=1.0)
    assert len(everything) == 2 * N_REPLAYED

    def ident(r: Any) -> tuple[Any, Any, Any]:
        return r.key, r.value, r.header("sr-idempotency-key")

    assert [ident(r) for r in everything[N_REPLAYED:]] == [ident(r) for r in everything[:N_REPLAYED]]
    # Replay also works from the intents topic: the same runs are found there.
    from_intents = sr_cli(env, "replay", "--idle-timeout", "1", "--topic", env.settings.topics.intents,
                          "--partition", "0", "--dry-run", "--json", "--operator", "ops-alice", extra=operator_env)
    assert from_intents.returncode == 0, from_intents.stderr
    assert json.loads(from_intents.stdout.strip().splitlines()[-1])["runs"] == N_REPLAYED
    with RunIndex(pg_config(env.settings), RoundTripCounter()) as index:
        actions = index.operator_actions(limit=10)
    audit = {(a["operator"], a["action"], a["allowed"]) for a in actions}
    assert ("mallory", "replay", False) in audit and ("ops-alice", "replay", True) in audit
    # Beside the self-declared name, each row records the role the database authenticated.
    assert {a["db_role"] for a in actions} == {"postgres"}, actions


@pytest.mark.shared_evidence  # the complete runs share one evidence root: gate_6B unscoped
def test_index_rebuild_after_database_loss(pg_server_dsn: str, write_evidence: EvidenceWriter,
                                           sr_env: SREnv) -> None:
    env = sr_env
    complete = [make_intent(env, f"done{i}", evidence_root=env.evidence_root("rebuild-complete"), seed=i)
                for i in range(3)]
    waiting = [make_intent(env, f"later{i}", evidence_root=env.evidence_root(f"rebuild-later{i}")) for i in range(2)]
    write_evidence("rebuild-complete")
    worker = WorkerThread(env).start()
    try:
        submit(env, complete + waiting)
        assert len(ready_records(env, 3)) == 3
        assert wait_for(lambda: all(run_status(env, run_id_of(i)) == "WAITING" for i in waiting), timeout=30)
    finally:
        worker.stop()

    # Lose the database entirely.
    dbname = psycopg.conninfo.conninfo_to_dict(env.settings.pg_conninfo().get_secret_value())["dbname"]
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dbname}"')

    # Operator commands need no policy file and never migrate: on the lost database the
    # rebuild refuses and creates nothing; `sr db migrate` first, then it restores.
    operator_env = {**env.env(), "SR_OPERATORS": "ops", "SR_OPERATOR": "ops"}
    del operator_env["SR_POLICY_FILE"]
    rebuild = [SR, "index", "rebuild", "--json"]
    refused = subprocess.run(rebuild, env=operator_env, capture_output=True, text=True, timeout=180)
    assert refused.returncode == 1 and refused.stderr.startswith("sr: error:"), refused.stderr
    with psycopg.connect(env.settings.pg_conninfo().get_secret_value()) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
    assert sr_cli(env, "db", "migrate").returncode == 0
    rebuilt = subprocess.run(rebuild, env=operator_env, capture_output=True, text=True, timeout=180)
    assert rebuilt.returncode == 0, rebuilt.stderr
    summary = json.loads(rebuilt.stdout.strip().splitlines()[-1])
    assert summary["restored"] == {"READY": 3, "WAITING": 2}
    assert summary["publications"] == 3
    for intent in complete:
        assert run_status(env, run_id_of(intent)) == "READY"

    worker = WorkerThread(env, recheck_interval=1.0, sweep_interval=0.5).start()
    try:
        # Duplicates are still recognised: no new READY.
        submit(env, [i.model_copy(update={"request_id": "again"}) for i in complete])
        assert len(ready_records(env, 4, settle=0, timeout=6)) == 3
        # WAITING runs still complete once their evidence arrives.
        for i in range(2):
            write_evidence(f"rebuild-later{i}")
        ready = ready_records(env, 5, settle=1.0)
    finally:
        worker.stop()
    assert len(ready) == 5
    assert {env.codec.decode_ready(r.value).run_id for r in ready} == {run_id_of(i) for i in complete + waiting}

