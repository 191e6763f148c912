"""``sr runpack export|verify`` and ``sr index prune`` as the real ``sr`` binary (subprocesses).

Verification is shown to be offline by running it with every server address pointing at a
closed port. Acceptance points are covered in depth by tests/integration/test_runpack.py;
this file checks the operator-facing surface: exit codes, ``--json``, one-line errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness.evidence import EvidenceWriter
from tests.harness.kafka import read_topic, submit
from tests.harness.servers import unique
from tests.harness.sr_env import SREnv, make_intent
from tests.harness.workers import WorkerThread
from worker.core.identity import run_id_of

pytestmark = pytest.mark.e2e

SR = str(Path(sys.executable).parent / "sr")


def sr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SR, *args], env=env, capture_output=True, text=True, timeout=120)


def offline_env() -> dict[str, str]:
    """No reachable Kafka, Postgres or S3: only the runpack's files are available."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SR_", "AWS_"))}
    env.update(SR_KAFKA_BOOTSTRAP="127.0.0.1:9", SR_PG_DSN="postgresql://nobody@127.0.0.1:9/none",
               SR_S3_ENDPOINT="http://127.0.0.1:9")
    return env


def test_runpack_cli_export_verify_tamper_s3_and_refusals(sr_env: SREnv, write_evidence: EvidenceWriter,
                                                           tmp_path: Path, s3_client: Any) -> None:
    write_evidence("cli-runpack")
    intent = make_intent(sr_env, "cli-runpack")
    run_id = run_id_of(intent)
    worker = WorkerThread(sr_env).start()
    try:
        submit(sr_env, [intent])
        assert read_topic(sr_env.settings.kafka_bootstrap, sr_env.settings.topics.ready,
                          until=lambda rs: len(rs) >= 1, timeout=90)
    finally:
        worker.stop()
    env = sr_env.env()

    exported = sr(env, "runpack", "export", run_id, "--to", str(tmp_path / "exports"), "--json")
    assert exported.returncode == 0, exported.stderr
    doc = json.loads(exported.stdout)
    location = Path(doc["location"])
    assert location.is_relative_to(tmp_path / "exports") and (location / "manifest.json").is_file()
    assert location.name == json.loads((location / "manifest.json").read_bytes())["plan_hash"]
    secrets = [sr_env.servers.s3_secret_key.encode(), sr_env.servers.s3_access_key.encode()]
    for path in location.rglob("*"):
        if path.is_file():
            assert not any(secret in path.read_bytes() for secret in secrets), path  # no credentials in artifacts

    ok = sr(offline_env(), "runpack", "verify", str(location), "--json", "--expect-root-hash", doc["root_hash"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert (report["ok"], report["run_id"], report["problems"]) == (True, run_id, [])

    entry = location / "ledger" / "000000000000.json"
    entry.write_bytes(entry.read_bytes().replace(b'"READY"', b'"FAKED"'))
    (location / "extra.bin").write_bytes(b"\x00")
    bad = sr(offline_env(), "runpack", "verify", str(location), "--json")
    assert bad.returncode == 1
    problems = {(p["code"], p["path"]) for p in json.loads(bad.stdout)["problems"]}
    assert {("ARTIFACT_MODIFIED", "ledger/000000000000.json"), ("UNLISTED_FILE", "extra.bin")} <= problems
    bad_human = sr(offline_env(), "runpack", "verify", str(location))
    assert bad_human.returncode == 1 and "ARTIFACT_MODIFIED" in bad_human.stdout and "FAILED" in bad_human.stdout

    prefix = unique("runpacks-")
    to_s3 = sr(env, "runpack", "export", run_id, "--to", f"s3://{sr_env.bucket}/{prefix}", "--json")
    assert to_s3.returncode == 0, to_s3.stderr
    s3_location = json.loads(to_s3.stdout)["location"]
    assert s3_location.startswith(f"s3://{sr_env.bucket}/{prefix}/tenant/{sr_env.tenant}/namespace/payments/")
    s3_ok = sr(env, "runpack", "verify", s3_location, "--json")
    assert s3_ok.returncode == 0 and json.loads(s3_ok.stdout)["ok"], s3_ok.stdout + s3_ok.stderr

    # WORM on a bucket without Object Lock: a clear one-line error, nothing written.
    worm_prefix = unique("runpacks-")
    worm = sr(env, "runpack", "export", run_id, "--to", f"s3://{sr_env.bucket}/{worm_prefix}",
              "--retain-until", "2099-01-01T00:00:00Z", "--lock-mode", "compliance")
    assert worm.returncode == 1  # OBJECT_LOCK_UNSUPPORTED: a permanent failure, not a usage error
    assert worm.stderr.startswith("sr: error:") and "Object Lock" in worm.stderr
    assert worm.stderr.strip().count("\n") == 0 and "Traceback" not in worm.stderr
    assert s3_client.list_objects_v2(Bucket=sr_env.bucket, Prefix=worm_prefix).get("KeyCount", 0) == 0

    crafted = sr(env, "runpack", "export", "../../etc/passwd", "--to", str(tmp_path / "crafted"))
    assert crafted.returncode == 2 and "run_id" in crafted.stderr and "Traceback" not in crafted.stderr
    assert not (tmp_path / "crafted").exists()

    env_ops = {**env, "SR_OPERATORS": "auditor"}
    pruned = sr(env_ops, "index", "prune", "--older-than", "30", "--dry-run", "--operator", "auditor", "--json")
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["total"] == 0
    refused = sr(env_ops, "index", "prune", "--older-than", "30", "--operator", "mallory")
    assert refused.returncode == 4 and "not authorized" in refused.stderr  # exit 4: not authorized
