"""The harness's one evidence writer: what it writes, in which order, and that SR's verifier agrees."""

from __future__ import annotations

import pytest

from tests.harness.evidence import (
    FLAG_NAME,
    GATE_3A_MEMBERS,
    ExampleEvidence,
    bundle_gate,
    evidence_root_uri,
    member_concat_gate,
    synthetic_example_evidence,
    write_objects,
)
from worker.app.testing import InMemoryObjectStore
from worker.app.verifier import EvidenceVerifier
from worker.core.evidence import GateOutcome
from worker.core.plan import PlanGate
from worker.core.policy import GateMethod

BUCKET = "sr-evidence"


class RecordingSink:
    """An ObjectSink that remembers the order of its PUTs."""

    def __init__(self) -> None:
        self.puts: list[tuple[str, str, bytes]] = []

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.puts.append((bucket, key, body))


def _gate(root: str, rel: str, method: GateMethod) -> PlanGate:
    return PlanGate(gate_id=f"gate_{rel.rsplit('/', 1)[-1]}", method=method,
                    bundle_uri=f"{evidence_root_uri(BUCKET, root)}/{rel}", depends_on=())


def _verify(store: InMemoryObjectStore, root: str) -> tuple[GateOutcome, GateOutcome]:
    verifier = EvidenceVerifier(store, concurrency=1)
    return (verifier.verify_gate(_gate(root, "gates/3A", GateMethod.SHA256_MEMBER_DIGEST_CONCAT)).outcome,
            verifier.verify_gate(_gate(root, "gates/6B", GateMethod.SHA256_BUNDLE_DIGEST)).outcome)


def test_members_first_flag_last_then_tampering() -> None:
    bundle = member_concat_gate("evidence/t1/x", "gates/3A", {"a": b"1", "b": b"2"},
                                tamper_after_flag={"a": b"evil"})
    keys = [key for key, _ in bundle.objects()]
    assert keys == ["evidence/t1/x/gates/3A/a", "evidence/t1/x/gates/3A/b", "evidence/t1/x/gates/3A/index.json",
                    f"evidence/t1/x/gates/3A/{FLAG_NAME}", "evidence/t1/x/gates/3A/a"]
    assert bundle_gate("r", "g", {"a": b"1"}, flag=None).flag == ()


def test_example_evidence_verifies_and_tampering_is_caught() -> None:
    store = InMemoryObjectStore()
    write = ExampleEvidence(store, BUCKET, lambda name: f"evidence/t1/{name}")
    write("ok")
    write("bad", tamper="6B")
    write("malformed", gates=("6B",), flag_6b=b"sha256_hex=nope\n")
    assert _verify(store, "evidence/t1/ok") == (GateOutcome.PASS, GateOutcome.PASS)
    assert _verify(store, "evidence/t1/bad") == (GateOutcome.PASS, GateOutcome.MISMATCH)
    assert _verify(store, "evidence/t1/malformed")[1] is GateOutcome.BAD_FLAG
    assert not store.keys(BUCKET, "evidence/t1/malformed/gates/3A/")


@pytest.mark.parametrize("concurrency", [1, 8])
def test_synthetic_evidence_verifies_with_flags_last(concurrency: int) -> None:
    objects = synthetic_example_evidence("evidence/t1/s", members=3, member_size=100, salt="x")
    assert [key.rsplit("/", 1)[-1] for key, _ in objects[-2:]] == [FLAG_NAME, FLAG_NAME]
    store = InMemoryObjectStore()
    assert write_objects(store, BUCKET, objects, concurrency=concurrency) == len(objects)
    assert _verify(store, "evidence/t1/s") == (GateOutcome.PASS, GateOutcome.PASS)


def test_any_put_sink_gets_the_same_writes() -> None:
    sink = RecordingSink()
    ExampleEvidence(sink, BUCKET, lambda name: f"evidence/t1/{name}")("r", gates=("3A",))
    assert [key.rsplit("/", 1)[-1] for _, key, _ in sink.puts] == [*(k.rsplit("/", 1)[-1] for k in GATE_3A_MEMBERS),
                                                                   "index.json", FLAG_NAME]
