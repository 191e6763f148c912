"""Evidence verification (contract §4) against a real S3 server, with real uploaded bundles."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from tests.harness.evidence import bundle_uri, flag_bytes, index_bytes, upload_bundle_gate, upload_member_concat_gate
from tests.harness.servers import Servers, s3_config_for
from worker.adapters.s3 import ObjectStore, S3Config
from worker.app.verifier import EvidenceVerifier, MiB
from worker.core.evidence import Classification, GateOutcome, GateResult, classify
from worker.core.models import Pins, Strategy
from worker.core.plan import Plan, PlanGate
from worker.core.policy import GateMethod
from worker.errors import PreconditionFailedError, S3AccessError, S3UnavailableError

pytestmark = pytest.mark.integration

BUNDLE = GateMethod.SHA256_BUNDLE_DIGEST
CONCAT = GateMethod.SHA256_MEMBER_DIGEST_CONCAT


@pytest.fixture
def store(servers: Servers, s3_client: Any) -> Iterator[ObjectStore]:
    with ObjectStore(s3_config_for(servers)) as opened:
        yield opened


@pytest.fixture
def verifier(store: ObjectStore) -> Iterator[EvidenceVerifier]:
    with EvidenceVerifier(store, concurrency=8) as made:
        yield made


@pytest.fixture
def bucket(servers: Servers) -> str:
    return servers.s3_bucket


@pytest.fixture
def root(s3_prefix: str) -> str:
    return f"evidence/t1/{s3_prefix}"


def gate(bucket: str, root: str, rel: str, method: GateMethod, gate_id: str = "gate_x") -> PlanGate:
    return PlanGate(gate_id=gate_id, method=method, bundle_uri=bundle_uri(bucket, root, rel), depends_on=())


def members4(tag: str) -> dict[str, bytes]:
    return {f"part-{i:04d}.parquet": f"{tag}-member-{i}-".encode() * (i + 1) * 100 for i in range(4)}


# --------------------------------------------------------------------------- sha256_bundle_digest
def test_bundle_digest_pass(verifier: EvidenceVerifier, s3_client: Any, bucket: str, root: str) -> None:
    members = {"part-1": b"one", "Z": b"capital first", "a/nested": b"nested", "part-0": b""}
    digest = upload_bundle_gate(s3_client, bucket, root, "gates/6B", members)
    # A sibling bundle whose name extends ours must not leak into our listing.
    upload_bundle_gate(s3_client, bucket, root, "gates/6B0", {"intruder": b"x"})
    result = verifier.verify_gate(gate(bucket, root, "gates/6B", BUNDLE))
    assert result.outcome is GateOutcome.PASS, result.detail
    assert result.expected_digest == result.computed_digest == digest
    assert digest == hashlib.sha256(b"capital first" + b"nested" + b"" + b"one").hexdigest()
    assert result.member_count == 4
    assert result.byte_count == sum(len(v) for v in members.values())


def test_bundle_digest_pass_with_large_streamed_members(
    verifier: EvidenceVerifier, s3_client: Any, bucket: str, root: str
) -> None:
    big = bytes(range(256)) * (5 * 4096)  # 5 MiB: above the prefetch limit, streamed in turn
    members = {"a": b"small-a", "b": big, "c": b"small-c", "d": big[::-1], "e": b"tail"}
    digest = upload_bundle_gate(s3_client, bucket, root, "gates/big", members)
    before = verifier.bytes_verified
    result = verifier.verify_gate(gate(bucket, root, "gates/big", BUNDLE))
    assert result.outcome is GateOutcome.PASS, result.detail
    assert result.computed_digest == digest
    assert result.byte_count == sum(len(v) for v in members.values())
    assert verifier.bytes_verified - before == result.byte_count


def test_large_members_are_read_as_concurrent_pinned_ranges(
    verifier: EvidenceVerifier, store: ObjectStore, s3_client: Any, bucket: str, root: str
) -> None:
    """A 9 MiB member is read as ranges of PREFETCH_MAX_MEMBER_BYTES (4 + 4 + 1 MiB), hashed in
    order: the digest is the whole member's, and the request count says how it was read."""
    big = hashlib.sha256(b"big").digest() * (9 * MiB // 32)
    members = {"a": b"small-a", "b": big, "c": b"small-c"}
    digest = upload_bundle_gate(s3_client, bucket, root, "gates/ranged", members)
    store.counter.reset()
    result = verifier.verify_gate(gate(bucket, root, "gates/ranged", BUNDLE))
    assert result.outcome is GateOutcome.PASS, result.detail
    assert result.computed_digest == digest and result.byte_count == sum(len(v) for v in members.values())
    snap = store.counter.snapshot()
    # 1 flag GET, 2 small members, 3 ranges of the big one; one LIST.
    assert (snap["LIST"], snap["GET"]) == (1, 1 + 2 + 3), snap
    assert snap["bytes_in"] == result.byte_count + len(s3_client.get_object(
        Bucket=bucket, Key=f"{root}/gates/ranged/_passed.flag")["Body"].read())


def test_a_large_member_replaced_after_listing_is_a_mismatch(
    verifier: EvidenceVerifier, store: ObjectStore, s3_client: Any, bucket: str, root: str
) -> None:
    """The ranges are pinned to the listed version: a member rewritten between the LIST and its
    reads (same size, other bytes) fails closed instead of mixing versions."""
    big = b"\x01" * (6 * MiB)
    upload_bundle_gate(s3_client, bucket, root, "gates/swap", {"big": big})
    key = f"{root}/gates/swap/big"
    listed = next(m for m in store.list(bucket, f"{root}/gates/swap/") if m.key == key)
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"\x02" * (6 * MiB))
    with pytest.raises(PreconditionFailedError):
        verifier._hash_in_order(bucket, [listed])
    # Through the public path the same race is a MISMATCH verdict (never PASS, never an error).
    upload_bundle_gate(s3_client, bucket, root, "gates/swap2", {"big": big})
    original = store.get_range

    def swap_then_read(*args: Any, **kwargs: Any) -> list[bytes | memoryview]:
        s3_client.put_object(Bucket=bucket, Key=f"{root}/gates/swap2/big", Body=b"\x03" * (6 * MiB))
        store.get_range = original  # type: ignore[method-assign]
        return original(*args, **kwargs)

    store.get_range = swap_then_read  # type: ignore[method-assign]
    result = verifier.verify_gate(gate(bucket, root, "gates/swap2", BUNDLE))
    assert result.outcome is GateOutcome.MISMATCH, result.detail


