"""The operator's CLI as subprocesses: migrate, create topics, run, submit, status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.harness.evidence import EvidenceWriter
from tests.harness.kafka import read_topic
from tests.harness.sr_env import SREnv, make_intent
from tests.harness.workers import start_worker_process, stop_process
from worker.core.identity import run_id_of

pytestmark = pytest.mark.e2e

SR = str(Path(sys.executable).parent / "sr")


def sr(env: SREnv, *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SR, *args], env=env.env(), input=stdin, capture_output=True, text=True, timeout=timeout)


def test_operator_flow_submit_run_status(sr_env: SREnv, write_evidence: EvidenceWriter, tmp_path: Path) -> None:
    migrate = sr(sr_env, "db", "migrate")
    assert migrate.returncode == 0, migrate.stderr
    assert "up to date" in migrate.stdout  # the test database came pre-migrated from the template
    topics = sr(sr_env, "topics", "create")
    assert topics.returncode == 0, topics.stderr
    assert sr_env.settings.topics.ready in topics.stdout

    write_evidence("cli")
    intent = make_intent(sr_env, "cli")
    intent_file = tmp_path / "intent.json"
    intent_file.write_text(json.dumps(intent.to_avro()))
    worker = start_worker_process(sr_env, log_path=tmp_path / "worker.log")
    try:
        submitted = sr(sr_env, "submit", str(intent_file))
        assert submitted.returncode == 0, submitted.stderr
        line = json.loads(submitted.stdout.strip().splitlines()[0])
        assert line["run_id"] == run_id_of(intent)
        ready = read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.ready,
                           until=lambda rs: len(rs) >= 1, timeout=90)
        assert len(ready) == 1
        status = sr(sr_env, "status", line["run_id"], "-o", "json")
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert doc["status"] == "READY"
        assert [e["kind"] for e in doc["ledger"]] == ["READY"]
        assert doc["facts_view_hash"] == sr_env.codec.decode_ready(ready[0].value or b"").facts_view_hash
        human = sr(sr_env, "status", line["run_id"])
        assert human.returncode == 0 and "READY" in human.stdout
        unknown = sr(sr_env, "status", "0" * 32)
        assert unknown.returncode == 5 and "not found" in unknown.stderr  # exit 5: not found
        legacy = sr(sr_env, "status", line["run_id"], "--json")  # the deprecated alias still works
        assert legacy.returncode == 0 and json.loads(legacy.stdout) == doc
        # Secrets never reach the worker's log.
    finally:
        assert stop_process(worker) == 0
    log_text = (tmp_path / "worker.log").read_text()
    assert sr_env.servers.s3_secret_key not in log_text
    assert '"worker stopped"' in log_text


def test_submit_rejects_an_invalid_intent_with_one_line(sr_env: SREnv, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tenant_id": "../etc", "namespace": "x"}))
    res = sr(sr_env, "submit", str(bad))
    assert res.returncode == 2
    assert res.stderr.startswith("sr: error:") and res.stderr.strip().count("\n") == 0
    assert "Traceback" not in res.stderr


def test_demo_shows_every_outcome_and_exits_cleanly(tmp_path: Path) -> None:
    from tests.e2e.test_sr_dev import _require_embedded

    _require_embedded()
    proc = subprocess.Popen([SR, "dev", "--demo", "--exit-when-done", "--state-dir", str(tmp_path / "state")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children: list[psutil.Process] = []
    try:
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-4000:]
    for word in ("READY", "WAITING", "QUARANTINED", "REJECTED", "DLQ", "demo summary"):
        assert word in out, word
    assert "DIGEST_MISMATCH" in out and "EQUIV_KEY_COLLISION" in out and "EVIDENCE_MISSING" in out
    # The INVOKE sample: SR asks the reference engine, which writes the evidence and reports.
    assert "ENGINE_RUNNING" in out and "ENGINE ->" in out and "ENGINE <-" in out and "SUCCEEDED" in out
    # READY lines come through the client's follower: facts view checked, what gate_6B's receipt bound.
    ready_lines = [line for line in out.splitlines() if line.startswith("READY")]
    assert len(ready_lines) == 2 and all("verified (sha256)" in line and "bound gate_6B:" in line
                                         for line in ready_lines), ready_lines
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


def test_worker_refuses_a_policy_with_an_unknown_gate(sr_env: SREnv, tmp_path: Path) -> None:
    # An output that names a gate the policy does not define is caught when the policy is
    # loaded: the worker never starts with it (so no intent can be judged by it).
    bad = tmp_path / "bad-policy.toml"
    bad.write_text('[outputs.transactions]\ngates = ["gate_missing"]\n'
                   '[gates.gate_6B]\nmethod = "sha256_bundle_digest"\nbundle = "gates/6B"\n')
    env = sr_env.env()
    env["SR_POLICY_FILE"] = str(bad)
    res = subprocess.run([SR, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 3  # an invalid policy is a configuration error
    assert res.stderr.startswith("sr: error:") and "gate_missing" in res.stderr
    assert "Traceback" not in res.stderr
