"""Runpacks of revoked and retried runs (contract §11), without servers.

The runs are driven on the in-memory world (:class:`tests.harness.app_world.World`): a READY
whose evidence is tampered with and re-evaluated is REVOKED (the REVOKED fact, then QUARANTINED
``EVIDENCE_CONTRADICTS_READY``); a RETRY after the evidence is restored makes a new READY that
names the revoked view in ``supersedes_facts_view_hash`` without any SUPERSEDE. Their runpacks
must export and verify, and forged variants (re-signed, so only the content checks can object)
must be reported, never raised.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.app_world import World
from tests.unit.test_runpack_offline import _resign  # one re-signer for every forgery test
from worker.adapters.avro import AvroCodec
from worker.app.authentication import InputAuthority
from worker.core.canonical import canonical_json
from worker.core.identity import run_id_of
from worker.core.ledger import LedgerKind, derive_state
from worker.core.models import EventType, ReadyEvent, RunIntent, RunStatusEvent, TriggerKind
from worker.core.vocabulary import EVIDENCE_CONTRADICTS_READY, fact_key, status_key
from worker.errors import IntegrityError
from worker.runpack import DirectorySource, DirectoryTarget, VerifyReport, collect_runpack, export_run, verify_runpack

CORRECTED_6B = {"part-0": b"corrected-0\n", "part-1": b"transactions-1\n"}
TAMPERED = {"part-1": b"evil"}
CODEC = AvroCodec()


# ----------------------------------------------------------------------------- driving runs
@dataclass
class _Run:
    world: World
    intent: RunIntent

    @property
    def run_id(self) -> str:
        return run_id_of(self.intent)

    def reevaluate(self) -> str:
        return self.world.handle_trigger(self.world.processor(),
                                         self.world.trigger(self.run_id, TriggerKind.REEVALUATE)).action.value

    def supersede(self) -> str:
        return self.world.handle_trigger(self.world.processor(),
                                         self.world.trigger(self.run_id, TriggerKind.SUPERSEDE)).action.value

    def retry(self) -> str:
        processor = self.world.processor(authority=InputAuthority(operator_allowlist=frozenset({"ops"})))
        self.world.clock.advance(1)  # a trigger is identified by who asked for what, when
        return self.world.handle_trigger(processor, self.world.trigger(self.run_id, TriggerKind.RETRY)).action.value

    def kinds(self) -> list[str]:
        return self.world.kinds(self.intent)

    def export(self, directory: Path) -> Path:
        result = export_run(self.run_id, DirectoryTarget(directory), truth=self.world.truth, index=self.world.index)
        return Path(result.location)


def _ready_run(name: str = "rv") -> _Run:
    world = World()
    intent = world.intent(name)
    world.write_complete(intent)
    assert world.handle(world.processor(), intent).action.value == "READY"
    return _Run(world, intent)


def _revoked_run() -> _Run:
    """READY(A), then REEVALUATE on tampered evidence: REVOKED(A)."""
    run = _ready_run()
    run.world.write_gate_6b(run.intent, tamper=TAMPERED)
    assert run.reevaluate() == "REVOKED"
    assert run.kinds() == ["READY", "TRIGGER", "REVOKED"]
    return run


def _retried_run() -> _Run:
    """READY(A), REVOKED(A), then RETRY on restored evidence: READY(B, supersedes A)."""
    run = _revoked_run()
    run.world.write_gate_6b(run.intent)
    assert run.retry() == "READY"
    assert run.kinds() == ["READY", "TRIGGER", "REVOKED", "TRIGGER", "RETRIED", "READY"]
    return run


# ----------------------------------------------------------------------------- reading and forging
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def _problems(report: VerifyReport) -> list[tuple[str, str | None]]:
    return [(p.code, p.path) for p in report.problems]


def _verify(root: Path) -> VerifyReport:
    return verify_runpack(DirectorySource(root))


def _publications(root: Path) -> list[dict[str, Any]]:
    return list(_json(root / "publications.json")["publications"])


def _payload(pub: dict[str, Any]) -> bytes:
    return base64.b64decode(pub["payload_b64"])


def _writable(root: Path) -> None:
    """Exported files are read-only (write-once); forging needs them writable."""
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _edit_entry(root: Path, seq: int, edit: Callable[[dict[str, Any]], object]) -> None:
    path = root / "ledger" / f"{seq:012d}.json"
    entry = _json(path)
    edit(entry)
    path.write_bytes(canonical_json(entry))


def _edit_publications(root: Path, edit: Callable[[list[dict[str, Any]]], object]) -> None:
    path = root / "publications.json"
    doc = _json(path)
    edit(doc["publications"])
    doc["publications"].sort(key=lambda p: p["pub_key"])
    path.write_bytes(canonical_json(doc))


def _set_payload(pub: dict[str, Any], payload: bytes) -> None:
    pub["payload_b64"] = base64.b64encode(payload).decode("ascii")
    pub["payload_sha256"] = _sha(payload)


def _row(pubs: list[dict[str, Any]], pub_key: str) -> dict[str, Any]:
    [row] = [p for p in pubs if p["pub_key"] == pub_key]
    return row


# ----------------------------------------------------------------------------- runs that verify
def test_a_revoked_run_exports_and_verifies_byte_identically(tmp_path: Path) -> None:
    run = _revoked_run()
    [ready, _, revoked] = run.world.ledger(run.intent)
    fv = ready.body["facts_view_hash"]
    roots = [run.export(tmp_path / name) for name in ("first", "second")]
    for root in roots:
        report = _verify(root)
        assert report.ok, report.problems
    assert {str(p.relative_to(roots[0])): p.read_bytes() for p in roots[0].rglob("*") if p.is_file()} == \
        {str(p.relative_to(roots[1])): p.read_bytes() for p in roots[1].rglob("*") if p.is_file()}
    root = roots[0]

    pubs = {p["pub_key"]: p for p in _publications(root)}
    # The REVOKED row is the fact its ledger entry records, on the same key as the READY it withdraws.
    assert set(pubs) == {fact_key(run.run_id, fv, "READY"), fact_key(run.run_id, fv, "REVOKED"),
                         status_key(run.run_id, revoked.seq, "QUARANTINED")}
    event = CODEC.decode_ready(_payload(pubs[fact_key(run.run_id, fv, "REVOKED")]))
    assert (event.event_type, event.facts_view_hash, event.supersedes_facts_view_hash) == (EventType.REVOKED, fv, None)
    status = CODEC.decode_status(_payload(pubs[status_key(run.run_id, revoked.seq, "QUARANTINED")]))
    assert (status.status.value, status.reason_code) == ("QUARANTINED", EVIDENCE_CONTRADICTS_READY)

    summary = _json(root / "run.json")
    assert (summary["status"], summary["reason_code"], summary["facts_view_hash"]) == \
        ("QUARANTINED", EVIDENCE_CONTRADICTS_READY, fv)
    assert summary["facts_revoked"] == [fv] and summary["facts_history"] == [fv]


def test_a_retried_run_verifies_its_ready_naming_the_revoked_view_without_a_supersede(tmp_path: Path) -> None:
    run = _retried_run()
    entries = run.world.ledger(run.intent)
    old, new = entries[0].body["facts_view_hash"], entries[-1].body["facts_view_hash"]
    assert entries[-1].body["supersedes_facts_view_hash"] == old
    assert LedgerKind.SUPERSEDED not in {e.kind for e in entries}
    root = run.export(tmp_path / "retried")
    report = _verify(root)
    assert report.ok, report.problems
    ready = CODEC.decode_ready(_payload(_row(_publications(root), fact_key(run.run_id, new, "READY"))))
    assert ready.supersedes_facts_view_hash == old
    assert _json(root / "facts" / f"{new}.json")["supersedes_facts_view_hash"] == old
    summary = _json(root / "run.json")
    assert (summary["status"], summary["facts_view_hash"], summary["facts_history"], summary["facts_revoked"]) == \
        ("READY", new, [old, new], [old])


def test_a_superseded_then_revoked_then_retried_run_verifies(tmp_path: Path) -> None:
    """READY(A), SUPERSEDED(A→B) + READY(B, supersedes A), REVOKED(B), RETRIED, READY(C, supersedes B):
    each READY's ``supersedes`` is checked against what came before it."""
    run = _ready_run("chain")
    run.world.write_gate_6b(run.intent, CORRECTED_6B)
    assert run.supersede() == "SUPERSEDED"
    run.world.write_gate_6b(run.intent, CORRECTED_6B, tamper=TAMPERED)
    assert run.reevaluate() == "REVOKED"
    run.world.write_gate_6b(run.intent, CORRECTED_6B)
    assert run.retry() == "READY"
    state = derive_state(run.world.ledger(run.intent))
    a, b, c = state.facts_history
    assert state.revoked == (b,)
    root = run.export(tmp_path / "chain")
    report = _verify(root)
    assert report.ok, report.problems
    readies = [CODEC.decode_ready(_payload(p)) for p in _publications(root) if p["kind"] == "READY"]
    assert sorted((e.facts_view_hash, e.supersedes_facts_view_hash) for e in readies) == \
        sorted([(a, None), (b, a), (c, b)])


