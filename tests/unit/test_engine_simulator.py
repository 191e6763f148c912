"""The reference engine's pure parts (contract §8, docs/engine-protocol.md): bundle layouts both
gate methods verify with SR's own verifier, the evidence of a request, the deterministic
success/failure choice, result construction, the per-partition queue and the CLI wiring."""

from __future__ import annotations

import ast
import contextlib
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from tests.harness.engine import engine_request_for
from tests.harness.paths import REPO
from worker.adapters.avro import AvroCodec
from worker.app.ports import Record
from worker.app.testing import InMemoryObjectStore, StubEventSink
from worker.app.verifier import EvidenceVerifier
from worker.cli.engine import cmd_simulate
from worker.cli.main import COMMAND_GROUPS, build_parser
from worker.core.canonical import canonical_json
from worker.core.engine import EngineRequest, EngineStatus
from worker.core.evidence import FLAG_NAME, INDEX_NAME, Classification, GateOutcome, classify
from worker.core.identity import attempt_id_for, run_id_of
from worker.core.keys import S3Location, parse_s3_uri
from worker.core.models import RunIntent
from worker.core.plan import PlanGate, build_plan, instance_values
from worker.core.policy import GateMethod, GateSpec, Policy, build_policy
from worker.embedded.demo import seed_example_evidence
from worker.engine import loop as loop_module
from worker.engine.bundles import flag_bytes, gate_layout, put_bundle_digest_gate, write_gate
from worker.engine.evidence import OUTPUT_PART, dependency_order, evidence_for, write_evidence
from worker.engine.loop import PendingRequest, PendingRequests, SimulatorLoop
from worker.engine.simulator import EngineSimulator, SimulatorConfig, draw, fails, finished_at, result_for
from worker.errors import BadIndexError, ConfigError, KafkaUnavailableError, S3UnavailableError, UnsafeKeyError
from worker.settings import Settings

from .conftest import make_intent

BUCKET = "sr-dev"
REQUESTED_AT = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)


def _request(policy: Policy, *, attempt_no: int = 1, **intent_changes: Any) -> EngineRequest:
    return engine_request_for(make_intent(**intent_changes), policy, attempt_no=attempt_no, requested_at=REQUESTED_AT)


def _verifier(store: InMemoryObjectStore) -> EvidenceVerifier:
    return EvidenceVerifier(store, concurrency=1)


def _keys(store: InMemoryObjectStore, root: str = "") -> list[str]:
    return store.keys(BUCKET, root)


# ----------------------------------------------------------------------------- bundle layouts
MEMBERS = {"b/part-1.csv": b"2\n", "a.csv": b"1\n", "b/part-0.csv": b""}


@pytest.mark.parametrize("method", list(GateMethod))
def test_a_layout_of_either_method_verifies_with_srs_verifier(method: GateMethod) -> None:
    store = InMemoryObjectStore()
    bundle = S3Location(BUCKET, "evidence/t1/x/gates/g")
    digest = write_gate(store.put, bundle, gate_layout(method, MEMBERS))
    gate = PlanGate(gate_id="g", method=method, bundle_uri=bundle.uri, depends_on=())
    result = _verifier(store).verify_gate(gate)
    assert result.outcome is GateOutcome.PASS
    assert result.expected_digest == result.computed_digest == digest
    assert result.member_count == 3


def test_bundle_digest_layout_is_members_in_ascii_order_then_the_flag() -> None:
    layout = gate_layout(GateMethod.SHA256_BUNDLE_DIGEST, MEMBERS)
    assert [rel for rel, _ in layout.objects] == ["a.csv", "b/part-0.csv", "b/part-1.csv", FLAG_NAME]
    assert layout.objects[-1][1] == flag_bytes(layout.digest) == f"sha256_hex={layout.digest}\n".encode()