def test_bundle_missing_flag(verifier: EvidenceVerifier, store: ObjectStore, s3_client: Any, bucket: str,
                             root: str) -> None:
    upload_bundle_gate(s3_client, bucket, root, "gates/6B", {"m": b"x"}, flag=None)
    store.counter.reset()
    result = verifier.verify_gate(gate(bucket, root, "gates/6B", BUNDLE))
    assert result.outcome is GateOutcome.MISSING
    assert store.counter.requests == 1  # one LIST tells us the flag is absent
    assert verifier.verify_gate(gate(bucket, root, "gates/none", BUNDLE)).outcome is GateOutcome.MISSING


def test_bundle_tampered_after_flag(verifier: EvidenceVerifier, s3_client: Any, bucket: str, root: str) -> None:
    members = {"m1": b"alpha", "m2": b"beta"}
    digest = upload_bundle_gate(s3_client, bucket, root, "gates/t", members, tamper_after_flag={"m2": b"BETA"})
    result = verifier.verify_gate(gate(bucket, root, "gates/t", BUNDLE))
    assert result.outcome is GateOutcome.MISMATCH
    assert result.expected_digest == digest and result.computed_digest != digest
    # A member added after the flag is a mismatch too.
    upload_bundle_gate(s3_client, bucket, root, "gates/u", members, tamper_after_flag={"m3": b"late"})
    assert verifier.verify_gate(gate(bucket, root, "gates/u", BUNDLE)).outcome is GateOutcome.MISMATCH


