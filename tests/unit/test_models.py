"""Wire models: validation, time handling, Avro dict round-trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.models import (
    EventType,
    Pins,
    ReadyEvent,
    RunIntent,
    RunStatusEvent,
    RunTrigger,
    StatusEventStatus,
    Strategy,
    TriggerKind,
    datetime_from_millis,
    millis,
    parse_intent,
    parse_trigger,
    to_utc,
)
from worker.errors import DecodeError, InputError, IntentInvalidError

from .conftest import H1, H2, intent_dict, make_intent

RUN = "0123456789abcdef0123456789abcdef"


def test_valid_intent_roundtrip() -> None:
    intent = make_intent()
    assert intent.strategy is Strategy.AUTO
    assert intent.window_start == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert intent.output_ids == ("transactions", "accounts")
    assert RunIntent.from_avro(intent.to_avro()) == intent
    assert intent.to_avro() == intent_dict()


def test_defaults() -> None:
    data = intent_dict()
    for key in ("request_id", "strategy", "deadline"):
        del data[key]
    intent = parse_intent(data)
    assert intent.request_id is None and intent.deadline is None and intent.strategy is Strategy.AUTO


def test_models_are_frozen() -> None:
    intent = make_intent()
    with pytest.raises(ValueError, match="frozen"):
        intent.tenant_id = "x"


def test_timestamp_inputs_equivalent() -> None:
    ms = 1_700_000_000_123
    as_dt = datetime(2023, 11, 14, 22, 13, 20, 123_000, tzinfo=UTC)
    as_other_zone = as_dt.astimezone(timezone(timedelta(hours=5, minutes=30)))
    as_iso = "2023-11-14T22:13:20.123+00:00"
    values = {parse_intent(intent_dict(window_start=v)).window_start for v in (ms, as_dt, as_other_zone, as_iso)}
    assert values == {as_dt}


def test_submicro_truncated_to_millis() -> None:
    intent = parse_intent(intent_dict(window_start=datetime(2023, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC)))
    assert intent.window_start.microsecond == 999_000


@pytest.mark.parametrize("bad", [datetime(2023, 1, 1), "2023-01-01T00:00:00", True, 1.5, 10**20, "soon", None])
def test_naive_or_bad_timestamps_rejected(bad: Any) -> None:
    with pytest.raises(IntentInvalidError):
        parse_intent(intent_dict(window_start=bad))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tenant_id", ""),
        ("tenant_id", "."),
        ("tenant_id", ".."),
        ("tenant_id", "../x"),
        ("tenant_id", "a/b"),
        ("tenant_id", "a\\b"),
        ("tenant_id", "a\x00"),
        ("tenant_id", "a b"),
        ("tenant_id", "a\n"),
        ("tenant_id", "x" * 129),
        ("tenant_id", "-x"),
        ("tenant_id", 5),
        ("tenant_id", b"t1"),
        ("namespace", ".hidden"),
        ("scenario_id", "é"),
        ("submitted_by", "a@b"),
        ("output_ids", []),
        ("output_ids", ["a", "a"]),
        ("output_ids", ["ok", "../x"]),
        ("output_ids", [f"o{i}" for i in range(257)]),
        ("output_ids", "transactions"),
        ("window_end", 1_700_000_000_000),
        ("window_end", 1_699_000_000_000),
        ("strategy", "auto"),
        ("strategy", "YOLO"),
        ("evidence_root", "s3://sr-dev"),
        ("evidence_root", "s3://sr-dev/"),
        ("evidence_root", "s3://sr/evidence"),
        ("evidence_root", "s3://sr-dev/evidence/../x"),
        ("evidence_root", "file:///etc/passwd"),
        ("evidence_root", "s3://sr-dev/evidence//t1"),
        ("request_id", ""),
        ("request_id", "x" * 129),
        ("request_id", "a\tb"),
        ("pins", {"manifest_fingerprint": H1.upper(), "parameter_hash": H2, "seed": 1}),
        ("pins", {"manifest_fingerprint": H1, "parameter_hash": H2[:-1], "seed": 1}),
        ("pins", {"manifest_fingerprint": H1, "parameter_hash": H2, "seed": 2**63}),
        ("pins", {"manifest_fingerprint": H1, "parameter_hash": H2, "seed": -(2**63) - 1}),
        ("pins", {"manifest_fingerprint": H1, "parameter_hash": H2, "seed": True}),
        ("pins", {"manifest_fingerprint": H1, "parameter_hash": H2, "seed": "7"}),
        ("pins", {"manifest_fingerprint": H1, "parameter_hash": H2, "seed": 1, "x": 1}),
        ("unexpected", 1),
    ],
)
def test_invalid_intents(field: str, value: Any) -> None:
    with pytest.raises(IntentInvalidError):
        parse_intent(intent_dict(**{field: value}))


def test_missing_field_and_non_mapping() -> None:
    data = intent_dict()
    del data["tenant_id"]
    with pytest.raises(IntentInvalidError):
        parse_intent(data)
    bad: object
    for bad in (None, [], "x", 5):
        with pytest.raises(IntentInvalidError):
            parse_intent(bad)  # type: ignore[arg-type]


def test_error_message_is_bounded_and_wrapped() -> None:
    with pytest.raises(IntentInvalidError) as info:
        parse_intent(intent_dict(tenant_id="x" * 100_000, namespace="/", scenario_id="/"))
    assert len(str(info.value)) < 2000
    assert info.value.__cause__ is not None


def test_evidence_root_normalised() -> None:
    assert make_intent(evidence_root="s3://sr-dev/evidence/t1/").evidence_root == "s3://sr-dev/evidence/t1"


def test_seed_extremes() -> None:
    for seed in (-(2**63), 2**63 - 1, 0):
        pins = {"manifest_fingerprint": H1, "parameter_hash": H2, "seed": seed}
        assert make_intent(pins=pins).pins.seed == seed


def test_time_helpers() -> None:
    assert millis(datetime_from_millis(-1)) == -1
    assert datetime_from_millis(0) == datetime(1970, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="naive"):
        to_utc(datetime(2020, 1, 1))
    with pytest.raises(ValueError, match="range"):
        datetime_from_millis(10**18)
    with pytest.raises(TypeError):
        datetime_from_millis(True)


@given(st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999))
def test_millis_roundtrip(ms: int) -> None:
    assert millis(datetime_from_millis(ms)) == ms


@given(st.dictionaries(st.text(max_size=12), st.none() | st.integers() | st.text(max_size=10), max_size=14))
def test_hostile_dicts_only_raise_input_errors(data: dict[str, Any]) -> None:
    try:
        parse_intent(data)
    except InputError:
        pass


# ----------------------------------------------------------------------- triggers
def trigger_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "run_id": RUN,
        "kind": "REEVALUATE",
        "reason": "operator asked",
        "requested_by": "alice",
        "requested_at": 1_700_000_000_000,
    }
    data.update(overrides)
    return data


def test_trigger_roundtrip() -> None:
    trigger = parse_trigger(trigger_dict())
    assert trigger.kind is TriggerKind.REEVALUATE
    assert RunTrigger.from_avro(trigger.to_avro()) == trigger
    assert trigger.to_avro() == trigger_dict()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("run_id", RUN.upper()),
        ("run_id", RUN + "0"),
        ("kind", "NOPE"),
        ("reason", "x" * 1025),
        ("reason", "a\x00"),
        ("requested_by", "a/b"),
    ],
)
def test_invalid_triggers(field: str, value: Any) -> None:
    with pytest.raises(IntentInvalidError):
        parse_trigger(trigger_dict(**{field: value}))
    with pytest.raises(IntentInvalidError):
        parse_trigger("nope")  # type: ignore[arg-type]


# ----------------------------------------------------------------------- outbound events
def ready_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "event_type": "READY",
        "run_id": RUN,
        "facts_view_hash": "c" * 64,
        "facts_view_uri": f"s3://sr-dev/sr/tenant/t1/namespace/ns/run/{RUN}/facts/{'c' * 64}.json",
        "supersedes_facts_view_hash": None,
        "tenant_id": "t1",
        "namespace": "ns",
        "scenario_id": "scen",
        "pins": {"manifest_fingerprint": H1, "parameter_hash": H2, "seed": 7},
        "policy_rev": "d" * 64,
        "plan_hash": "e" * 64,
        "emitted_at": 1_700_000_000_000,
    }
    data.update(overrides)
    return data


def test_ready_event() -> None:
    event = ReadyEvent.from_avro(ready_dict())
    assert event.idempotency_key == f"{RUN}:{'c' * 64}:READY"
    assert ReadyEvent.from_avro(event.to_avro()) == event
    assert event.to_avro() == ready_dict()
    sup = ReadyEvent.from_avro(ready_dict(event_type="SUPERSEDE", supersedes_facts_view_hash="f" * 64))
    assert sup.event_type is EventType.SUPERSEDE
    assert sup.idempotency_key.endswith(":SUPERSEDE")


@pytest.mark.parametrize(
    "overrides",
    [
        {"event_type": "SUPERSEDE"},
        {"supersedes_facts_view_hash": "c" * 64},
        {"facts_view_uri": "https://x/y"},
        {"plan_hash": "x"},
        {"pins": None},
        {"extra": 1},
    ],
)
def test_invalid_ready_events(overrides: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        ReadyEvent.from_avro(ready_dict(**overrides))


def test_status_event() -> None:
    data = {
        "run_id": RUN,
        "status": "WAITING",
        "reason_code": "EVIDENCE_MISSING",
        "detail": "gate_3A missing",
        "tenant_id": "t1",
        "namespace": "ns",
        "scenario_id": "scen",
        "emitted_at": 1_700_000_000_000,
    }
    event = RunStatusEvent.from_avro(data)
    assert event.status is StatusEventStatus.WAITING
    assert event.to_avro() == data
    long_detail = RunStatusEvent.from_avro({**data, "detail": "x" * 10_000})
    assert len(long_detail.detail) == 4096 and long_detail.detail.endswith("...")
    for bad in ({"status": "READY"}, {"reason_code": "lower"}, {"reason_code": ""}, {"run_id": "x"}):
        with pytest.raises(DecodeError):
            RunStatusEvent.from_avro({**data, **bad})
    with pytest.raises(DecodeError):
        RunStatusEvent.from_avro([])  # type: ignore[arg-type]


def test_pins_to_avro() -> None:
    assert Pins(manifest_fingerprint=H1, parameter_hash=H2, seed=-1).to_avro() == {
        "manifest_fingerprint": H1,
        "parameter_hash": H2,
        "seed": -1,
    }
