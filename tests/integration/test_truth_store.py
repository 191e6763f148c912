"""The truth store (plans, facts views, hash-chained ledger) against a real S3 server."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.servers import Servers, s3_config_for
from worker.adapters.s3 import ObjectStore, RequestCounter
from worker.app.ports import WriteOutcome
from worker.app.truth import AppendStatus, TruthStore
from worker.core.facts import FactsView, GateReceipt, facts_view_bytes, facts_view_hash
from worker.core.keys import RunKeys
from worker.core.ledger import LedgerEntry, LedgerKind, derive_state, entry_bytes, next_entry
from worker.core.models import Pins, RunStatus, Strategy
from worker.core.plan import Plan, PlanGate, plan_bytes, plan_hash
from worker.core.policy import GateMethod
from worker.errors import DriftError, IntegrityError, ObjectNotFoundError

pytestmark = pytest.mark.integration

PINS = Pins(manifest_fingerprint="a" * 64, parameter_hash="b" * 64, seed=7)


def make_plan(run_id: str, tenant: str = "t1", namespace: str = "ns", scenario: str = "sc") -> Plan:
    return Plan(
        run_id=run_id,
        run_equivalence_key="c" * 64,
        intent_fingerprint="d" * 64,
        tenant_id=tenant,
        namespace=namespace,
        scenario_id=scenario,
        pins=PINS,
        window_start_ms=0,
        window_end_ms=1000,
        output_ids=("transactions",),
        strategy=Strategy.AUTO,
        evidence_root="s3://bucket/evidence/t1/x",
        policy_rev="e" * 64,
        gates=(PlanGate(gate_id="gate_6B", method=GateMethod.SHA256_BUNDLE_DIGEST,
                        bundle_uri="s3://bucket/evidence/t1/x/gates/6B", depends_on=()),),
        outputs=(),
    )


def make_view(plan: Plan, digest: str = "f" * 64) -> FactsView:
    # The plan has no output gates (as before instance binding), so its facts view is format 1.
    return FactsView(
        format_version=1, run_id=plan.run_id, plan_hash=plan_hash(plan), policy_rev=plan.policy_rev,
        tenant_id=plan.tenant_id, namespace=plan.namespace, scenario_id=plan.scenario_id, pins=plan.pins,
        receipts=(GateReceipt(gate_id="gate_6B", method=GateMethod.SHA256_BUNDLE_DIGEST,
                              bundle_uri=plan.gates[0].bundle_uri, digest=digest, member_count=2,
                              byte_count=10),),
    )


@pytest.fixture
def truth(servers: Servers, s3_client: Any, s3_prefix: str) -> Iterator[TruthStore]:
    with ObjectStore(s3_config_for(servers)) as store:
        yield TruthStore(store, servers.s3_bucket, f"sr/{s3_prefix}")


def _counter(truth: TruthStore) -> RequestCounter:
    """The S3 request counter of the adapter behind ``truth`` (the ObjectStore port has none)."""
    assert isinstance(truth.store, ObjectStore)
    return truth.store.counter


def new_run(truth: TruthStore, tenant: str = "t1", namespace: str = "ns") -> tuple[str, RunKeys]:
    run_id = uuid.uuid4().hex
    return run_id, truth.keys_for(tenant, namespace, run_id)


def chain(run_id: str, n: int) -> list[LedgerEntry]:
    entries: list[LedgerEntry] = []
    previous = None
    for i in range(n):
        kind = LedgerKind.ADMITTED if i == 0 else LedgerKind.WAITING
        previous = next_entry(run_id, previous, kind=kind, at_ms=1000 + i, lease_epoch=1,
                              body={} if i == 0 else {"reason_code": "EVIDENCE_MISSING", "detail": str(i)})
        entries.append(previous)
    return entries


def test_plan_write_once_and_verified_read(truth: TruthStore) -> None:
    run_id, keys = new_run(truth)
    plan = make_plan(run_id)
    data = plan_bytes(plan)
    assert truth.write_plan(keys, data) is WriteOutcome.CREATED
    assert truth.write_plan(keys, data) is WriteOutcome.EXISTING_IDENTICAL
    assert truth.read_plan(keys, plan_hash(plan)) == plan
    with pytest.raises(IntegrityError):
        truth.read_plan(keys, "0" * 64)
    other = make_plan(run_id, scenario="other")
    with pytest.raises(DriftError):
        truth.write_plan(keys, plan_bytes(other))
    # A plan of another run is refused before any I/O.
    _, foreign_keys = new_run(truth)
    with pytest.raises(IntegrityError):
        truth.write_plan(foreign_keys, data)
    with pytest.raises(IntegrityError):
        truth.write_plan(keys, b'{"not":"a plan"}')


def test_plan_write_costs_one_put(truth: TruthStore) -> None:
    run_id, keys = new_run(truth)
    _counter(truth).reset()
    truth.write_plan(keys, plan_bytes(make_plan(run_id)))
    snap = _counter(truth).snapshot()
    assert (snap["PUT"], snap["GET"], snap["HEAD"], snap["LIST"]) == (1, 0, 0, 0)


def test_facts_view_content_addressed(truth: TruthStore, s3_client: Any) -> None:
    run_id, keys = new_run(truth)
    plan = make_plan(run_id)
    view = make_view(plan)
    data = facts_view_bytes(view)
    fv_hash = facts_view_hash(view)
    assert truth.write_facts_view(keys, data) is WriteOutcome.CREATED
    assert truth.write_facts_view(keys, data) is WriteOutcome.EXISTING_IDENTICAL
    assert s3_client.head_object(Bucket=truth.bucket, Key=keys.facts(fv_hash))["ContentLength"] == len(data)
    assert truth.read_facts_view(keys, fv_hash) == view
    with pytest.raises(ObjectNotFoundError):
        truth.read_facts_view(keys, "0" * 64)
    # Corrupt the stored bytes behind SR's back: the content address catches it.
    s3_client.put_object(Bucket=truth.bucket, Key=keys.facts(fv_hash), Body=data.replace(b'"seed":7', b'"seed":8'))
    with pytest.raises(IntegrityError):
        truth.read_facts_view(keys, fv_hash)


def test_ledger_append_and_read(truth: TruthStore) -> None:
    run_id, keys = new_run(truth)
    assert truth.read_ledger(keys) == ()
    entries = chain(run_id, 4)
    for entry in entries:
        outcome = truth.append(keys, entry)
        assert outcome.status is AppendStatus.APPENDED and outcome.ok and outcome.entry == entry
    # Retrying our own append is adopted, not a conflict.
    again = truth.append(keys, entries[2])
    assert again.status is AppendStatus.APPENDED_IDENTICAL and again.ok
    _counter(truth).reset()
    read = truth.read_ledger(keys)
    assert read == tuple(entries)
    snap = _counter(truth).snapshot()
    assert (snap["LIST"], snap["GET"], snap["HEAD"]) == (1, 4, 0)
    assert derive_state(read).status is RunStatus.WAITING


def test_append_conflict_returns_the_existing_entry(truth: TruthStore) -> None:
    run_id, keys = new_run(truth)
    first = chain(run_id, 1)[0]
    truth.append(keys, first)
    mine = next_entry(run_id, first, kind=LedgerKind.WAITING, at_ms=5, lease_epoch=1,
                      body={"reason_code": "EVIDENCE_MISSING", "detail": "mine"})
    theirs = next_entry(run_id, first, kind=LedgerKind.FAILED, at_ms=6, lease_epoch=2,
                        body={"reason_code": "EVIDENCE_MISSING_DEADLINE", "detail": "theirs"})
    assert truth.append(keys, theirs).status is AppendStatus.APPENDED
    _counter(truth).reset()
    outcome = truth.append(keys, mine)
    assert outcome.status is AppendStatus.CONFLICT and not outcome.ok
    assert outcome.entry == theirs
    snap = _counter(truth).snapshot()
    assert (snap["PUT"], snap["GET"], snap["HEAD"]) == (1, 1, 0)
    assert truth.read_ledger(keys) == (first, theirs)  # never overwritten


def test_racing_appends_one_winner(truth: TruthStore) -> None:
    run_id, keys = new_run(truth)
    first = chain(run_id, 1)[0]
    truth.append(keys, first)
    candidates = [
        next_entry(run_id, first, kind=LedgerKind.WAITING, at_ms=10 + i, lease_epoch=1,
                   body={"reason_code": "EVIDENCE_MISSING", "detail": f"writer {i}"})
        for i in range(6)
    ]
    barrier = threading.Barrier(len(candidates))
    statuses: list[AppendStatus] = []
    lock = threading.Lock()

    def racer(entry: LedgerEntry) -> None:
        barrier.wait()
        status = truth.append(keys, entry).status
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=racer, args=(c,)) for c in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count(AppendStatus.APPENDED) == 1
    assert statuses.count(AppendStatus.CONFLICT) == 5
    ledger = truth.read_ledger(keys)
    assert len(ledger) == 2 and ledger[1] in candidates


def test_tampered_entry_is_detected(truth: TruthStore, s3_client: Any) -> None:
    run_id, keys = new_run(truth)
    entries = chain(run_id, 3)
    for entry in entries:
        truth.append(keys, entry)
    # Re-canonicalised but edited content: the next entry's prev_hash no longer matches.
    edited = entries[1].model_copy(update={"body": {"reason_code": "EVIDENCE_MISSING", "detail": "edited"}})
    s3_client.put_object(Bucket=truth.bucket, Key=keys.record(1), Body=entry_bytes(edited))
    with pytest.raises(IntegrityError, match="seq 2"):
        truth.read_ledger(keys)


def test_reformatted_entry_is_detected(truth: TruthStore, s3_client: Any) -> None:
    run_id, keys = new_run(truth)
    entries = chain(run_id, 2)
    for entry in entries:
        truth.append(keys, entry)
    s3_client.put_object(Bucket=truth.bucket, Key=keys.record(1), Body=entry_bytes(entries[1]) + b" ")
    with pytest.raises(IntegrityError):
        truth.read_ledger(keys)


def test_deleted_middle_entry_is_detected(truth: TruthStore, s3_client: Any) -> None:
    run_id, keys = new_run(truth)
    for entry in chain(run_id, 4):
        truth.append(keys, entry)
    s3_client.delete_object(Bucket=truth.bucket, Key=keys.record(1))
    with pytest.raises(IntegrityError, match="missing entry seq 1"):
        truth.read_ledger(keys)


def test_reordered_entries_are_detected(truth: TruthStore, s3_client: Any) -> None:
    run_id, keys = new_run(truth)
    entries = chain(run_id, 3)
    for entry in entries:
        truth.append(keys, entry)
    # Swap the bytes of seq 1 and 2 (each also claims its own seq: caught as out of place).
    one, two = entry_bytes(entries[1]), entry_bytes(entries[2])
    s3_client.put_object(Bucket=truth.bucket, Key=keys.record(1), Body=two)
    s3_client.put_object(Bucket=truth.bucket, Key=keys.record(2), Body=one)
    with pytest.raises(IntegrityError):
        truth.read_ledger(keys)


def test_foreign_object_in_ledger_is_detected(truth: TruthStore, s3_client: Any) -> None:
    run_id, keys = new_run(truth)
    truth.append(keys, chain(run_id, 1)[0])
    s3_client.put_object(Bucket=truth.bucket, Key=keys.records_prefix + "junk.json", Body=b"{}")
    with pytest.raises(IntegrityError, match="unexpected object"):
        truth.read_ledger(keys)


def test_entry_of_another_run_is_refused(truth: TruthStore) -> None:
    _run_id, keys = new_run(truth)
    other_run = uuid.uuid4().hex
    with pytest.raises(IntegrityError):
        truth.append(keys, chain(other_run, 1)[0])


def test_list_runs(truth: TruthStore, s3_client: Any) -> None:
    runs = []
    for tenant, namespace in (("t1", "ns"), ("t1", "ns2"), ("t10", "ns")):
        run_id, keys = new_run(truth, tenant, namespace)
        truth.write_plan(keys, plan_bytes(make_plan(run_id, tenant, namespace)))
        for entry in chain(run_id, 2):
            truth.append(keys, entry)
        runs.append((tenant, namespace, run_id))
    # A run rejected before planning has a ledger but no plan: still listed.
    rejected_id, rejected_keys = new_run(truth, "t1", "ns")
    truth.append(rejected_keys, next_entry(rejected_id, None, kind=LedgerKind.REJECTED, at_ms=1, lease_epoch=1,
                                           body={"reason_code": "EQUIV_KEY_COLLISION", "detail": "x"}))
    runs.append(("t1", "ns", rejected_id))
    # Foreign junk under the prefix is skipped.
    s3_client.put_object(Bucket=truth.bucket, Key=f"{truth.prefix}/tenant/t1/README", Body=b"hi")
    assert sorted(truth.list_runs()) == sorted(runs)
    assert sorted(truth.list_runs("t1")) == sorted(r for r in runs if r[0] == "t1")
    assert [r[0] for r in truth.list_runs("t10")] == ["t10"]
    assert list(truth.list_runs("t2")) == []