@pytest.mark.parametrize("flag", [b"sha256_hex=" + b"A" * 64 + b"\n", b"sha256_hex=abc\n", b"",
                                  b"sha256_hex=" + b"a" * 64 + b"\r\n", b"\xef\xbb\xbfsha256_hex=" + b"a" * 64])
def test_bundle_malformed_flag(verifier: EvidenceVerifier, s3_client: Any, bucket: str, root: str,
                               flag: bytes) -> None:
    upload_bundle_gate(s3_client, bucket, root, "gates/f", {"m": b"x"}, flag=flag)
    result = verifier.verify_gate(gate(bucket, root, "gates/f", BUNDLE))
    assert result.outcome is GateOutcome.BAD_FLAG
    assert result.expected_digest is None


def test_oversize_flag_and_member(store: ObjectStore, s3_client: Any, bucket: str, root: str) -> None:
    upload_bundle_gate(s3_client, bucket, root, "gates/big-flag", {"m": b"x"}, flag=b"x" * 4096)
    upload_member_concat_gate(s3_client, bucket, root, "gates/big-flag-c", {"m": b"x"}, flag=b"x" * 4096)
    upload_bundle_gate(s3_client, bucket, root, "gates/big-member", {"m": b"y" * 2048, "n": b"ok"})
    upload_member_concat_gate(s3_client, bucket, root, "gates/big-member-c", {"m": b"y" * 2048, "n": b"ok"})
    with EvidenceVerifier(store, max_meta_bytes=1024, max_member_bytes=1024) as small:
        for rel, method in (("gates/big-flag", BUNDLE), ("gates/big-flag-c", CONCAT),
                            ("gates/big-member", BUNDLE), ("gates/big-member-c", CONCAT)):
            result = small.verify_gate(gate(bucket, root, rel, method))
            assert result.outcome is GateOutcome.TOO_LARGE, (rel, result)
    assert store.counter.snapshot()["bytes_in"] < 4096  # nothing oversized was read


def test_empty_bundle(verifier: EvidenceVerifier, s3_client: Any, bucket: str, root: str) -> None:
    empty = hashlib.sha256(b"").hexdigest()
    upload_bundle_gate(s3_client, bucket, root, "gates/e1", {})
    result = verifier.verify_gate(gate(bucket, root, "gates/e1", BUNDLE))
    assert result.outcome is GateOutcome.PASS and result.computed_digest == empty and result.member_count == 0
    upload_bundle_gate(s3_client, bucket, root, "gates/e2", {}, flag=flag_bytes("1" * 64))
    assert verifier.verify_gate(gate(bucket, root, "gates/e2", BUNDLE)).outcome is GateOutcome.MISMATCH


def test_bundle_with_unsafe_member_key(verifier: EvidenceVerifier, s3_client: Any, bucket: str, root: str) -> None:
    upload_bundle_gate(s3_client, bucket, root, "gates/w", {"ok": b"x", "bad name": b"y"})
    assert verifier.verify_gate(gate(bucket, root, "gates/w", BUNDLE)).outcome is GateOutcome.BAD_INDEX


# --------------------------------------------------------------------------- sha256_member_digest_concat
def test_member_concat_pass(verifier: EvidenceVerifier, store: ObjectStore, s3_client: Any, bucket: str,
                            root: str) -> None:
    members = members4("c")
    order = ["part-0002.parquet", "part-0000.parquet", "part-0003.parquet", "part-0001.parquet"]
    digest = upload_member_concat_gate(s3_client, bucket, root, "gates/3A", members, order=order)
    # Objects in the bundle that the index does not list are not part of the digest.
    s3_client.put_object(Bucket=bucket, Key=f"{root}/gates/3A/_SUCCESS", Body=b"")
    store.counter.reset()
    result = verifier.verify_gate(gate(bucket, root, "gates/3A", CONCAT))
    assert result.outcome is GateOutcome.PASS, result.detail
    assert result.expected_digest == result.computed_digest == digest
    assert result.member_count == 4 and result.byte_count == sum(len(v) for v in members.values())
    snap = store.counter.snapshot()
    assert (snap["GET"], snap["LIST"], snap["HEAD"]) == (6, 0, 0)  # flag + index + 4 members