def test_member_digest_layout_writes_a_canonical_index_before_the_flag() -> None:
    layout = gate_layout(GateMethod.SHA256_MEMBER_DIGEST_CONCAT, MEMBERS)
    assert [rel for rel, _ in layout.objects] == ["a.csv", "b/part-0.csv", "b/part-1.csv", INDEX_NAME, FLAG_NAME]
    index = dict(layout.objects)[INDEX_NAME]
    assert index == canonical_json(json.loads(index))
    assert [e["path"] for e in json.loads(index)] == ["a.csv", "b/part-0.csv", "b/part-1.csv"]


def test_a_layout_refuses_what_the_verifier_would_refuse() -> None:
    with pytest.raises(UnsafeKeyError):
        gate_layout(GateMethod.SHA256_BUNDLE_DIGEST, {FLAG_NAME: b"x"})
    with pytest.raises(UnsafeKeyError):
        gate_layout(GateMethod.SHA256_BUNDLE_DIGEST, {"../escape": b"x"})
    with pytest.raises(BadIndexError):
        gate_layout(GateMethod.SHA256_MEMBER_DIGEST_CONCAT, {INDEX_NAME: b"x"})
    with pytest.raises(BadIndexError):
        gate_layout(GateMethod.SHA256_MEMBER_DIGEST_CONCAT, {})


def test_the_demo_writes_its_sample_evidence_with_the_shared_writer(policy: Policy) -> None:
    store = InMemoryObjectStore()
    demo = make_intent(evidence_root="s3://sr-dev/evidence/t1/demo", output_ids=["transactions"])
    tampered = make_intent(evidence_root="s3://sr-dev/evidence/t1/tampered", output_ids=["transactions"])
    other = make_intent(evidence_root="s3://sr-dev/evidence/t1/demo", output_ids=["transactions"], scenario_id="x")
    seed_example_evidence(cast(Any, store), demo)
    seed_example_evidence(cast(Any, store), tampered, tamper=True)

    def outcome(intent: RunIntent, gate_id: str) -> GateOutcome:
        plan = build_plan(intent, policy, run_id=run_id_of(intent))
        gate = next(g for g in plan.gates if g.gate_id == gate_id)
        return _verifier(store).verify_gate(gate, instance_values(plan)).outcome

    assert outcome(demo, "gate_3A") is outcome(demo, "gate_6B") is GateOutcome.PASS
    assert outcome(tampered, "gate_6B") is GateOutcome.MISMATCH
    # gate_6B's receipt names the demo run: another scenario on the same root is refused.
    assert outcome(other, "gate_6B") is GateOutcome.INSTANCE_MISMATCH
    assert outcome(other, "gate_3A") is GateOutcome.PASS  # global
    empty_sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert put_bundle_digest_gate(store.put, BUCKET, "p/g", {"m": b""}) == empty_sha256
    assert store.read(BUCKET, f"p/g/{FLAG_NAME}") == flag_bytes(empty_sha256)


# ----------------------------------------------------------------------------- a request's evidence
def test_the_evidence_of_a_request_passes_the_plan_srs_worker_would_build(policy: Policy) -> None:
    intent = make_intent(output_ids=["transactions", "accounts"])
    request = engine_request_for(intent, policy, requested_at=REQUESTED_AT)
    store = InMemoryObjectStore()
    result = EngineSimulator(policy, store, SimulatorConfig(delay=0)).answer(request)
    assert result.status is EngineStatus.SUCCEEDED
    plan = build_plan(intent, policy, run_id=run_id_of(intent))
    results = _verifier(store).verify_plan(plan)
    assert {r.gate_id: r.outcome for r in results} == {"gate_3A": GateOutcome.PASS, "gate_6B": GateOutcome.PASS}
    assert classify(results, deadline=None, now=REQUESTED_AT).classification is Classification.COMPLETE
    root = parse_s3_uri(intent.evidence_root).prefix
    for output in plan.outputs:
        body = store.read(BUCKET, f"{parse_s3_uri(output.uri).prefix}/{OUTPUT_PART}")
        assert json.loads(body)["run_id"] == request.run_id
    assert {k.rsplit("/", 1)[-1] for k in _keys(store, f"{root}/gates/3A/")} == {
        "part-0000.csv", "part-0001.csv", INDEX_NAME, FLAG_NAME}


