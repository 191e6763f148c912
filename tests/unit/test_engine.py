"""Engine orchestration vocabulary (contract §8): the EngineRequest / EngineResult models, the
engine-request publication key and reason codes, the engine settings and topics."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.engine import EngineRequest, EngineResult, EngineStatus
from worker.core.identity import attempt_id_for
from worker.core.index import NewPublication, PublicationKind
from worker.core.models import MAX_DETAIL_CHARS
from worker.core.vocabulary import (
    ENGINE_EVIDENCE_INCOMPLETE,
    ENGINE_FAILED,
    ENGINE_REASON_CODES,
    ENGINE_RUNNING,
    ENGINE_TIMEOUT,
    engine_request_key,
)
from worker.embedded.stack import DEFAULT_TOPICS
from worker.errors import ConfigError, DecodeError
from worker.settings import Settings, Topics, load_settings

from .conftest import ENGINE_ATTEMPT_1, ENGINE_RUN, H1, H2, engine_request_dict, engine_result_dict

RUN = ENGINE_RUN
REQUESTED_AT = 1_700_000_000_000
request_dict = engine_request_dict
result_dict = engine_result_dict


def test_the_builders_name_attempt_1() -> None:
    assert attempt_id_for(RUN, 1) == ENGINE_ATTEMPT_1


# ----------------------------------------------------------------------------- EngineRequest
def test_request_round_trips_through_its_avro_dict() -> None:
    request = EngineRequest.from_avro(request_dict())
    assert request.to_avro() == request_dict()
    assert EngineRequest.from_avro(request.to_avro()) == request
    assert request.requested_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert request.output_ids == ("transactions", "accounts")


def test_request_normalises_like_an_intent() -> None:
    request = EngineRequest.from_avro(request_dict(
        evidence_root="s3://sr-dev/evidence/t1/run1/",
        requested_at=datetime(2023, 11, 14, 23, 13, 20, 123_999, tzinfo=timezone(timedelta(hours=1))),
    ))
    assert request.evidence_root == "s3://sr-dev/evidence/t1/run1"
    assert request.to_avro()["requested_at"] == REQUESTED_AT + 123


def test_later_attempts_carry_their_own_id() -> None:
    third = EngineRequest.from_avro(request_dict(attempt_no=3, attempt_id=attempt_id_for(RUN, 3)))
    assert third.attempt_no == 3


@pytest.mark.parametrize(("overrides", "field"), [
    ({"attempt_id": attempt_id_for(RUN, 2)}, "attempt_id does not match"),  # id of another attempt
    ({"attempt_id": attempt_id_for("f" * 32, 1)}, "attempt_id does not match"),  # id of another run
    ({"attempt_id": "A" * 32}, "attempt_id"),
    ({"attempt_no": 0}, "attempt_no"),
    ({"attempt_no": 2**31}, "attempt_no"),
    ({"attempt_no": "1"}, "attempt_no"),
    ({"attempt_no": True}, "attempt_no"),
    ({"run_id": "short"}, "run_id"),
    ({"tenant_id": "../etc"}, "tenant_id"),
    ({"namespace": ""}, "namespace"),
    ({"scenario_id": "a b"}, "scenario_id"),
    ({"pins": {"manifest_fingerprint": "x", "parameter_hash": H2, "seed": 1}}, "pins.manifest_fingerprint"),
    ({"output_ids": []}, "output_ids"),
    ({"output_ids": ["a", "a"]}, "output_ids"),
    ({"evidence_root": "s3://bucket-only"}, "evidence_root"),
    ({"evidence_root": "https://example.com/x"}, "evidence_root"),
    ({"plan_hash": "c" * 63}, "plan_hash"),
    ({"policy_rev": "r1"}, "policy_rev"),
    ({"window_end": 1_699_000_000_000}, "window_end must be after"),
    ({"attempt_deadline": REQUESTED_AT}, "attempt_deadline must be after"),
    ({"requested_at": datetime(2023, 11, 14)}, "requested_at"),  # naive
    ({"surprise": 1}, "surprise"),
])
def test_invalid_requests_are_decode_errors(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(DecodeError, match="invalid EngineRequest") as info:
        EngineRequest.from_avro(request_dict(**overrides))
    assert field in str(info.value)


def test_requests_are_frozen_and_mappings_only() -> None:
    request = EngineRequest.from_avro(request_dict())
    with pytest.raises(ValueError, match="frozen"):
        request.attempt_no = 2
    with pytest.raises(DecodeError):
        EngineRequest.from_avro(["not", "a", "mapping"])  # type: ignore[arg-type]
    missing = request_dict()
    del missing["attempt_deadline"]
    with pytest.raises(DecodeError, match="attempt_deadline"):
        EngineRequest.from_avro(missing)


# ----------------------------------------------------------------------------- EngineResult
def test_result_round_trips_through_its_avro_dict() -> None:
    result = EngineResult.from_avro(result_dict())
    assert result.status is EngineStatus.SUCCEEDED
    assert result.to_avro() == result_dict()
    assert EngineResult.from_avro(result_dict(status="FAILED")).status is EngineStatus.FAILED
    assert [s.value for s in EngineStatus] == ["SUCCEEDED", "FAILED"]


def test_result_detail_is_truncated_the_same_way_every_time() -> None:
    long = "x" * (MAX_DETAIL_CHARS * 2)
    first, again = EngineResult.from_avro(result_dict(detail=long)), EngineResult.from_avro(result_dict(detail=long))
    assert len(first.detail) == MAX_DETAIL_CHARS and first.detail.endswith("...")
    assert first == again
    assert EngineResult.from_avro(result_dict(detail="")).detail == ""


@pytest.mark.parametrize(("overrides", "field"), [
    ({"attempt_id": "0" * 31}, "attempt_id"),
    ({"run_id": "0" * 33}, "run_id"),
    ({"status": "RUNNING"}, "status"),
    ({"status": None}, "status"),
    ({"detail": 5}, "detail"),
    ({"reported_by": "engine one"}, "reported_by"),
    ({"finished_at": "yesterday"}, "finished_at"),
    ({"finished_at": 2**62}, "finished_at"),
    ({"extra": "x"}, "extra"),
])
def test_invalid_results_are_decode_errors(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(DecodeError, match="invalid EngineResult") as info:
        EngineResult.from_avro(result_dict(**overrides))
    assert field in str(info.value)
    with pytest.raises(DecodeError):
        EngineResult.from_avro("text")  # type: ignore[arg-type]


@given(st.dictionaries(st.sampled_from(sorted(result_dict())), st.none() | st.integers() | st.text(max_size=40)))
def test_hostile_result_dicts_are_decode_errors_or_valid(changes: dict[str, Any]) -> None:
    try:
        result = EngineResult.from_avro(result_dict(**changes))
    except DecodeError:
        return
    assert EngineResult.from_avro(result.to_avro()) == result


# ----------------------------------------------------------------------------- vocabulary
def test_engine_request_key_and_publication() -> None:
    attempt = attempt_id_for(RUN, 1)
    assert engine_request_key(RUN, attempt) == f"{RUN}:engine:{attempt}"
    pub = NewPublication.engine_request(RUN, attempt, topic="sr.engine-requests", payload=b"\xc3\x01req",
                                        msg_key=RUN.encode(), headers={"sr-idempotency-key": f"{RUN}:engine:{attempt}"})
    assert (pub.pub_key, pub.kind, pub.facts_view_hash, pub.event_type) == (
        f"{RUN}:engine:{attempt}", PublicationKind.ENGINE_REQUEST, None, None)
    for run_id, attempt_id in ((RUN, "A" * 32), ("x", attempt), (RUN, attempt[:31])):
        with pytest.raises(ValueError):
            NewPublication.engine_request(run_id, attempt_id, topic="t", payload=b"p")
    with pytest.raises(ValueError, match="ENGINE_REQUEST publication has no facts_view_hash"):
        NewPublication(pub_key="k", kind="ENGINE_REQUEST", topic="t", payload=b"p", facts_view_hash=H1)


def test_engine_reason_codes() -> None:
    assert {ENGINE_RUNNING, ENGINE_FAILED, ENGINE_TIMEOUT, ENGINE_EVIDENCE_INCOMPLETE} == ENGINE_REASON_CODES == {
        "ENGINE_RUNNING", "ENGINE_FAILED", "ENGINE_TIMEOUT", "ENGINE_EVIDENCE_INCOMPLETE"}


# ----------------------------------------------------------------------------- settings and topics
def test_engine_settings_defaults() -> None:
    settings = Settings()
    assert (settings.engine_attempt_timeout, settings.engine_retry_backoff, settings.engine_max_attempts) == (
        900.0, 30.0, 3)
    assert (settings.topics.engine_requests, settings.topics.engine_results) == (
        "sr.engine-requests", "sr.engine-results")
    assert {"sr.engine-requests", "sr.engine-results"} <= {t.name for t in DEFAULT_TOPICS}
    assert {t.name: t.partitions for t in DEFAULT_TOPICS}["sr.engine-requests"] == 4


def test_engine_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("SR_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SR_ENGINE_ATTEMPT_TIMEOUT", "60")
    monkeypatch.setenv("SR_ENGINE_RETRY_BACKOFF", "0.5")
    monkeypatch.setenv("SR_ENGINE_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("SR_TOPICS__ENGINE_REQUESTS", "eng.req")
    monkeypatch.setenv("SR_TOPICS__ENGINE_RESULTS", "eng.res")
    settings = load_settings(None, os.environ)
    assert (settings.engine_attempt_timeout, settings.engine_retry_backoff, settings.engine_max_attempts) == (
        60.0, 0.5, 5)
    assert settings.topics == Topics(engine_requests="eng.req", engine_results="eng.res")


@pytest.mark.parametrize(("name", "value"), [
    ("engine_attempt_timeout", 0.0), ("engine_attempt_timeout", 8 * 86_400.0), ("engine_retry_backoff", -1.0),
    ("engine_max_attempts", 0), ("engine_max_attempts", 101),
])
def test_engine_settings_bounds(name: str, value: float) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(None, {}, **{name: value})