def test_member_concat_missing(verifier: EvidenceVerifier, s3_client: Any, bucket: str, root: str) -> None:
    members = members4("m")
    upload_member_concat_gate(s3_client, bucket, root, "gates/nf", members, flag=None)
    assert verifier.verify_gate(gate(bucket, root, "gates/nf", CONCAT)).outcome is GateOutcome.MISSING
    upload_member_concat_gate(s3_client, bucket, root, "gates/ni", members, omit_index=True)
    result = verifier.verify_gate(gate(bucket, root, "gates/ni", CONCAT))
    assert result.outcome is GateOutcome.MISSING and "index.json" in result.detail
    upload_member_concat_gate(s3_client, bucket, root, "gates/nm", members, omit_members=["part-0002.parquet"])
    result = verifier.verify_gate(gate(bucket, root, "gates/nm", CONCAT))
    assert result.outcome is GateOutcome.MISSING and "part-0002.parquet" in result.detail


def test_member_concat_tampered_member(verifier: EvidenceVerifier, s3_client: Any, bucket: str, root: str) -> None:
    members = members4("t")
    upload_member_concat_gate(s3_client, bucket, root, "gates/tm", members,
                              tamper_after_flag={"part-0001.parquet": b"evil"})
    result = verifier.verify_gate(gate(bucket, root, "gates/tm", CONCAT))
    assert result.outcome is GateOutcome.MISMATCH and "part-0001.parquet" in result.detail
    # A tampered member outranks a missing one.
    upload_member_concat_gate(s3_client, bucket, root, "gates/tm2", members, omit_members=["part-0000.parquet"],
                              tamper_after_flag={"part-0003.parquet": b"evil"})
    assert verifier.verify_gate(gate(bucket, root, "gates/tm2", CONCAT)).outcome is GateOutcome.MISMATCH


def test_member_concat_index_contradicts_flag(verifier: EvidenceVerifier, store: ObjectStore, s3_client: Any,
                                              bucket: str, root: str) -> None:
    members = members4("i")
    upload_member_concat_gate(s3_client, bucket, root, "gates/if", members, flag=flag_bytes("2" * 64))
    store.counter.reset()
    result = verifier.verify_gate(gate(bucket, root, "gates/if", CONCAT))
    assert result.outcome is GateOutcome.MISMATCH
    assert store.counter.snapshot()["GET"] == 2  # decided from flag + index, no member read
    # Reordered index: same members, different concatenation → mismatch against the flag.
    digest = upload_member_concat_gate(s3_client, bucket, root, "gates/io", members)
    s3_client.put_object(Bucket=bucket, Key=f"{root}/gates/io/index.json",
                         Body=index_bytes(members, sorted(members, reverse=True)))
    result = verifier.verify_gate(gate(bucket, root, "gates/io", CONCAT))
    assert result.outcome is GateOutcome.MISMATCH and result.expected_digest == digest


@pytest.mark.parametrize("index", [b"not json", b"[]", b"{}", b'[{"path": "../x", "sha256_hex": "' + b"a" * 64 + b'"}]',
                                   b'[{"path": "m", "sha256_hex": "ABC"}]',
                                   b'[{"path": "m", "sha256_hex": "' + b"a" * 64 + b'", "extra": 1}]'])
def test_member_concat_malformed_index(verifier: EvidenceVerifier, s3_client: Any, bucket: str, root: str,
                                       index: bytes) -> None:
    upload_member_concat_gate(s3_client, bucket, root, "gates/bi", {"m": b"x"}, index=index)
    assert verifier.verify_gate(gate(bucket, root, "gates/bi", CONCAT)).outcome is GateOutcome.BAD_INDEX