def test_writes_go_outputs_first_then_gates_dependencies_first_each_flag_last(policy: Policy) -> None:
    request = _request(policy, output_ids=["transactions"])
    keys = [loc.prefix.removeprefix("evidence/t1/run1/") for loc, _ in evidence_for(request, policy).objects()]
    assert keys == [
        f"outputs/transactions/{OUTPUT_PART}",
        "gates/3A/part-0000.csv", "gates/3A/part-0001.csv", f"gates/3A/{INDEX_NAME}", f"gates/3A/{FLAG_NAME}",
        # gate_6B is scoped: its receipt is a member, covered by the flag like the others.
        "gates/6B/_receipt.json", "gates/6B/part-0000.csv", "gates/6B/part-0001.csv", f"gates/6B/{FLAG_NAME}",
    ]
    receipt = dict(evidence_for(request, policy).objects())[
        next(loc for loc, _ in evidence_for(request, policy).objects() if loc.prefix.endswith("_receipt.json"))]
    assert json.loads(receipt) == {"gate_id": "gate_6B", "manifest_fingerprint": request.pins.manifest_fingerprint,
                                   "parameter_hash": request.pins.parameter_hash,
                                   "scenario_id": request.scenario_id, "seed": request.pins.seed}


def test_only_the_gates_the_outputs_need_are_written(policy: Policy) -> None:
    evidence = evidence_for(_request(policy, output_ids=["accounts"]), policy)
    assert [g.gate_id for g in evidence.gates] == ["gate_3A"]
    assert [loc.prefix.rsplit("/", 2)[-2] for loc, _ in evidence.outputs] == ["accounts"]


def test_dependency_order_puts_dependencies_first_then_ids() -> None:
    specs = [GateSpec(gate_id="a", method=GateMethod.SHA256_BUNDLE_DIGEST, bundle="g/a", depends_on=("c",)),
             GateSpec(gate_id="b", method=GateMethod.SHA256_BUNDLE_DIGEST, bundle="g/b"),
             GateSpec(gate_id="c", method=GateMethod.SHA256_BUNDLE_DIGEST, bundle="g/c", depends_on=("b",)),
             GateSpec(gate_id="d", method=GateMethod.SHA256_BUNDLE_DIGEST, bundle="g/d")]
    policy = build_policy({"o": ["a", "d"]}, specs)
    assert dependency_order(policy.gates, policy.required_gates(["o"])) == ["b", "c", "a", "d"]


def test_evidence_depends_on_the_run_not_the_attempt(policy: Policy) -> None:
    first, second = _request(policy, attempt_no=1), _request(policy, attempt_no=2)
    assert first.attempt_id != second.attempt_id
    assert evidence_for(first, policy).objects() == evidence_for(second, policy).objects()
    store = InMemoryObjectStore()
    evidence = evidence_for(first, policy)
    assert write_evidence(store, evidence) == write_evidence(store, evidence_for(second, policy)) == len(
        evidence.objects()) == len(_keys(store))


# ----------------------------------------------------------------------------- answers
def test_the_draw_is_a_pure_function_of_seed_and_attempt() -> None:
    attempt = attempt_id_for("0123456789abcdef0123456789abcdef", 1)
    assert draw(7, attempt) == draw(7, attempt)
    assert draw(7, attempt) != draw(8, attempt)
    assert 0.0 <= draw(7, attempt) < 1.0
    never, always = SimulatorConfig(failure_rate=0.0), SimulatorConfig(failure_rate=1.0)
    assert not fails(never, attempt) and fails(always, attempt)


