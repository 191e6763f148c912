"""Runpacks without servers: the frozen v1 fixture verifies, export reproduces it byte for byte, and
hostile content is reported (never raised).

The fixture's own truth (ledger, plan, facts views) is loaded into the in-memory object store,
so :func:`collect_runpack` runs exactly as it does against S3. The integration tests
(``tests/integration/test_runpack.py``) cover the same paths on real servers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from worker.app.testing import InMemoryObjectStore
from worker.app.truth import TruthStore
from worker.core.canonical import canonical_json
from worker.errors import IntegrityError
from worker.runpack import DirectorySource, DirectoryTarget, VerifyReport, collect_runpack, export_run, verify_runpack
from worker.runpack.format import FileEntry, root_hash

FIXTURE_V1 = Path(__file__).resolve().parents[1] / "fixtures" / "runpack_v1"
#: Root hash of the committed v1 fixture (the same constant as the integration test's).
FIXTURE_V1_ROOT_HASH = "a0589fa7804057bc11d5b8adace61c08acdcded13608f7383a933345bf7df0b6"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json(path: Path) -> Any:
    return json.loads(path.read_bytes())


@dataclass(frozen=True)
class _Publication:
    """An outbox row rebuilt from ``publications.json`` (what :class:`PublicationSource` needs)."""

    run_id: str
    pub_key: str
    kind: str
    facts_view_hash: str | None
    event_type: str | None
    topic: str
    msg_key: bytes | None
    payload: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class _FixtureRun:
    store: InMemoryObjectStore
    truth: TruthStore
    run: dict[str, Any]
    publications: list[_Publication]


def _fixture_truth() -> _FixtureRun:
    """The fixture's truth at the S3 location ``run.json`` names, in an in-memory store."""
    store = InMemoryObjectStore()
    run = _json(FIXTURE_V1 / "run.json")
    bucket, root = run["source"]["bucket"], run["source"]["run_root"]
    for path in sorted((FIXTURE_V1 / "ledger").glob("*.json")):
        store.put(bucket, f"{root}/record/{path.name}", path.read_bytes())
    store.put(bucket, f"{root}/plan.json", (FIXTURE_V1 / "plan.json").read_bytes())
    for path in sorted((FIXTURE_V1 / "facts").glob("*.json")):
        store.put(bucket, f"{root}/facts/{path.name}", path.read_bytes())
    doc = _json(FIXTURE_V1 / "publications.json")
    pubs = [_Publication(doc["run_id"], r["pub_key"], r["kind"], r["facts_view_hash"], r["event_type"], r["topic"],
                         None if r["msg_key_b64"] is None else base64.b64decode(r["msg_key_b64"]),
                         base64.b64decode(r["payload_b64"]), r["headers"]) for r in doc["publications"]]
    return _FixtureRun(store, TruthStore(store, bucket, root.split("/tenant/")[0]), run, pubs)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def fixture_copy(tmp_path: Path) -> Path:
    target = tmp_path / "runpack"
    shutil.copytree(FIXTURE_V1, target)
    return target


def _resign(root: Path) -> None:
    """Re-chain the ledger and re-sign run.json and the manifest, so only content checks can object."""
    previous: bytes | None = None
    for path in sorted((root / "ledger").glob("*.json")):
        entry = _json(path)
        entry["prev_hash"] = None if previous is None else _sha(previous)
        previous = canonical_json(entry)
        path.write_bytes(previous)
    assert previous is not None
    run = _json(root / "run.json")
    run["ledger_head_sha256"] = _sha(previous)
    (root / "run.json").write_bytes(canonical_json(run))
    manifest = _json(root / "manifest.json")
    manifest["ledger_head_sha256"] = _sha(previous)
    manifest["files"] = [{"path": f["path"], "sha256": _sha((root / f["path"]).read_bytes()),
                          "size": len((root / f["path"]).read_bytes())} for f in manifest["files"]]
    manifest["root_hash"] = root_hash([FileEntry.model_validate(f) for f in manifest["files"]])
    (root / "manifest.json").write_bytes(canonical_json(manifest))