def test_a_quarantined_run_retried_to_ready_verifies(tmp_path: Path) -> None:
    world = World()
    intent = world.intent("qr")
    world.write_gate_3a(intent)
    world.write_gate_6b(intent, tamper=TAMPERED)
    assert world.handle(world.processor(), intent).action.value == "QUARANTINED"
    run = _Run(world, intent)
    world.write_gate_6b(intent)
    assert run.retry() == "READY"
    root = run.export(tmp_path / "qr")
    report = _verify(root)
    assert report.ok, report.problems
    assert "facts_revoked" not in _json(root / "run.json")  # nothing was revoked: the summary as before


# ----------------------------------------------------------------------------- forged publications
def test_a_revoked_row_that_is_not_its_ledger_entry_is_reported(tmp_path: Path) -> None:
    run = _revoked_run()
    root = run.export(tmp_path / "forged")
    _writable(root)
    fv = run.world.ledger(run.intent)[0].body["facts_view_hash"]
    key = fact_key(run.run_id, fv, "REVOKED")

    def forge(pubs: list[dict[str, Any]]) -> None:
        row = _row(pubs, key)
        event = CODEC.decode_ready(_payload(row))
        _set_payload(row, CODEC.encode_ready(event.model_copy(update={"plan_hash": "e" * 64})))

    _edit_publications(root, forge)
    _resign(root)
    report = _verify(root)
    assert _problems(report) == [("PUBLICATION_MISMATCH", "publications.json")]
    assert "differs from the REVOKED fact of ledger seq 2 in: plan_hash" in report.problems[0].detail