def test_the_failure_rate_is_the_share_of_failed_attempts() -> None:
    config = SimulatorConfig(failure_rate=0.2, seed=3)
    attempts = [attempt_id_for(f"{n:032x}", 1) for n in range(4000)]
    share = sum(fails(config, a) for a in attempts) / len(attempts)
    assert 0.17 < share < 0.23


def test_a_redelivered_request_gets_the_same_result_bytes(policy: Policy) -> None:
    codec = AvroCodec()
    store = InMemoryObjectStore()
    simulator = EngineSimulator(policy, store, SimulatorConfig(delay=2.5, seed=1))
    request = _request(policy)
    first = codec.encode_engine_result(simulator.answer(request))
    written = {k: store.read(BUCKET, k) for k in _keys(store)}
    again = codec.encode_engine_result(simulator.answer(request))
    assert again == first
    assert {k: store.read(BUCKET, k) for k in _keys(store)} == written  # write-once no-ops
    result = codec.decode_engine_result(first)
    assert result.finished_at == finished_at(request, 2.5) == REQUESTED_AT + timedelta(milliseconds=2500)
    assert (result.attempt_id, result.run_id, result.reported_by) == (
        request.attempt_id, request.run_id, "sr-engine-simulator")


def test_a_failed_attempt_writes_nothing(policy: Policy) -> None:
    store = InMemoryObjectStore()
    request = _request(policy)
    result = EngineSimulator(policy, store, SimulatorConfig(failure_rate=1.0)).answer(request)
    assert result.status is EngineStatus.FAILED
    assert result.detail.startswith("SIMULATED_FAILURE: attempt 1 drew ")
    assert _keys(store) == []


def test_a_request_planned_under_another_policy_fails_without_writing(policy: Policy) -> None:
    store = InMemoryObjectStore()
    request = _request(policy).model_copy(update={"policy_rev": "e" * 64})
    result = EngineSimulator(policy, store, SimulatorConfig()).answer(request)
    assert result.status is EngineStatus.FAILED
    assert result.detail.startswith("POLICY_MISMATCH")
    assert _keys(store) == []


def test_someone_elses_bytes_at_a_key_fail_the_attempt_and_no_flag_is_faked(policy: Policy) -> None:
    store = InMemoryObjectStore()
    request = _request(policy, output_ids=["transactions"])
    store.put(BUCKET, "evidence/t1/run1/gates/6B/part-0001.csv", b"not ours")
    result = EngineSimulator(policy, store, SimulatorConfig()).answer(request)
    assert result.status is EngineStatus.FAILED
    assert result.detail.startswith("DRIFT: ")
    assert f"evidence/t1/run1/gates/6B/{FLAG_NAME}" not in _keys(store)
    assert f"evidence/t1/run1/gates/3A/{FLAG_NAME}" in _keys(store)  # the dependency was complete


def test_a_transient_store_fault_is_no_answer(policy: Policy) -> None:
    store = InMemoryObjectStore()
    store.fail_next("PUT", S3UnavailableError("slow down"))
    with pytest.raises(S3UnavailableError):
        EngineSimulator(policy, store, SimulatorConfig()).answer(_request(policy))
    assert EngineSimulator(policy, store, SimulatorConfig()).answer(_request(policy)).status is EngineStatus.SUCCEEDED


def test_result_for_names_the_attempt(policy: Policy) -> None:
    request = _request(policy, attempt_no=3)
    result = result_for(request, SimulatorConfig(delay=0, reported_by="engine-7"), EngineStatus.FAILED, "x" * 5000)
    assert (result.attempt_id, result.run_id) == (attempt_id_for(request.run_id, 3), request.run_id)
    assert result.finished_at == request.requested_at
    assert len(result.detail) == 4096 and result.reported_by == "engine-7"


@pytest.mark.parametrize("changes", [{"delay": -1.0}, {"delay": float("nan")}, {"failure_rate": 1.5},
                                     {"failure_rate": -0.1}, {"reported_by": "has space"}])