def _edit_body(root: Path, seq: int, edit: Callable[[dict[str, Any]], object]) -> None:
    path = root / "ledger" / f"{seq:012d}.json"
    entry = _json(path)
    edit(entry["body"])
    path.write_bytes(canonical_json(entry))
    _resign(root)


def _problems(report: VerifyReport) -> list[tuple[str, str | None]]:
    return [(p.code, p.path) for p in report.problems]


# ----------------------------------------------------------------------------- the frozen fixture
def test_the_frozen_v1_fixture_verifies() -> None:
    report = verify_runpack(DirectorySource(FIXTURE_V1))
    assert report.ok, report.problems
    assert (report.root_hash, report.format_version, report.files_checked) == (FIXTURE_V1_ROOT_HASH, 1, 14)


def test_collecting_the_fixture_run_reproduces_it_byte_for_byte() -> None:
    fixture = _fixture_truth()
    runpack = collect_runpack(fixture.truth, fixture.run["run_id"], tenant_id=fixture.run["tenant_id"],
                              namespace=fixture.run["namespace"], publications=fixture.publications)
    assert dict(runpack.files_in_write_order()) == _tree(FIXTURE_V1)
    assert runpack.manifest.root_hash == FIXTURE_V1_ROOT_HASH


def test_two_exports_are_byte_identical_and_verify(tmp_path: Path) -> None:
    fixture = _fixture_truth()
    trees = []
    for name in ("first", "second"):
        result = export_run(fixture.run["run_id"], DirectoryTarget(tmp_path / name), truth=fixture.truth, index=None,
                            tenant_id=fixture.run["tenant_id"], namespace=fixture.run["namespace"])
        trees.append(_tree(Path(result.location)))
        report = verify_runpack(DirectorySource(result.location))
        assert report.ok and report.root_hash == result.root_hash, report.problems
    assert trees[0] == trees[1]


def test_export_refuses_truth_whose_ledger_body_does_not_fit_its_kind() -> None:
    fixture = _fixture_truth()
    key = f"{fixture.run['source']['run_root']}/record/000000000005.json"  # the head: no later entry to re-link
    entry = json.loads(fixture.store.read(fixture.truth.bucket, key))
    del entry["body"]["facts_view_uri"]
    fixture.store.put(fixture.truth.bucket, key, canonical_json(entry))
    with pytest.raises(IntegrityError, match=r"seq 5 .*\(READY\) has an invalid body"):
        collect_runpack(fixture.truth, fixture.run["run_id"], tenant_id=fixture.run["tenant_id"],
                        namespace=fixture.run["namespace"])


# ----------------------------------------------------------------------------- reported, never raised
@pytest.mark.parametrize(("seq", "edit", "expected"), [
    (1, lambda b: b.pop("requested_by"), [("LEDGER_BODY_INVALID", "ledger/000000000001.json")]),
    (0, lambda b: b.update(reason_code=5), [("LEDGER_BODY_INVALID", "ledger/000000000000.json")]),
    (5, lambda b: b.update(facts_view_uri=b["facts_view_uri"].replace("/facts/21c4", "/facts/ffff")),
     [("LEDGER_URI_MISMATCH", "ledger/000000000005.json"), ("PUBLICATION_MISMATCH", "publications.json")]),
    (0, lambda b: b["intent"].update(scenario_id="scn-other"), [("INTENT_MISMATCH", "intent.json")]),
], ids=["trigger-without-requester", "status-reason-not-a-string", "uri-names-another-view", "intent-differs"])
def test_ledger_body_problems_are_reported(fixture_copy: Path, seq: int, edit: Callable[[dict[str, Any]], object],
                                           expected: list[tuple[str, str]]) -> None:
    _edit_body(fixture_copy, seq, edit)
    assert _problems(verify_runpack(DirectorySource(fixture_copy))) == expected