def test_member_concat_malformed_flag(verifier: EvidenceVerifier, s3_client: Any, bucket: str, root: str) -> None:
    upload_member_concat_gate(s3_client, bucket, root, "gates/bf", {"m": b"x"}, flag=b"sha256_hex=\n")
    assert verifier.verify_gate(gate(bucket, root, "gates/bf", CONCAT)).outcome is GateOutcome.BAD_FLAG


# --------------------------------------------------------------------------- plan
def make_plan(gates: tuple[PlanGate, ...]) -> Plan:
    return Plan(
        run_id="0" * 32, run_equivalence_key="c" * 64, intent_fingerprint="d" * 64, tenant_id="t1",
        namespace="ns", scenario_id="sc",
        pins=Pins(manifest_fingerprint="a" * 64, parameter_hash="b" * 64, seed=1),
        window_start_ms=0, window_end_ms=1, output_ids=("o",), strategy=Strategy.AUTO,
        evidence_root="s3://bucket/evidence/t1/x", policy_rev="e" * 64, gates=gates, outputs=(),
    )


def test_verify_plan_two_gates_four_members(verifier: EvidenceVerifier, store: ObjectStore, s3_client: Any,
                                            bucket: str, root: str) -> None:
    upload_bundle_gate(s3_client, bucket, root, "gates/6B", members4("b"))
    upload_member_concat_gate(s3_client, bucket, root, "gates/3A", members4("c"))
    plan = make_plan((gate(bucket, root, "gates/6B", BUNDLE, "gate_6B"),
                      gate(bucket, root, "gates/3A", CONCAT, "gate_3A")))
    store.counter.reset()
    before = verifier.bytes_verified
    results = verifier.verify_plan(plan)
    snap = store.counter.snapshot()
    assert [r.gate_id for r in results] == ["gate_3A", "gate_6B"]
    assert all(r.outcome is GateOutcome.PASS for r in results)
    total = sum(r.byte_count for r in results)
    assert verifier.bytes_verified - before == total
    # bundle: LIST + flag + 4 members; concat: flag + index + 4 members.
    assert snap == {"PUT": 0, "GET": 11, "HEAD": 0, "LIST": 1, "DELETE": 0,
                    "bytes_in": snap["bytes_in"], "bytes_out": 0}
    assert classify(results, deadline=None, now=datetime.now(UTC)).classification is Classification.COMPLETE


def test_verify_plan_mixed_outcomes(verifier: EvidenceVerifier, s3_client: Any, bucket: str, root: str) -> None:
    upload_bundle_gate(s3_client, bucket, root, "gates/ok", {"m": b"x"})
    gates = tuple(
        gate(bucket, root, rel, BUNDLE, gid) for gid, rel in (("g_ok", "gates/ok"), ("g_missing", "gates/absent"))
    )
    results: list[GateResult] = verifier.verify_plan(make_plan(gates))
    assert {r.gate_id: r.outcome for r in results} == {"g_missing": GateOutcome.MISSING, "g_ok": GateOutcome.PASS}


# --------------------------------------------------------------------------- fail closed on S3 faults
def test_unreachable_store_raises_instead_of_verdict(root: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = S3Config(endpoint_url=f"http://127.0.0.1:{port}", access_key_id=SecretStr("k"),
                      secret_access_key=SecretStr("s"), max_attempts=2, backoff_initial=0.001, backoff_max=0.01)
    with ObjectStore(config) as store, EvidenceVerifier(store) as verifier:
        for method in (BUNDLE, CONCAT):
            with pytest.raises(S3UnavailableError):
                verifier.verify_gate(gate("sr-test-bucket", root, "gates/x", method))
        with pytest.raises(S3UnavailableError):
            verifier.verify_plan(make_plan((gate("sr-test-bucket", root, "gates/x", BUNDLE),)))


def test_missing_bucket_raises_access_error(verifier: EvidenceVerifier, root: str) -> None:
    with pytest.raises(S3AccessError):
        verifier.verify_gate(gate("sr-no-such-bucket-zz9", root, "gates/x", BUNDLE))