def test_configuration_out_of_range_is_a_config_error(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SimulatorConfig(**changes)


# ----------------------------------------------------------------------------- the loop's queue
def _item(partition: int, offset: int, due: float) -> PendingRequest:
    record = Record(topic="req", partition=partition, offset=offset, key=None, value=b"", headers=(),
                    timestamp_ms=None)
    return PendingRequest(record, due=due)


def test_pending_requests_keep_partition_order_and_heads_compete_by_due_time() -> None:
    pending = PendingRequests()
    a0, a1, b0 = _item(0, 10, due=5.0), _item(0, 11, due=1.0), _item(1, 3, due=2.0)
    for item in (a0, a1, b0):
        pending.add(item)
    assert pending.next() is b0  # a1 is due earlier but waits behind a0
    pending.pop(b0)
    assert pending.next() is a0
    with pytest.raises(RuntimeError):
        pending.pop(a1)
    pending.pop(a0)
    assert pending.next() is a1
    assert pending.drop([("req", 0), ("req", 7)]) == 1
    assert pending.next() is None and len(pending) == 0


# ----------------------------------------------------------------------------- the command
def test_sr_engine_simulate_is_wired() -> None:
    assert "engine" in COMMAND_GROUPS
    args = build_parser().parse_args(["engine", "simulate", "--delay", "0", "--failure-rate", "0.2", "--seed", "9",
                                      "--max-requests", "2", "--group-id", "g1"])
    assert args.handler is cmd_simulate
    assert (args.delay, args.failure_rate, args.seed, args.max_requests, args.group_id) == (0.0, 0.2, 9, 2, "g1")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["engine", "simulate", "--max-requests", "0"])