def test_a_revoked_row_with_the_same_fields_in_other_bytes_is_reported(tmp_path: Path) -> None:
    """An over-long varint decodes to the same event: only the byte comparison sees it."""
    run = _revoked_run()
    root = run.export(tmp_path / "bytes")
    _writable(root)
    fv = run.world.ledger(run.intent)[0].body["facts_view_hash"]
    key = fact_key(run.run_id, fv, "REVOKED")
    original = _payload(_row(_publications(root), key))
    assert original[10:11] == b"\x04"  # the event_type enum: REVOKED is index 2, zig-zag 4
    forged = original[:10] + b"\x84\x00" + original[11:]
    assert CODEC.decode_ready(forged) == CODEC.decode_ready(original)
    _edit_publications(root, lambda pubs: _set_payload(_row(pubs, key), forged))
    _resign(root)
    report = _verify(root)
    assert _problems(report) == [("PUBLICATION_MISMATCH", "publications.json")]
    assert "same fields, other bytes" in report.problems[0].detail


def test_a_revoked_row_whose_ledger_entry_is_gone_is_reported(tmp_path: Path) -> None:
    """The REVOKED entry forged into a TRIGGER: the REVOKED row and its QUARANTINED status row
    have no source any more, and run.json no longer fits the ledger."""
    run = _revoked_run()
    root = run.export(tmp_path / "orphan")
    _writable(root)
    fv = run.world.ledger(run.intent)[0].body["facts_view_hash"]

    def drop_revoked(entry: dict[str, Any]) -> None:
        entry["kind"] = "TRIGGER"
        entry["body"] = {"kind": "REEVALUATE", "reason": "forged", "requested_by": "ops", "requested_at": 1}

    _edit_entry(root, 2, drop_revoked)
    _resign(root)
    report = _verify(root)
    assert _problems(report) == [("PUBLICATION_MISMATCH", "publications.json")] * 3 + \
        [("RUN_SUMMARY_MISMATCH", "run.json")], report.problems
    details = [p.detail for p in report.problems]
    assert details[0].endswith(f":REVOKED: no REVOKED ledger entry records facts view {fv}")
    assert details[1].endswith(":status:2:QUARANTINED: ledger entry seq 2 is TRIGGER, not QUARANTINED")
    assert details[2].endswith(":status:2:QUARANTINED: reason_code differs from ledger entry seq 2")


