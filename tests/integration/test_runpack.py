"""Audit runpacks on the real servers: export, offline verification, unsafe targets, retention.

One module-scoped world is built once through the real worker (Kafka + Postgres + S3):

* ``ready``      — complete evidence → READY;
* ``superseded`` — WAITING (6B missing), EVIDENCE_ARRIVED trigger → READY, then corrected 6B
  evidence and a SUPERSEDE trigger → SUPERSEDED + READY(new): two facts views;
* ``failed``     — a malformed flag → FAILED;
* ``waiting``    — 6B missing → WAITING.

Acceptance map (issue "Audit runpacks"):
1. test_ready_export_verifies_offline_and_two_exports_are_byte_identical,
   test_superseded_export_contains_both_facts_views (+ test_failed_run_export_verifies)
2. test_verification_names_the_cause[...] (modified, missing, root-hash mismatch, unknown
   version, oversized, missing manifest), test_s3_bytes_appended_after_export_are_detected,
   test_every_problem_is_reported_not_just_the_first
3. test_export_refuses_a_target_containing_a_symlink, test_export_refuses_crafted_ids
4. test_committed_v1_fixture_keeps_verifying
Retention: test_prune_deletes_only_superseded_working_data_never_s3,
test_object_lock_unsupported_bucket_is_a_clear_error_before_writing,
test_object_lock_retention_on_a_lock_enabled_bucket.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.harness.evidence import (
    GATE_3A_MEMBERS,
    GATE_6B_MEMBERS,
    default_instance,
    receipt_bytes,
    upload_bundle_gate,
    upload_member_concat_gate,
)
from tests.harness.kafka import produce_raw, read_topic, submit
from tests.harness.servers import Servers, unavailable, unique
from tests.harness.sr_env import SREnv, build_env, make_intent
from tests.harness.sr_env import dsn_for_db as _dsn_for_db
from tests.harness.workers import WorkerThread
from worker.adapters.postgres import PgConfig, RoundTripCounter, RunIndex
from worker.adapters.s3 import ObjectStore
from worker.app.truth import TruthStore
from worker.cli import index as index_cli
from worker.core.identity import run_id_of
from worker.core.keys import S3Location
from worker.core.ledger import derive_state
from worker.core.models import RunStatus, RunTrigger, TriggerKind
from worker.errors import (
    IntegrityError,
    ObjectLockUnsupportedError,
    RunpackConflictError,
    RunpackTargetError,
    UnsafeKeyError,
)
from worker.runpack import (
    FORMAT_VERSION,
    DirectorySource,
    DirectoryTarget,
    LockMode,
    Retention,
    S3Source,
    S3Target,
    export_run,
    verify_runpack,
)
from worker.runpack.format import artifact_cap, artifact_kind, manifest_bytes, root_hash
from worker.runpack.verify import VerifyReport
from worker.runtime.compose import pg_config, s3_config
from worker.settings import Settings

pytestmark = pytest.mark.integration

FIXTURE_V1 = Path(__file__).resolve().parents[1] / "fixtures" / "runpack_v1"
#: Root hash of the committed v1 fixture. It must never change: the fixture is frozen.
FIXTURE_V1_ROOT_HASH = "a0589fa7804057bc11d5b8adace61c08acdcded13608f7383a933345bf7df0b6"

NEW_6B_MEMBERS = {**GATE_6B_MEMBERS, "transactions/part-0000.csv": b"tx_id,account_id,amount\n1,1,11\n"}


# ----------------------------------------------------------------------------- the world
@dataclass
class World:
    env: SREnv
    s3: Any
    db: str
    runs: dict[str, str]  # name -> run_id
    old_fv: str
    new_fv: str

    @property
    def settings(self) -> Settings:
        return self.env.settings

    def truth(self, store: ObjectStore) -> TruthStore:
        return TruthStore(store, self.settings.s3_bucket, self.settings.s3_prefix)

    def store(self) -> ObjectStore:
        return ObjectStore(s3_config(self.settings))

    def index(self, dsn: str | None = None) -> RunIndex:
        config = pg_config(self.settings) if dsn is None else PgConfig(dsn=dsn)
        return RunIndex(config, RoundTripCounter())

    def export(self, name: str, target: Any, *, dsn: str | None = None, **kwargs: Any) -> Any:
        with self.store() as store, self.index(dsn) as index:
            return export_run(self.runs[name], target, truth=self.truth(store), index=index, **kwargs)

    def s3_objects(self, prefix: str) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.env.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = self.s3.get_object(Bucket=self.env.bucket, Key=obj["Key"])["Body"].read()
        return found


def _boto_client(servers: Servers) -> Any:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=servers.s3_endpoint, aws_access_key_id=servers.s3_access_key,
                          aws_secret_access_key=servers.s3_secret_key, region_name=servers.s3_region,
                          config=Config(retries={"max_attempts": 2}))
    try:
        client.head_bucket(Bucket=servers.s3_bucket)
    except Exception:
        client.create_bucket(Bucket=servers.s3_bucket)
    return client


def _seed(env: SREnv, s3: Any, name: str, *, with_6b: bool = True, flag_6b: Any = "auto",
          members_6b: dict[str, bytes] | None = None) -> None:
    """Evidence of the run ``make_intent(env, name)`` (gate_6B with that run's receipt)."""
    root = env.evidence_prefix(name)
    upload_member_concat_gate(s3, env.bucket, root, "gates/3A", GATE_3A_MEMBERS)
    if with_6b:
        upload_bundle_gate(s3, env.bucket, root, "gates/6B", members_6b or GATE_6B_MEMBERS, flag=flag_6b,
                           receipt=receipt_bytes("gate_6B", default_instance(name)))


@pytest.fixture(scope="module")
def world(servers: Servers, pg_template: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Build the four runs once (see the module docstring); drop the database afterwards."""
    if not (servers.kafka_bootstrap and servers.pg_dsn and servers.s3_endpoint):
        unavailable(f"runpack world needs kafka, postgres and s3: {servers.problems}")
    db = unique("sr_rp_")
    with psycopg.connect(servers.pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}" TEMPLATE "{pg_template}"' if pg_template else f'CREATE DATABASE "{db}"')
    try:
        env = build_env(servers, _dsn_for_db(servers.pg_dsn, db), tmp_path_factory.mktemp("runpack"))
        s3 = _boto_client(servers)
        yield _build_world(env, s3, db)
    finally:
        with psycopg.connect(servers.pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _build_world(env: SREnv, s3: Any, db: str) -> World:
    _seed(env, s3, "ready")
    _seed(env, s3, "superseded", with_6b=False)
    _seed(env, s3, "failed", flag_6b=b"sha256_hex=not-a-digest\n")
    _seed(env, s3, "waiting", with_6b=False)
    intents = {name: make_intent(env, name) for name in ("ready", "superseded", "failed", "waiting")}
    runs = {name: run_id_of(intent) for name, intent in intents.items()}
    bootstrap, topics = env.settings.kafka_bootstrap, env.settings.topics
    worker = WorkerThread(env).start()
    try:
        submit(env, intents.values())
        _await(bootstrap, topics.ready, 1, "READY of the complete run")
        _await(bootstrap, topics.status, 3, "WAITING, FAILED, WAITING status events")
        _seed(env, s3, "superseded")  # the missing gate lands ...
        _trigger(env, runs["superseded"], TriggerKind.EVIDENCE_ARRIVED)
        _await(bootstrap, topics.ready, 2, "READY after EVIDENCE_ARRIVED")
        _seed(env, s3, "superseded", members_6b=NEW_6B_MEMBERS)  # ... then a correction of it
        _trigger(env, runs["superseded"], TriggerKind.SUPERSEDE)
        _await(bootstrap, topics.ready, 4, "SUPERSEDE and READY(new)")
    finally:
        worker.stop()
    with ObjectStore(s3_config(env.settings)) as store:
        truth = TruthStore(store, env.settings.s3_bucket, env.settings.s3_prefix)
        intent = intents["superseded"]
        state = derive_state(truth.read_ledger(truth.keys_for(intent.tenant_id, intent.namespace,
                                                              runs["superseded"])))
    assert state.status is RunStatus.READY and len(state.facts_history) == 2, state
    old_fv, new_fv = state.facts_history
    return World(env=env, s3=s3, db=db, runs=runs, old_fv=old_fv, new_fv=new_fv)


def _await(bootstrap: str, topic: str, count: int, what: str) -> None:
    records = read_topic(bootstrap, topic, until=lambda rs: len(rs) >= count, timeout=90)
    if len(records) < count:
        raise RuntimeError(f"runpack world: {what} did not arrive on {topic} ({len(records)}/{count} records)")


def _trigger(env: SREnv, run_id: str, kind: TriggerKind) -> None:
    trigger = RunTrigger(run_id=run_id, kind=kind, reason=f"tests: {kind.value}", requested_by="tests",
                         requested_at=datetime(2026, 1, 2, tzinfo=UTC))
    produce_raw(env, env.settings.topics.triggers, [(run_id.encode(), env.codec.encode_trigger(trigger))])


# ----------------------------------------------------------------------------- helpers
def tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def verify_dir(path: Path | str, **kwargs: Any) -> VerifyReport:
    return verify_runpack(DirectorySource(path), **kwargs)


def problems_of(report: VerifyReport) -> str:
    return "\n".join(f"{p.code} {p.path}: {p.detail}" for p in report.problems)


def rewrite_manifest(root: Path, **changes: Any) -> None:
    from worker.core.canonical import canonical_json

    doc = json.loads((root / "manifest.json").read_bytes())
    doc.update(changes)
    (root / "manifest.json").write_bytes(canonical_json(doc))


@pytest.fixture
def fixture_copy(tmp_path: Path) -> Path:
    """A writable copy of the committed v1 fixture."""
    target = tmp_path / "runpack"
    shutil.copytree(FIXTURE_V1, target, symlinks=True)
    return target


# ----------------------------------------------------------------------------- acceptance 1
def test_ready_export_verifies_offline_and_two_exports_are_byte_identical(world: World, tmp_path: Path) -> None:
    first = world.export("ready", DirectoryTarget(tmp_path / "a"))
    second = world.export("ready", DirectoryTarget(tmp_path / "b"))
    assert first.root_hash == second.root_hash
    root_a, root_b = Path(first.location), Path(second.location)
    files = tree(root_a)
    assert files == tree(root_b)  # byte-identical
    run_id = world.runs["ready"]
    rel = root_a.relative_to(tmp_path / "a").parts
    assert rel[:6] == ("tenant", world.env.tenant, "namespace", "payments", "scenario", "scn-ready")
    assert rel[6:9] == ("run", run_id, "plan")
    fv = json.loads(files["run.json"])["facts_view_hash"]
    assert set(files) == {"manifest.json", "intent.json", "run.json", "plan.json", "publications.json",
                          "ledger/000000000000.json", f"facts/{fv}.json", f"receipts/{fv}.json"}
    manifest = json.loads(files["manifest.json"])
    assert manifest["format_version"] == FORMAT_VERSION and manifest["hash_algorithm"] == "sha256"
    assert [f["path"] for f in manifest["files"]] == sorted(set(files) - {"manifest.json"})
    listing = "".join(f"{hashlib.sha256(files[p]).hexdigest()}  {p}\n" for p in sorted(files) if p != "manifest.json")
    assert manifest["root_hash"] == hashlib.sha256(listing.encode()).hexdigest() == first.root_hash
    assert hashlib.sha256(files["plan.json"]).hexdigest() == manifest["plan_hash"] == rel[9]
    pubs = json.loads(files["publications.json"])["publications"]
    assert [p["kind"] for p in pubs] == ["READY"]
    assert "kafka_offset" not in pubs[0] and "published_at" not in pubs[0]  # environment, not run, data

    report = verify_dir(root_a, expect_root_hash=first.root_hash)
    assert report.ok, problems_of(report)
    assert report.files_checked == len(files) - 1

    # The same run exported to S3 has the same bytes, under keys derived by the key function.
    prefix = unique("runpacks-")
    with world.store() as store:
        on_s3 = world.export("ready", S3Target(store, S3Location(world.env.bucket, prefix)))
    assert on_s3.location == f"s3://{world.env.bucket}/{prefix}/{'/'.join(rel)}"
    objects = world.s3_objects(prefix + "/")
    assert {k.split("/", 1 + len(rel))[-1]: v for k, v in objects.items()} == files
    with world.store() as store:
        s3_report = verify_runpack(S3Source(store, S3Location(world.env.bucket, f"{prefix}/{'/'.join(rel)}")))
    assert s3_report.ok, problems_of(s3_report)
    # Re-exporting onto an existing identical runpack is idempotent (write-once, same bytes).
    assert world.export("ready", DirectoryTarget(tmp_path / "a")).root_hash == first.root_hash


def test_superseded_export_contains_both_facts_views(world: World, tmp_path: Path) -> None:
    result = world.export("superseded", DirectoryTarget(tmp_path))
    files = tree(Path(result.location))
    assert {f"facts/{world.old_fv}.json", f"facts/{world.new_fv}.json", f"receipts/{world.old_fv}.json",
            f"receipts/{world.new_fv}.json"} <= set(files)
    ledger = sorted(p for p in files if p.startswith("ledger/"))
    kinds = [json.loads(files[p])["kind"] for p in ledger]
    assert kinds[0] == "WAITING" and kinds[-3:] == ["TRIGGER", "SUPERSEDED", "READY"], kinds
    summary = json.loads(files["run.json"])
    assert summary["status"] == "READY"
    assert summary["facts_history"] == [world.old_fv, world.new_fv]
    assert summary["facts_view_hash"] == world.new_fv
    pubs = json.loads(files["publications.json"])["publications"]
    assert sorted((p["kind"], p["facts_view_hash"]) for p in pubs) == sorted([
        ("READY", world.old_fv), ("READY", world.new_fv), ("SUPERSEDE", world.new_fv), ("STATUS", None)])
    new_view = json.loads(files[f"facts/{world.new_fv}.json"])
    assert new_view["supersedes_facts_view_hash"] == world.old_fv
    receipts = json.loads(files[f"receipts/{world.new_fv}.json"])
    assert {r["gate_id"] for r in receipts["receipts"]} == {"gate_3A", "gate_6B"}
    report = verify_dir(result.location)
    assert report.ok, problems_of(report)


def test_export_from_s3_alone_without_the_index(world: World, tmp_path: Path) -> None:
    with world.store() as store:
        result = export_run(world.runs["superseded"], DirectoryTarget(tmp_path), truth=world.truth(store),
                            index=None, tenant_id=world.env.tenant, namespace="payments")
    files = tree(Path(result.location))
    assert json.loads(files["publications.json"])["publications"] == []  # working data lives in the index
    assert {f"facts/{world.old_fv}.json", f"facts/{world.new_fv}.json"} <= set(files)
    report = verify_dir(result.location)
    assert report.ok, problems_of(report)


def test_export_never_overwrites_a_different_runpack(world: World, tmp_path: Path) -> None:
    first = world.export("ready", DirectoryTarget(tmp_path))
    run_json = Path(first.location) / "run.json"
    forged = run_json.read_bytes().replace(b'"READY"', b'"FORGE"')
    run_json.chmod(0o644)
    run_json.write_bytes(forged)
    manifest = (Path(first.location) / "manifest.json").read_bytes()
    with pytest.raises(RunpackConflictError):
        world.export("ready", DirectoryTarget(tmp_path))
    assert run_json.read_bytes() == forged and (Path(first.location) / "manifest.json").read_bytes() == manifest


def test_failed_run_export_verifies(world: World, tmp_path: Path) -> None:
    result = world.export("failed", DirectoryTarget(tmp_path))
    files = tree(Path(result.location))
    assert not any(p.startswith(("facts/", "receipts/")) for p in files)
    assert json.loads(files["run.json"])["status"] == "FAILED"
    assert [p["kind"] for p in json.loads(files["publications.json"])["publications"]] == ["STATUS"]
    report = verify_dir(result.location)
    assert report.ok, problems_of(report)


# ----------------------------------------------------------------------------- acceptance 2
def _modify(root: Path) -> str:
    path = next(p for p in sorted(root.glob("facts/*.json")))
    data = bytearray(path.read_bytes())
    data[-3] = ord("0") if data[-3] != ord("0") else ord("1")
    path.write_bytes(bytes(data))
    return str(path.relative_to(root))


def _delete(root: Path) -> str:
    (root / "ledger" / "000000000001.json").unlink()
    return "ledger/000000000001.json"


def _root_hash(root: Path) -> str:
    rewrite_manifest(root, root_hash="0" * 64)
    return "manifest.json"


def _version(root: Path) -> str:
    rewrite_manifest(root, format_version=FORMAT_VERSION + 1)
    return "manifest.json"


def _oversize(root: Path) -> str:
    path = "ledger/000000000000.json"
    (root / path).write_bytes(b" " * (artifact_cap(artifact_kind(path)) + 1))
    return path


def _no_manifest(root: Path) -> str:
    (root / "manifest.json").unlink()
    return "manifest.json"


@pytest.mark.parametrize(("tamper", "cause"), [
    (_modify, "ARTIFACT_MODIFIED"),
    (_delete, "ARTIFACT_MISSING"),
    (_root_hash, "ROOT_HASH_MISMATCH"),
    (_version, "MANIFEST_VERSION_UNKNOWN"),
    (_oversize, "ARTIFACT_OVERSIZED"),
    (_no_manifest, "MANIFEST_MISSING"),
], ids=["modified", "missing", "root-hash", "unknown-version", "oversized", "no-manifest"])
def test_verification_names_the_cause(fixture_copy: Path, tamper: Any, cause: str) -> None:
    path = tamper(fixture_copy)
    report = verify_dir(fixture_copy)
    assert not report.ok
    assert any(p.code == cause and p.path == path for p in report.problems), problems_of(report)


def test_every_problem_is_reported_not_just_the_first(fixture_copy: Path) -> None:
    modified = _modify(fixture_copy)
    missing = _delete(fixture_copy)
    (fixture_copy / "notes.txt").write_text("added later")
    (fixture_copy / "ledger" / "evil.json").symlink_to("/etc/passwd")
    report = verify_dir(fixture_copy)
    found = {(p.code, p.path) for p in report.problems}
    assert {("ARTIFACT_MODIFIED", modified), ("ARTIFACT_MISSING", missing), ("UNLISTED_FILE", "notes.txt"),
            ("SYMLINK", "ledger/evil.json")} <= found, problems_of(report)
    assert "FACTS_HASH_MISMATCH" in report.codes()  # content checks ran too
    assert len(report.problems) >= 5


def test_manifest_paths_outside_the_layout_are_refused(fixture_copy: Path, tmp_path: Path) -> None:
    from worker.runpack.format import FileEntry

    (tmp_path / "secret").write_bytes(b"secret")
    doc = json.loads((fixture_copy / "manifest.json").read_bytes())
    evil = [{"path": "../secret", "sha256": hashlib.sha256(b"secret").hexdigest(), "size": 6},
            {"path": "/etc/passwd", "sha256": "0" * 64, "size": 1}]
    files = sorted(doc["files"] + evil, key=lambda f: f["path"])
    rewrite_manifest(fixture_copy, files=files,
                     root_hash=root_hash([FileEntry.model_validate(f) for f in files]))
    report = verify_dir(fixture_copy)
    assert {(p.code, p.path) for p in report.problems} >= {("UNSAFE_PATH", "../secret"),
                                                          ("UNSAFE_PATH", "/etc/passwd")}, problems_of(report)


def test_an_unexpected_root_hash_fails_verification(fixture_copy: Path) -> None:
    report = verify_dir(fixture_copy, expect_root_hash="f" * 64)
    assert report.codes() == ["ROOT_HASH_UNEXPECTED"]


def test_hostile_manifest_json_is_refused(fixture_copy: Path) -> None:
    manifest = fixture_copy / "manifest.json"
    manifest.write_bytes(b'{"format":"sr-runpack","format":"sr-runpack"}')
    assert verify_dir(fixture_copy).codes() == ["MANIFEST_INVALID"]
    manifest.write_bytes(b"[" * 10_000 + b"]" * 10_000)
    assert verify_dir(fixture_copy).codes() == ["MANIFEST_INVALID"]
    manifest.write_bytes(b'{"format":"sr-runpack","format_version":1.0}')
    assert verify_dir(fixture_copy).codes() == ["MANIFEST_INVALID"]


def test_export_fails_closed_on_tampered_s3_truth(world: World, tmp_path: Path) -> None:
    """A copy of the ready run's truth under another prefix, with one ledger entry edited."""
    copy_prefix = unique("sr-copy-")
    source = world.settings.s3_prefix
    for key, body in world.s3_objects(f"{source}/tenant/{world.env.tenant}/namespace/payments/run/"
                                      f"{world.runs['ready']}/").items():
        edited = body.replace(b'"READY"', b'"READX"') if key.endswith("record/000000000000.json") else body
        world.s3.put_object(Bucket=world.env.bucket, Key=copy_prefix + key[len(source):], Body=edited)
    with world.store() as store:
        truth = TruthStore(store, world.env.bucket, copy_prefix)
        with pytest.raises(IntegrityError):
            export_run(world.runs["ready"], DirectoryTarget(tmp_path / "out"), truth=truth, index=None,
                       tenant_id=world.env.tenant, namespace="payments")
    assert not (tmp_path / "out").exists()


def test_a_tampered_publication_in_the_index_is_caught_by_verify(world: World, clone_db: str,
                                                                  tmp_path: Path) -> None:
    run_id = world.runs["superseded"]
    with psycopg.connect(clone_db, autocommit=True) as conn:
        # Swap the payloads of READY(old) and READY(new): each row now carries the other fact.
        conn.execute("""
            UPDATE sr_publications AS p SET payload = q.payload
              FROM sr_publications AS q
             WHERE p.run_id = %(run)s AND q.run_id = %(run)s AND p.kind = 'READY' AND q.kind = 'READY'
               AND p.id <> q.id""", {"run": run_id})
    result = world.export("superseded", DirectoryTarget(tmp_path), dsn=clone_db)
    report = verify_dir(result.location)
    assert not report.ok
    assert {p.code for p in report.problems} == {"PUBLICATION_MISMATCH"}, problems_of(report)


def test_s3_bytes_appended_after_export_are_detected(world: World) -> None:
    prefix = unique("runpacks-")
    with world.store() as store:
        result = world.export("ready", S3Target(store, S3Location(world.env.bucket, prefix)))
        root = S3Location.join(S3Location(world.env.bucket, prefix), result.location.split(f"{prefix}/", 1)[1])
        key = f"{root.prefix}/publications.json"
        original = world.s3.get_object(Bucket=world.env.bucket, Key=key)["Body"].read()
        world.s3.put_object(Bucket=world.env.bucket, Key=key, Body=original + b'{"forged":true}')
        report = verify_runpack(S3Source(store, root))
        assert [(p.code, p.path) for p in report.problems][:1] == [("ARTIFACT_APPENDED", "publications.json")], \
            problems_of(report)
        # Exporting again onto the altered runpack is refused before anything is written.
        with pytest.raises(RunpackConflictError):
            world.export("ready", S3Target(store, S3Location(world.env.bucket, prefix)))
        # An export that never wrote its manifest is incomplete and never verifies.
        world.s3.delete_object(Bucket=world.env.bucket, Key=f"{root.prefix}/manifest.json")
        assert verify_runpack(S3Source(store, root)).codes() == ["MANIFEST_MISSING"]


# ----------------------------------------------------------------------------- acceptance 3
def test_export_refuses_a_target_containing_a_symlink(world: World, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = tmp_path / "exports"
    target.mkdir()
    (target / "tenant").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(RunpackTargetError, match="symlink"):
        world.export("ready", DirectoryTarget(target))
    assert list(elsewhere.iterdir()) == [] and [p.name for p in target.iterdir()] == ["tenant"]

    linked = tmp_path / "linked"
    linked.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(RunpackTargetError, match="symlink"):
        world.export("ready", DirectoryTarget(linked))
    assert list(elsewhere.iterdir()) == []

    # A symlink planted inside an existing runpack directory is refused too.
    good = world.export("ready", DirectoryTarget(tmp_path / "good"))
    (Path(good.location) / "ledger" / "link.json").symlink_to(elsewhere / "x.json")
    with pytest.raises(RunpackTargetError, match="symlink"):
        world.export("ready", DirectoryTarget(tmp_path / "good"))
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(("run_id", "tenant", "namespace"), [
    ("../../../../etc/passwd", None, None),
    ("0123456789abcdef0123456789abcde/", None, None),
    ("..", None, None),
    (None, "../evil", "payments"),
    (None, "a/b", "payments"),
    (None, "tenant", ".."),
    (None, "tenant", "x/../../y"),
])
def test_export_refuses_crafted_ids(world: World, tmp_path: Path, run_id: str | None, tenant: str | None,
                                    namespace: str | None) -> None:
    target = tmp_path / "exports"
    prefix = unique("runpacks-")
    with world.store() as store:
        truth = world.truth(store)
        for tgt in (DirectoryTarget(target), S3Target(store, S3Location(world.env.bucket, prefix))):
            with pytest.raises(UnsafeKeyError):
                export_run(run_id or world.runs["ready"], tgt, truth=truth, index=None, tenant_id=tenant,
                           namespace=namespace)
    assert not target.exists()
    assert world.s3_objects(prefix) == {}


def test_export_refuses_a_crafted_tenant_in_the_index(world: World, clone_db: str, tmp_path: Path) -> None:
    clone = clone_db
    with psycopg.connect(clone, autocommit=True) as conn:
        conn.execute("UPDATE sr_runs SET tenant_id = '../../escape' WHERE run_id = %s", (world.runs["ready"],))
    with pytest.raises(UnsafeKeyError):
        world.export("ready", DirectoryTarget(tmp_path / "exports"), dsn=clone)
    assert not (tmp_path / "exports").exists()


# ----------------------------------------------------------------------------- acceptance 4
def test_committed_v1_fixture_keeps_verifying() -> None:
    report = verify_dir(FIXTURE_V1, expect_root_hash=FIXTURE_V1_ROOT_HASH)
    assert report.ok, problems_of(report)
    assert report.format_version == 1
    manifest = json.loads((FIXTURE_V1 / "manifest.json").read_bytes())
    assert manifest["root_hash"] == FIXTURE_V1_ROOT_HASH
    kinds = {artifact_kind(f["path"]).value for f in manifest["files"]}
    assert kinds == {"intent", "run", "plan", "ledger", "facts", "receipts", "publications"}
    # The fixture's bytes are still what this build's manifest model writes.
    from worker.runpack.format import Manifest

    assert manifest_bytes(Manifest.model_validate(manifest)) == (FIXTURE_V1 / "manifest.json").read_bytes()


# ----------------------------------------------------------------------------- retention
@pytest.fixture
def clone_db(world: World, pg_server_dsn: str) -> Iterator[str]:
    """A private copy of the world's database (tests that change the index use it), dropped afterwards."""
    name = unique("sr_rpc_")
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{world.db}"')
    yield _dsn_for_db(pg_server_dsn, name)
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _publications(dsn: str) -> list[tuple[str, str, str | None]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT run_id, kind, facts_view_hash FROM sr_publications ORDER BY id").fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def _prune_cli(dsn: str, *argv: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="sr")
    index_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["index", "prune", *argv, "--operator", "auditor", "--json"])
    args.settings = Settings(pg_dsn=dsn, operators=["auditor"])
    capsys.readouterr()
    assert args.handler(args) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_prune_deletes_only_superseded_working_data_never_s3(world: World, clone_db: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    clone = clone_db
    runs = world.runs
    before = _publications(clone)
    assert sorted((r, k) for r, k, _ in before) == sorted([
        (runs["ready"], "READY"), (runs["superseded"], "STATUS"), (runs["superseded"], "READY"),
        (runs["superseded"], "SUPERSEDE"), (runs["superseded"], "READY"), (runs["failed"], "STATUS"),
        (runs["waiting"], "STATUS")])
    with psycopg.connect(clone, autocommit=True) as conn:
        conn.execute("UPDATE sr_publications SET published_at = now() - interval '40 days'")
        # The failed run's STATUS row is prunable by kind, but still unpublished: the outbox keeps it.
        conn.execute("UPDATE sr_publications SET published_at = NULL, kafka_partition = NULL, kafka_offset = NULL "
                     "WHERE run_id = %s", (runs["failed"],))
    truth_before = world.s3_objects(world.settings.s3_prefix + "/")

    assert _prune_cli(clone, "--older-than", "60", capsys=capsys)["total"] == 0
    dry = _prune_cli(clone, "--older-than", "30", "--dry-run", capsys=capsys)
    assert (dry["dry_run"], dry["deleted"]) == (True, {"READY": 1, "STATUS": 1})
    assert len(_publications(clone)) == len(before)
    done = _prune_cli(clone, "--older-than", "30", capsys=capsys)
    assert (done["dry_run"], done["deleted"], done["total"]) == (False, {"READY": 1, "STATUS": 1}, 2)

    after = _publications(clone)
    ready_fv = next(fv for run, _, fv in before if run == runs["ready"])
    assert sorted(after, key=str) == sorted([
        (runs["ready"], "READY", ready_fv), (runs["superseded"], "SUPERSEDE", world.new_fv),
        (runs["superseded"], "READY", world.new_fv), (runs["failed"], "STATUS", None),
        (runs["waiting"], "STATUS", None)], key=str)
    with psycopg.connect(clone) as conn:
        assert conn.execute("SELECT count(*) FROM sr_runs").fetchone() == (4,)  # run rows are never pruned
    assert world.s3_objects(world.settings.s3_prefix + "/") == truth_before  # S3 truth untouched
    assert _prune_cli(clone, "--older-than", "30", capsys=capsys)["total"] == 0  # idempotent
    with psycopg.connect(clone) as conn:  # every prune was authorized and audited
        actions = conn.execute("SELECT operator, action, allowed FROM sr_operator_actions ORDER BY id").fetchall()
    assert actions.count(("auditor", "index prune", True)) == 4
    assert actions.count(("auditor", "index prune.done", True)) == 4

    # The pruned index still exports a verifiable runpack (both facts views come from S3).
    result = world.export("superseded", DirectoryTarget(tmp_path), dsn=clone)
    assert {f"facts/{world.old_fv}.json", f"facts/{world.new_fv}.json"} <= set(tree(Path(result.location)))
    report = verify_dir(result.location)
    assert report.ok, problems_of(report)


def test_prune_needs_an_authorized_operator(clone_db: str) -> None:
    from worker.errors import AuthorizationError

    parser = argparse.ArgumentParser(prog="sr")
    index_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["index", "prune", "--older-than", "0", "--operator", "mallory"])
    args.settings = Settings(pg_dsn=clone_db, operators=["auditor"])
    before = _publications(clone_db)
    with pytest.raises(AuthorizationError):
        args.handler(args)
    assert _publications(clone_db) == before
    with psycopg.connect(clone_db) as conn:
        refused = conn.execute("SELECT operator, action, allowed FROM sr_operator_actions").fetchall()
    assert refused == [("mallory", "index prune", False)]


def test_object_lock_unsupported_bucket_is_a_clear_error_before_writing(world: World) -> None:
    prefix = unique("runpacks-")
    retention = Retention.until(LockMode.GOVERNANCE, datetime.now(UTC) + timedelta(days=1))
    with world.store() as store:
        target = S3Target(store, S3Location(world.env.bucket, prefix), retention)
        with pytest.raises(ObjectLockUnsupportedError, match="Object Lock"):
            world.export("ready", target)
        assert store.counter.snapshot()["PUT"] == 0
    assert world.s3_objects(prefix) == {}


def test_object_lock_retention_on_a_lock_enabled_bucket(world: World) -> None:
    bucket = f"sr-lock-{uuid.uuid4().hex[:10]}"
    try:
        world.s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    except Exception as exc:
        pytest.skip(f"this S3 server cannot create an Object Lock bucket: {exc}")
    until = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    with world.store() as store:
        result = world.export("ready", S3Target(store, S3Location(bucket, "audit"),
                                                Retention.until("governance", until)))
        root = S3Location(bucket, result.location.removeprefix(f"s3://{bucket}/"))
        retention = world.s3.get_object_retention(Bucket=bucket, Key=f"{root.prefix}/manifest.json")["Retention"]
        assert retention["Mode"] == "GOVERNANCE"
        assert retention["RetainUntilDate"].astimezone(UTC) == until
        report = verify_runpack(S3Source(store, root))
    assert report.ok, problems_of(report)


def test_retention_must_be_in_the_future() -> None:
    with pytest.raises(ValueError, match="future"):
        Retention.until(LockMode.COMPLIANCE, datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(ValueError, match="timezone"):
        Retention.until(LockMode.COMPLIANCE, datetime(2099, 1, 1))  # naive on purpose