@pytest.mark.parametrize("path", ["ledger/abcdefghijkl.json", "facts/../../etc/passwd", "receipts/x.json"])
def test_listed_paths_outside_the_layout_are_refused_not_raised(fixture_copy: Path, path: str) -> None:
    manifest = _json(fixture_copy / "manifest.json")
    manifest["files"] = sorted([*manifest["files"], {"path": path, "sha256": "0" * 64, "size": 1}],
                               key=lambda f: f["path"])
    manifest["root_hash"] = root_hash([FileEntry.model_validate(f) for f in manifest["files"]])
    (fixture_copy / "manifest.json").write_bytes(canonical_json(manifest))
    assert _problems(verify_runpack(DirectorySource(fixture_copy))) == [("UNSAFE_PATH", path)]


@pytest.mark.parametrize("seq_field", ["\u00b2", "00", "1"], ids=["superscript-digit", "zero-padded", "other-seq"])
def test_a_status_publication_must_carry_its_own_status_key(fixture_copy: Path, seq_field: str) -> None:
    path = fixture_copy / "publications.json"
    doc = _json(path)
    for pub in doc["publications"]:
        if pub["kind"] == "STATUS":
            pub["pub_key"] = pub["pub_key"].replace(":status:0:", f":status:{seq_field}:")
            pub["headers"]["sr-idempotency-key"] = pub["pub_key"]
    doc["publications"].sort(key=lambda p: p["pub_key"])
    path.write_bytes(canonical_json(doc))
    _resign(fixture_copy)
    report = verify_runpack(DirectorySource(fixture_copy))
    assert report.codes() and set(report.codes()) == {"PUBLICATION_MISMATCH"}, report.problems


# ----------------------------------------------------------------------------- engine runs
def _invoked_run(tmp_path: Path) -> Path:
    """Export of an INVOKE run that took two attempts (the first FAILED) on the in-memory world."""
    from tests.harness.app_world import World
    from worker.core.engine import EngineStatus
    from worker.core.identity import run_id_of
    from worker.core.models import Strategy

    world = World()
    processor = world.processor()
    intent = world.intent("engine-made", strategy=Strategy.INVOKE)
    world.handle(processor, intent)
    world.handle_result(processor, world.result(world.engine_requests()[0], EngineStatus.FAILED, detail="exit 3"))
    world.clock.advance(30)
    processor.sweep()
    world.write_complete(intent)
    world.handle_result(processor, world.result(world.engine_requests()[-1]))
    assert len(world.ready_events()) == 1
    result = export_run(run_id_of(intent), DirectoryTarget(tmp_path / "engine"), truth=world.truth, index=world.index)
    return Path(result.location)


def test_a_runpack_of_an_engine_run_carries_and_checks_its_requests(tmp_path: Path) -> None:
    root = _invoked_run(tmp_path)
    report = verify_runpack(DirectorySource(root))
    assert report.ok, report.problems
    kinds = sorted(p["kind"] for p in _json(root / "publications.json")["publications"])
    assert kinds.count("ENGINE_REQUEST") == 2 and "READY" in kinds


def test_an_engine_request_that_is_not_its_ledger_entry_is_reported(tmp_path: Path) -> None:
    root = _invoked_run(tmp_path)
    doc = _json(root / "publications.json")
    requests = [p for p in doc["publications"] if p["kind"] == "ENGINE_REQUEST"]
    # Attempt 2's row carries attempt 1's bytes.
    for field_name in ("payload_b64", "payload_sha256"):
        requests[1][field_name] = requests[0][field_name]
    (root / "publications.json").write_bytes(canonical_json(doc))
    _resign(root)
    problems = _problems(verify_runpack(DirectorySource(root)))
    assert ("PUBLICATION_MISMATCH", "publications.json") in problems