def test_the_quarantined_status_of_a_revocation_is_checked_against_the_revoked_entry(tmp_path: Path) -> None:
    run = _revoked_run()
    root = run.export(tmp_path / "status")
    _writable(root)
    key = status_key(run.run_id, 2, "QUARANTINED")

    def forge(pubs: list[dict[str, Any]]) -> None:
        row = _row(pubs, key)
        event = CODEC.decode_status(_payload(row))
        _set_payload(row, CODEC.encode_status(event.model_copy(update={"reason_code": "DIGEST_MISMATCH"})))
        # A second status row at the REVOKED seq claiming another status.
        waiting = RunStatusEvent.model_validate({**event.model_dump(), "status": "WAITING"})
        other = dict(row, pub_key=status_key(run.run_id, 2, "WAITING"),
                     headers={**row["headers"], "sr-idempotency-key": status_key(run.run_id, 2, "WAITING")})
        _set_payload(other, CODEC.encode_status(waiting))
        pubs.append(other)

    _edit_publications(root, forge)
    _resign(root)
    report = _verify(root)
    details = sorted(p.detail for p in report.problems)
    assert set(report.codes()) == {"PUBLICATION_MISMATCH"} and len(details) == 2, report.problems
    assert f"{key}: reason_code differs from ledger entry seq 2" in details
    assert any("ledger entry seq 2 is REVOKED (announcing QUARANTINED), not WAITING" in d for d in details)


# ----------------------------------------------------------------------------- forged ledgers
def test_a_revoked_entry_for_a_view_that_is_not_current_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    """READY(A), SUPERSEDE to B, then REVOKED(B) forged into REVOKED(A): derive_state refuses the
    ledger; verify reports it (and what follows from it), export refuses the truth."""
    run = _ready_run("stale")
    run.world.write_gate_6b(run.intent, CORRECTED_6B)
    assert run.supersede() == "SUPERSEDED"
    run.world.write_gate_6b(run.intent, tamper=TAMPERED)
    assert run.reevaluate() == "REVOKED"
    entries = run.world.ledger(run.intent)
    assert [e.kind.value for e in entries] == ["READY", "TRIGGER", "SUPERSEDED", "READY", "TRIGGER", "REVOKED"]
    a, b = entries[0].body, entries[3].body
    root = run.export(tmp_path / "stale")
    _writable(root)

    def revoke_a(entry: dict[str, Any]) -> None:
        entry["body"].update(facts_view_hash=a["facts_view_hash"], facts_view_uri=a["facts_view_uri"])

    _edit_entry(root, 5, revoke_a)
    _resign(root)
    report = _verify(root)  # never raises
    assert _problems(report) == [("LEDGER_STATE_INVALID", None), ("LEDGER_REVOKED_INVALID", "ledger/000000000005.json"),
                                 ("PUBLICATION_MISMATCH", "publications.json")], report.problems
    state, revoked, row = (p.detail for p in report.problems)
    assert f"REVOKED {a['facts_view_hash']} does not fit" in state
    assert revoked == (f"REVOKED {a['facts_view_hash']} does not withdraw the READY in force "
                       f"(READY {b['facts_view_hash']})")
    # The REVOKED row of B has no REVOKED entry any more.
    assert row.endswith(f"no REVOKED ledger entry records facts view {b['facts_view_hash']}")

    # The same forgery in S3 truth (the REVOKED entry is the head: nothing to re-link): export refuses.
    keys = run.world.keys(run.intent)
    head = json.loads(run.world.store.read("sr-unit", keys.record(5)))
    revoke_a(head)
    run.world.store.put("sr-unit", keys.record(5), canonical_json(head))
    with pytest.raises(IntegrityError, match="REVOKED"):
        collect_runpack(run.world.truth, run.run_id, tenant_id=run.intent.tenant_id, namespace=run.intent.namespace)


