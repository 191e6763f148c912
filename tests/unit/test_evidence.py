"""Flags, indexes, member ordering/digests and classification."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.evidence import (
    Classification,
    GateOutcome,
    GateResult,
    bundle_member_order,
    classify,
    member_concat_digest,
    parse_index_json,
    parse_passed_flag,
)
from worker.core.policy import GateMethod
from worker.errors import BadFlagError, BadIndexError, EvidenceError, UnsafeKeyError

D = "0123456789abcdef" * 4
NOW = datetime(2024, 1, 1, tzinfo=UTC)


def test_flag_ok() -> None:
    assert parse_passed_flag(f"sha256_hex={D}".encode()) == D
    assert parse_passed_flag(f"sha256_hex={D}\n".encode()) == D


@pytest.mark.parametrize(
    "data",
    [
        f"sha256_hex={D}\n\n",
        f"sha256_hex={D}\r\n",
        f"sha256_hex={D.upper()}",
        f"sha256_hex={D[:-1]}",
        f"sha256_hex={D}0",
        f" sha256_hex={D}",
        f"sha256_hex= {D}",
        f"SHA256_HEX={D}",
        f"\ufeffsha256_hex={D}",
        f"sha256_hex={D}\nextra",
        f"sha256_hex={D}\x00",
        "",
        "sha256_hex=",
        "x" * 10_000,
    ],
)
def test_flag_rejects(data: str) -> None:
    with pytest.raises(BadFlagError) as info:
        parse_passed_flag(data.encode())
    assert info.value.code == "BAD_FLAG"
    assert isinstance(info.value, EvidenceError)


@given(st.binary(max_size=120))
def test_flag_random(data: bytes) -> None:
    try:
        value = parse_passed_flag(data)
    except BadFlagError:
        return
    assert data in (f"sha256_hex={value}".encode(), f"sha256_hex={value}\n".encode())


def idx(*entries: Any) -> bytes:
    return json.dumps(list(entries)).encode()


def test_index_ok() -> None:
    parsed = parse_index_json(idx({"path": "b/part-1.csv", "sha256_hex": D}, {"sha256_hex": D, "path": "a.csv"}))
    assert [e.path for e in parsed] == ["b/part-1.csv", "a.csv"]  # array order preserved


@pytest.mark.parametrize(
    "data",
    [
        b"{}",
        b"[]",
        b"not json",
        b'[{"path": "a", "sha256_hex": "' + D.encode() + b'", "path": "b"}]',
        idx({"path": "a"}),
        idx({"path": "a", "sha256_hex": D, "size": 1}),
        idx({"path": "a", "sha256_hex": D.upper()}),
        idx({"path": "a", "sha256_hex": 5}),
        idx({"path": 5, "sha256_hex": D}),
        idx({"path": "../a", "sha256_hex": D}),
        idx({"path": "/a", "sha256_hex": D}),
        idx({"path": "a//b", "sha256_hex": D}),
        idx({"path": "a\u0000", "sha256_hex": D}),
        idx({"path": "a\\b", "sha256_hex": D}),
        idx({"path": "", "sha256_hex": D}),
        idx({"path": "_passed.flag", "sha256_hex": D}),
        idx({"path": "index.json", "sha256_hex": D}),
        idx({"path": "a", "sha256_hex": D}, {"path": "a", "sha256_hex": D}),
        idx(["a", D]),
        b"[[[[[[[]]]]]]]",
        b'[{"path": "a", "sha256_hex": NaN}]',
    ],
)
def test_index_rejects(data: bytes) -> None:
    with pytest.raises(BadIndexError) as info:
        parse_index_json(data)
    assert info.value.code == "BAD_INDEX"


def test_index_caps() -> None:
    many = idx(*({"path": f"m{i}", "sha256_hex": D} for i in range(11)))
    assert len(parse_index_json(many, max_entries=11)) == 11
    with pytest.raises(BadIndexError):
        parse_index_json(many, max_entries=10)
    with pytest.raises(BadIndexError):
        parse_index_json(many, max_bytes=100)


def test_huge_index_array() -> None:
    huge = b"[" + b",".join([b"1"] * 200_000) + b"]"
    with pytest.raises(BadIndexError):
        parse_index_json(huge)


@given(st.binary(max_size=300))
def test_index_random_bytes(data: bytes) -> None:
    try:
        parse_index_json(data)
    except BadIndexError:
        pass


def test_member_order() -> None:
    keys = ["b", "_passed.flag", "a/z", "B", "a", "index.json", "a-b", "sub/_passed.flag"]
    assert bundle_member_order(keys) == ["B", "a", "a-b", "a/z", "b", "index.json", "sub/_passed.flag"]
    with pytest.raises(UnsafeKeyError):
        bundle_member_order(["ok", "../evil"])
    with pytest.raises(BadIndexError):
        bundle_member_order(["a", "a"])


def test_member_concat_digest() -> None:
    h1, h2 = hashlib.sha256(b"1").hexdigest(), hashlib.sha256(b"2").hexdigest()
    assert member_concat_digest([h1, h2]) == hashlib.sha256((h1 + h2).encode()).hexdigest()
    assert member_concat_digest([h1, h2]) != member_concat_digest([h2, h1])
    with pytest.raises(BadIndexError):
        member_concat_digest([h1.upper()])


# ----------------------------------------------------------------------- classification
def result(gate: str, outcome: GateOutcome, **kw: Any) -> GateResult:
    digests = {"expected_digest": D, "computed_digest": D} if outcome is GateOutcome.PASS else {}
    digests.update(kw)
    return GateResult(
        gate_id=gate,
        method=GateMethod.SHA256_BUNDLE_DIGEST,
        bundle_uri=f"s3://sr-dev/e/{gate}",
        outcome=outcome,
        **digests,
    )


def test_classify_complete() -> None:
    out = classify([result("a", GateOutcome.PASS), result("b", GateOutcome.PASS)], deadline=None, now=NOW)
    assert out.classification is Classification.COMPLETE


def test_classify_empty_is_never_complete() -> None:
    assert classify([], deadline=None, now=NOW).classification is Classification.FAILED


def test_classify_precedence() -> None:
    everything = [
        result("a", GateOutcome.MISSING),
        result("b", GateOutcome.TOO_LARGE),
        result("c", GateOutcome.BAD_INDEX),
        result("d", GateOutcome.BAD_FLAG),
        result("e", GateOutcome.MISMATCH),
        result("f", GateOutcome.PASS),
    ]
    out = classify(everything, deadline=None, now=NOW)
    assert (out.classification, out.reason_code) == (Classification.QUARANTINED, "DIGEST_MISMATCH")
    out = classify(everything[:4], deadline=None, now=NOW)
    assert (out.classification, out.reason_code) == (Classification.FAILED, "BAD_FLAG")
    out = classify(everything[:3], deadline=None, now=NOW)
    assert (out.classification, out.reason_code) == (Classification.FAILED, "BAD_INDEX")
    out = classify(everything[:2], deadline=None, now=NOW)
    assert (out.classification, out.reason_code) == (Classification.FAILED, "TOO_LARGE")


def test_classify_missing_and_deadline() -> None:
    results = [result("a", GateOutcome.MISSING), result("b", GateOutcome.PASS)]
    assert classify(results, deadline=None, now=NOW).reason_code == "EVIDENCE_MISSING"
    assert classify(results, deadline=NOW + timedelta(seconds=1), now=NOW).classification is Classification.WAITING
    at = classify(results, deadline=NOW, now=NOW)
    assert (at.classification, at.reason_code) == (Classification.FAILED, "EVIDENCE_MISSING_DEADLINE")
    late = classify(results, deadline=NOW - timedelta(days=1), now=NOW)
    assert late.classification is Classification.FAILED


def test_classify_bogus_pass_is_quarantined() -> None:
    bogus = result("a", GateOutcome.PASS, computed_digest="f" * 64)
    assert classify([bogus], deadline=None, now=NOW).classification is Classification.QUARANTINED
    no_digest = result("a", GateOutcome.PASS, expected_digest=None, computed_digest=None)
    assert classify([no_digest], deadline=None, now=NOW).classification is Classification.QUARANTINED


def test_classify_caller_bugs() -> None:
    with pytest.raises(ValueError, match="naive"):
        classify([result("a", GateOutcome.PASS)], deadline=None, now=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="twice"):
        classify([result("a", GateOutcome.PASS), result("a", GateOutcome.PASS)], deadline=None, now=NOW)


@given(st.lists(st.sampled_from(list(GateOutcome)), max_size=6), st.booleans())
def test_classify_fail_closed(outcomes: list[GateOutcome], past_deadline: bool) -> None:
    results = [result(f"g{i}", o) for i, o in enumerate(outcomes)]
    deadline = NOW - timedelta(seconds=1) if past_deadline else NOW + timedelta(seconds=1)
    out = classify(results, deadline=deadline, now=NOW)
    complete = out.classification is Classification.COMPLETE
    assert complete == (bool(outcomes) and all(o is GateOutcome.PASS for o in outcomes))
    if GateOutcome.MISMATCH in outcomes:
        assert out.classification is Classification.QUARANTINED
    # Order of results never changes the answer.
    assert classify(list(reversed(results)), deadline=deadline, now=NOW) == out