# ----------------------------------------------------------------------------- instance binding
def test_a_runpack_of_a_scoped_run_verifies_and_a_misbound_view_is_reported(tmp_path: Path) -> None:
    from typing import cast

    from tests.harness.app_world import World
    from worker.core.facts import facts_view_bytes, parse_facts_view
    from worker.core.identity import run_id_of
    from worker.core.plan import plan_hash
    from worker.runpack.content import RunContent
    from worker.runpack.ledger_checks import _check_view_against_plan

    world = World()
    intent = world.intent("scoped", seed=9)
    world.write_complete(intent)
    fv = world.handle(world.processor(), intent).detail
    result = export_run(run_id_of(intent), DirectoryTarget(tmp_path / "scoped"), truth=world.truth,
                        index=world.index)
    report = verify_runpack(DirectorySource(Path(result.location)))
    assert report.ok, report.problems

    view = world.truth.read_facts_view(world.keys(intent), fv)
    plan = world.truth.read_plan(world.keys(intent), view.plan_hash)

    class Collected:
        def __init__(self) -> None:
            self.plan, self.plan_hash, self.problems = plan, plan_hash(plan), list[tuple[str, str]]()

        def add(self, code: str, path: str, detail: str) -> None:
            self.problems.append((code, detail))

    good = Collected()
    _check_view_against_plan(cast(RunContent, good), "facts/x.json", view, facts_view_bytes(view))
    assert good.problems == []
    receipts = [r.model_copy(update={"bound": {**r.bound, "seed": 10}}) if r.scope else r for r in view.receipts]
    misbound = view.model_copy(update={"receipts": tuple(receipts)})
    parse_facts_view(facts_view_bytes(misbound))  # a well-formed view, only bound to another seed
    bad = Collected()
    _check_view_against_plan(cast(RunContent, bad), "facts/x.json", misbound, facts_view_bytes(misbound))
    assert [code for code, _ in bad.problems] == ["FACTS_PLAN_MISMATCH"]


# ----------------------------------------------------------------------------- S3 targets: an ETag is no MD5
def test_an_s3_export_never_takes_an_etag_for_an_md5() -> None:
    """The in-memory store's ETags look like MD5s (32 hex digits) but are not, as under SSE-KMS
    or after a multipart upload. Was: preflight compared such an ETag with the MD5 of the bytes
    and refused every re-export onto an identical runpack. Now: identical files are adopted,
    a same-size different file is refused before anything is written, and the S3 runpack
    verifies."""
    from collections import Counter
    from typing import cast

    from worker.adapters.s3 import ObjectStore
    from worker.core.keys import S3Location, parse_s3_uri
    from worker.errors import RunpackConflictError
    from worker.runpack import ExportResult, S3Source, S3Target

    fixture = _fixture_truth()
    exports = InMemoryObjectStore()  # apart from the truth's store, so only the target's requests count
    # S3Target takes the adapter (for Object Lock); without retention it needs only the port.
    target = S3Target(cast(ObjectStore, exports), S3Location("exports", "runpacks"))

    def export() -> ExportResult:
        return export_run(fixture.run["run_id"], target, truth=fixture.truth, index=None,
                          tenant_id=fixture.run["tenant_id"], namespace=fixture.run["namespace"])

    first = export()
    root = parse_s3_uri(first.location)
    written = {key: exports.read("exports", key) for key in exports.keys("exports", root.prefix + "/")}
    assert len(written) == first.files
    for key, data in written.items():
        meta = exports.head("exports", key)
        assert meta is not None and len(meta.etag) == 32
        assert meta.etag != hashlib.md5(data, usedforsecurity=False).hexdigest()
    report = verify_runpack(S3Source(exports, root))
    assert report.ok and report.root_hash == first.root_hash, report.problems

    # Re-export onto the identical runpack: one LIST, then a GET per file in preflight, then
    # each write-once PUT answers "exists" and reads the file once more.
    exports.requests.clear()
    assert export() == first
    assert exports.requests == Counter({"LIST": 1, "GET": 2 * len(written), "PUT": len(written)})

    # Same size, other bytes: refused in preflight, nothing written.
    key = f"{root.prefix}/publications.json"
    original = written[key]
    forged = original[:-2] + bytes([original[-2] ^ 1]) + original[-1:]
    exports.put("exports", key, forged)
    exports.requests.clear()
    with pytest.raises(RunpackConflictError, match=r"publications\.json"):
        export()
    assert exports.requests["PUT"] == 0
    assert exports.read("exports", key) == forged