def test_a_revoked_entry_before_the_ready_it_withdraws_is_reported(tmp_path: Path) -> None:
    """The READY and REVOKED entries swapped (the intent kept in seq 0)."""
    run = _revoked_run()
    root = run.export(tmp_path / "order")
    _writable(root)
    ready, revoked = _json(root / "ledger" / f"{0:012d}.json"), _json(root / "ledger" / f"{2:012d}.json")
    intent = ready["body"].pop("intent")

    def put(seq: int, source: dict[str, Any], *, with_intent: bool) -> None:
        def edit(entry: dict[str, Any]) -> None:
            entry["kind"], entry["body"] = source["kind"], dict(source["body"])
            if with_intent:
                entry["body"]["intent"] = intent

        _edit_entry(root, seq, edit)

    put(0, revoked, with_intent=True)
    put(2, ready, with_intent=False)
    _resign(root)
    report = _verify(root)
    codes = set(report.codes())
    assert {"LEDGER_STATE_INVALID", "LEDGER_REVOKED_INVALID", "PUBLICATION_MISMATCH"} <= codes, report.problems
    fv = ready["body"]["facts_view_hash"]
    assert any(f"ledger seq 0 revokes facts view {fv} before READY seq 2 records it" in p.detail
               for p in report.problems)


def test_a_revoked_entry_must_repeat_the_ready_it_withdraws(tmp_path: Path) -> None:
    run = _revoked_run()
    root = run.export(tmp_path / "repeat")
    _writable(root)
    _edit_entry(root, 2, lambda e: e["body"].update(policy_rev="d" * 64))
    _resign(root)
    report = _verify(root)
    assert ("LEDGER_REVOKED_INVALID", "ledger/000000000002.json") in _problems(report), report.problems
    [found] = [p for p in report.problems if p.code == "LEDGER_REVOKED_INVALID"]
    assert found.detail.endswith("differs from the READY it withdraws in: policy_rev")


def test_a_ready_naming_a_view_neither_superseded_nor_revoked_is_reported(tmp_path: Path) -> None:
    """The retried READY forged (ledger entry and its outbox row alike) to supersede an unknown view."""
    run = _retried_run()
    root = run.export(tmp_path / "lineage")
    _writable(root)
    entries = run.world.ledger(run.intent)
    seq, new = entries[-1].seq, entries[-1].body["facts_view_hash"]
    unknown = "f" * 64
    _edit_entry(root, seq, lambda e: e["body"].update(supersedes_facts_view_hash=unknown))

    def forge(pubs: list[dict[str, Any]]) -> None:
        row = _row(pubs, fact_key(run.run_id, new, "READY"))
        event = CODEC.decode_ready(_payload(row))
        _set_payload(row, CODEC.encode_ready(ReadyEvent.model_validate(
            {**event.model_dump(), "supersedes_facts_view_hash": unknown})))

    _edit_publications(root, forge)
    _resign(root)
    report = _verify(root)
    assert sorted(_problems(report)) == sorted([
        ("LEDGER_SUPERSEDES_INVALID", f"ledger/{seq:012d}.json"),
        ("FACTS_SUPERSEDES_MISMATCH", f"facts/{new}.json"),
        ("PUBLICATION_FACTS_UNKNOWN", "publications.json"),
    ]), report.problems
    [lineage] = [p for p in report.problems if p.code == "LEDGER_SUPERSEDES_INVALID"]
    assert "the run's last revoked view" in lineage.detail


def test_a_first_ready_that_claims_to_supersede_is_reported(tmp_path: Path) -> None:
    """Without a SUPERSEDED or a revocation before it, a READY supersedes nothing."""
    run = _retried_run()
    root = run.export(tmp_path / "first")
    _writable(root)
    new = run.world.ledger(run.intent)[-1].body["facts_view_hash"]
    _edit_entry(root, 0, lambda e: e["body"].update(supersedes_facts_view_hash=new))
    _resign(root)
    problems = _problems(_verify(root))
    assert ("LEDGER_SUPERSEDES_INVALID", "ledger/000000000000.json") in problems, problems


def test_a_retried_entry_whose_body_does_not_fit_is_reported(tmp_path: Path) -> None:
    run = _retried_run()
    root = run.export(tmp_path / "retried-body")
    _writable(root)
    _edit_entry(root, 4, lambda e: e["body"].pop("requested_by"))
    _resign(root)
    assert _problems(_verify(root)) == [("LEDGER_BODY_INVALID", "ledger/000000000004.json")]