@pytest.mark.parametrize("module", ["bundles", "evidence", "simulator"])
def test_the_engine_logic_is_pure(module: str) -> None:
    tree = ast.parse((REPO / "worker" / "engine" / f"{module}.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    inner = sorted(name for name in imported if name.startswith("worker"))
    assert all(name.startswith(("worker.core", "worker.errors", "worker.engine")) for name in inner), inner


def test_a_pending_request_backs_off_doubling_up_to_a_cap() -> None:
    item = _item(0, 0, due=0.0)
    waits = [item.retry_later(100.0) for _ in range(7)]
    assert waits == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert item.due == 105.0


# ----------------------------------------------------------------------------- the loop, on fakes
REQUESTS, RESULTS = "engine-requests", "engine-results"


class ScriptedConsumer:
    """Stands in for the group consumer: hands out fed records, logs stores and commits."""

    def __init__(self, events: list[str], records: list[Record]) -> None:
        self.events = events
        self._queue = list(records)

    def __enter__(self) -> ScriptedConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.events.append("close")

    def poll_batch(self, max_messages: int, timeout: float) -> list[Record]:
        batch, self._queue = self._queue[:max_messages], self._queue[max_messages:]
        if not batch:
            time.sleep(min(timeout, 0.01))
        return batch

    def store(self, topic: str, partition: int, next_offset: int) -> None:
        self.events.append(f"store {partition}:{next_offset}")

    def commit(self) -> None:
        self.events.append("commit")


class LoggingSink(StubEventSink):
    """The stub broker, logging each acknowledged send into the shared event list."""

    def __init__(self, events: list[str]) -> None:
        super().__init__(partitions=1)
        self.events = events

    def send_and_wait(self, topic: str, *, key: bytes | None, value: bytes, headers: Any = None,
                      timeout: float | None = None) -> Any:
        delivered = super().send_and_wait(topic, key=key, value=value, headers=headers, timeout=timeout)
        self.events.append(f"ack {topic}")
        return delivered


def _records(frames: list[bytes]) -> list[Record]:
    return [Record(REQUESTS, 0, offset, None, frame, (), None) for offset, frame in enumerate(frames)]


def _run_loop(monkeypatch: pytest.MonkeyPatch, policy: Policy, records: list[Record], *, max_requests: int,
              sink_failures: int = 0) -> tuple[list[str], LoggingSink, SimulatorLoop]:
    events: list[str] = []
    sink = LoggingSink(events)
    sink.fail_next(sink_failures)
    store = InMemoryObjectStore()
    monkeypatch.setattr(loop_module, "RETRY_BACKOFF_START", 0.01)
    monkeypatch.setattr(loop_module, "group_consumer", lambda *a, **k: ScriptedConsumer(events, records))
    monkeypatch.setattr(loop_module, "event_producer", lambda s: contextlib.nullcontext(sink))
    monkeypatch.setattr(loop_module, "object_store", lambda s: contextlib.nullcontext(store))
    settings = Settings(poll_timeout=0.01, commit_interval=0.01,
                        topics={"engine_requests": REQUESTS, "engine_results": RESULTS})
    loop = SimulatorLoop(settings, policy, SimulatorConfig(delay=0), max_requests=max_requests)
    thread = threading.Thread(target=loop.run, name="sr-test-engine")
    thread.start()
    thread.join(10)
    if thread.is_alive():
        loop.stop()
        thread.join(5)
        raise AssertionError(f"the loop did not finish: {events}")
    return events, sink, loop


def test_the_loop_stores_an_offset_only_after_its_result_is_acknowledged(monkeypatch: pytest.MonkeyPatch,
                                                                         policy: Policy) -> None:
    codec = AvroCodec()
    first, second = _request(policy), _request(policy, scenario_id="other")
    frames = [codec.encode_engine_request(first), b"not avro", codec.encode_engine_request(second),
              codec.encode_engine_request(first)]
    events, sink, loop = _run_loop(monkeypatch, policy, _records(frames), max_requests=3, sink_failures=2)
    answers = [m.value for m in sink.messages(RESULTS)]
    assert loop.answered == 3 and len(answers) == 3
    assert answers[0] == answers[2]  # the re-delivered request, answered the same way
    assert [codec.decode_engine_result(a).run_id for a in answers] == [first.run_id, second.run_id, first.run_id]
    assert {m.key for m in sink.messages(RESULTS)} == {first.run_id.encode(), second.run_id.encode()}
    stores = [e for e in events if e.startswith(("store", "ack"))]
    # Two refused sends were retried; the undecodable record is skipped right after the first answer.
    assert stores == [f"ack {RESULTS}", "store 0:1", "store 0:2", f"ack {RESULTS}", "store 0:3",
                      f"ack {RESULTS}", "store 0:4"]
    assert events[-2:] == ["commit", "close"]


def test_the_loop_answers_nothing_it_cannot_deliver(monkeypatch: pytest.MonkeyPatch, policy: Policy) -> None:
    codec = AvroCodec()
    events: list[str] = []
    sink = LoggingSink(events)
    sink.fail_next(1000, KafkaUnavailableError("broker away"))
    records = _records([codec.encode_engine_request(_request(policy))])
    monkeypatch.setattr(loop_module, "group_consumer", lambda *a, **k: ScriptedConsumer(events, records))
    monkeypatch.setattr(loop_module, "event_producer", lambda s: contextlib.nullcontext(sink))
    monkeypatch.setattr(loop_module, "object_store", lambda s: contextlib.nullcontext(InMemoryObjectStore()))
    loop = SimulatorLoop(Settings(poll_timeout=0.01, topics={"engine_requests": REQUESTS}), policy,
                         SimulatorConfig(delay=0))
    thread = threading.Thread(target=loop.run, name="sr-test-engine")
    thread.start()
    time.sleep(0.3)
    loop.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert loop.answered == 0 and not [e for e in events if e.startswith("store")]
    assert events[-2:] == ["commit", "close"]
