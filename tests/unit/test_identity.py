"""Run identity: golden values (guard against accidental change) and properties."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.identity import (
    attempt_id_for,
    intent_fingerprint,
    run_equivalence_key,
    run_id_for,
    run_id_of,
    run_lock_key,
)
from worker.errors import UnsafeKeyError

from .conftest import H1, H2, make_intent

# Computed once from BASE_INTENT in conftest.py. If these change, every run id in every
# deployed ledger changes: that is a breaking change, not a test to "update".
GOLDEN_KEY = "5a064c718c803e266cbb85f0fbc8e7af8111c3e72c11bb60ed2a59dadf4a57fc"
GOLDEN_RUN_ID = "6df6bc84bc0c3d2262bfca1b2098373a"
GOLDEN_FINGERPRINT = "b08f032879442a65a84812aae506c1f8eede43fa4db9aaa30a6f088b75288f83"
GOLDEN_LOCK_KEY = 7923727872681590050
# contract §8: first 32 hex of sha256("sr_attempt|" + run_id + "|" + attempt_no), computed
# once with hashlib from GOLDEN_RUN_ID (and re-derived below without worker code).
GOLDEN_ATTEMPT_IDS = {
    1: "1fe29f6f59be18973683780da916ad3b",
    2: "d7db272c210b794512e7712ef9ab3dc9",
    10: "bbf52e7383944d4c95537fd7725921dd",
}


def test_golden_values() -> None:
    intent = make_intent()
    assert run_equivalence_key(intent) == GOLDEN_KEY
    assert run_id_for(GOLDEN_KEY) == GOLDEN_RUN_ID
    assert run_id_of(intent) == GOLDEN_RUN_ID
    assert intent_fingerprint(intent) == GOLDEN_FINGERPRINT
    assert run_lock_key(GOLDEN_RUN_ID) == GOLDEN_LOCK_KEY


def test_golden_values_match_the_written_spec() -> None:
    # contract §3, computed independently of worker.core.canonical.
    material = (
        '{"namespace":"ns","output_ids":["accounts","transactions"],"pins":{"manifest_fingerprint":"'
        + H1
        + '","parameter_hash":"'
        + H2
        + '","seed":7},"scenario_id":"scen","tenant_id":"t1","window_end":1700086400000,'
        '"window_start":1700000000000}'
    )
    key = hashlib.sha256(material.encode()).hexdigest()
    assert key == GOLDEN_KEY
    assert hashlib.sha256(f"sr_run|{key}".encode()).hexdigest()[:32] == GOLDEN_RUN_ID
    fingerprint_material = (
        '{"evidence_root":"s3://sr-dev/evidence/t1/run1","namespace":"ns","output_ids":["accounts","transactions"],'
        '"pins":{"manifest_fingerprint":"' + H1 + '","parameter_hash":"' + H2 + '","seed":7},'
        '"scenario_id":"scen","strategy":"AUTO","tenant_id":"t1","window_end":1700086400000,'
        '"window_start":1700000000000}'
    )
    assert hashlib.sha256(fingerprint_material.encode()).hexdigest() == GOLDEN_FINGERPRINT


@pytest.mark.parametrize(
    "overrides",
    [
        {"request_id": "other"},
        {"request_id": None},
        {"submitted_at": 1_800_000_000_000},
        {"submitted_by": "someone-else"},
        {"deadline": 1_900_000_000_000},
        {"output_ids": ["accounts", "transactions"]},
        {"evidence_root": "s3://sr-dev/evidence/t1/run1/"},
    ],
)
def test_duplicate_not_collision(overrides: dict[str, Any]) -> None:
    base, other = make_intent(), make_intent(**overrides)
    assert run_equivalence_key(other) == run_equivalence_key(base)
    assert intent_fingerprint(other) == intent_fingerprint(base)


@pytest.mark.parametrize("overrides", [{"strategy": "REUSE"}, {"evidence_root": "s3://sr-dev/evidence/t1/run2"}])
def test_collision_same_key_other_fingerprint(overrides: dict[str, Any]) -> None:
    base, other = make_intent(), make_intent(**overrides)
    assert run_equivalence_key(other) == run_equivalence_key(base)
    assert intent_fingerprint(other) != intent_fingerprint(base)


@pytest.mark.parametrize(
    "overrides",
    [
        {"tenant_id": "t2"},
        {"namespace": "ns2"},
        {"scenario_id": "s2"},
        {"window_start": 1_700_000_000_001},
        {"window_end": 1_700_086_400_001},
        {"output_ids": ["transactions"]},
        {"pins": {"manifest_fingerprint": H1, "parameter_hash": H2, "seed": 8}},
        {"pins": {"manifest_fingerprint": H2, "parameter_hash": H1, "seed": 7}},
    ],
)
def test_equivalence_fields_change_key(overrides: dict[str, Any]) -> None:
    assert run_equivalence_key(make_intent(**overrides)) != GOLDEN_KEY
    assert run_id_of(make_intent(**overrides)) != GOLDEN_RUN_ID


def test_lock_key_sign_handling() -> None:
    assert run_lock_key("f" * 32) == -1
    assert run_lock_key("8" + "0" * 31) == -(2**63)
    assert run_lock_key("7" + "f" * 15 + "0" * 16) == 2**63 - 1
    assert run_lock_key("0" * 32) == 0
    for bad in ["F" * 32, "0" * 31, "0" * 33, "g" * 32, ""]:
        with pytest.raises(UnsafeKeyError):
            run_lock_key(bad)


def test_attempt_ids_match_the_written_spec() -> None:
    for attempt_no, golden in GOLDEN_ATTEMPT_IDS.items():
        spelled = "sr_attempt|" + GOLDEN_RUN_ID + "|" + str(attempt_no)
        assert hashlib.sha256(spelled.encode()).hexdigest()[:32] == golden
        assert attempt_id_for(GOLDEN_RUN_ID, attempt_no) == golden
    assert len({attempt_id_for(GOLDEN_RUN_ID, n) for n in range(1, 50)}) == 49
    assert attempt_id_for("0" * 32, 1) != attempt_id_for("1" * 32, 1)


@pytest.mark.parametrize(("run_id", "attempt_no"), [
    ("F" * 32, 1), ("0" * 31, 1), ("", 1), ("0" * 32, 0), ("0" * 32, -1), ("0" * 32, True), ("0" * 32, "1"),
])
def test_attempt_id_for_validates(run_id: str, attempt_no: Any) -> None:
    with pytest.raises(UnsafeKeyError):
        attempt_id_for(run_id, attempt_no)


def test_run_id_for_validates() -> None:
    with pytest.raises(UnsafeKeyError):
        run_id_for("A" * 64)


ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12)


@given(
    outputs=st.lists(ids, min_size=1, max_size=8, unique=True),
    seed=st.integers(-(2**63), 2**63 - 1),
    start=st.integers(0, 2**41),
    span=st.integers(1, 2**30),
    data=st.data(),
)
def test_properties(outputs: list[str], seed: int, start: int, span: int, data: st.DataObject) -> None:
    pins = {"manifest_fingerprint": H1, "parameter_hash": H2, "seed": seed}
    intent = make_intent(output_ids=outputs, pins=pins, window_start=start, window_end=start + span)
    shuffled = data.draw(st.permutations(outputs))
    other = make_intent(output_ids=shuffled, pins=pins, window_start=start, window_end=start + span)
    key = run_equivalence_key(intent)
    assert len(key) == 64 and key == key.lower()
    run_id = run_id_of(intent)
    assert len(run_id) == 32 and int(run_id, 16) >= 0
    assert run_id_of(other) == run_id and intent_fingerprint(other) == intent_fingerprint(intent)
    lock = run_lock_key(run_id)
    assert -(2**63) <= lock < 2**63
    assert lock % 2**64 == int(run_id[:16], 16)


def test_samples_are_as_documented() -> None:
    import json

    from worker.core.keys import parse_s3_uri
    from worker.core.models import parse_intent

    from .conftest import SCHEMAS

    samples = {
        name: parse_intent(json.loads((SCHEMAS / "samples" / f"{name}.json").read_text()))
        for name in ("complete", "waiting", "tampered", "collision", "invoke")
    }
    complete, collision = samples["complete"], samples["collision"]
    assert run_id_of(complete) == run_id_of(collision) == "904fabb9b42042005a8dadb49d47885c"
    assert intent_fingerprint(complete) != intent_fingerprint(collision)
    assert len({run_id_of(i) for i in samples.values()}) == 4
    # waiting only verifies (its evidence never comes); invoke asks the engine for it.
    assert (samples["waiting"].strategy.value, samples["invoke"].strategy.value) == ("REUSE", "INVOKE")
    assert samples["waiting"].deadline is not None
    allowed = parse_s3_uri("s3://scenario-runner/evidence/demo/")
    assert all(parse_s3_uri(i.evidence_root).is_within(allowed) for i in samples.values())
