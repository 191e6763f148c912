"""Wire models of engine orchestration (contract §8): frozen, strict pydantic v2 models.

SR asks the external data engine for one *attempt* at producing a run's outputs with an
:class:`EngineRequest` on ``sr.engine-requests`` and learns how it ended from an
:class:`EngineResult` on ``sr.engine-results`` (both keyed by run_id). The conventions of
:mod:`worker.core.models` apply: UTC millisecond timestamps (naive datetimes rejected),
``to_avro()`` / ``from_avro()`` in the codec's dict shape, identifiers that are safe S3 key
segments.

An attempt is identified by ``attempt_id`` = :func:`~worker.core.identity.attempt_id_for`
``(run_id, attempt_no)``; an :class:`EngineRequest` whose ``attempt_id`` does not follow that
formula is invalid, so SR can never send (and an engine never accept) a request that names
the wrong attempt. An :class:`EngineResult` carries only the ``attempt_id``; whether it names a
known attempt is for the run's ledger to say, not for the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Final, Self

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

from worker.core.identity import attempt_id_for
from worker.core.models import (
    MAX_DETAIL_CHARS,
    MAX_OUTPUT_IDS,
    Hex64,
    Identifier,
    Pins,
    RunId,
    UtcDatetime,
    check_s3_uri,
    check_unique_outputs,
    decode_model,
    millis,
)

__all__ = [
    "MAX_ATTEMPT_NO",
    "AttemptId",
    "EngineRequest",
    "EngineResult",
    "EngineStatus",
]

#: Largest attempt number the wire format accepts (Avro ``int``); the retry budget
#: (``SR_ENGINE_MAX_ATTEMPTS``) is far smaller.
MAX_ATTEMPT_NO: Final = 2**31 - 1

AttemptId = RunId
"""32 lowercase hex characters (same shape as a run id)."""

_FROZEN: Final = ConfigDict(frozen=True, extra="forbid")


class EngineStatus(StrEnum):
    """How an engine attempt ended, as the engine reports it."""

    SUCCEEDED = "SUCCEEDED"  # the engine says it wrote the evidence; SR still verifies it
    FAILED = "FAILED"


class EngineRequest(BaseModel):
    """SR asks the engine for one attempt at a run's outputs (``sr.engine-requests``).

    ``requested_at`` is the time SR recorded the request in the run's ledger and
    ``attempt_deadline`` is derived from it, never from "now", so every re-send of the same
    attempt is byte-identical.
    """

    model_config = _FROZEN

    attempt_id: AttemptId
    attempt_no: Annotated[int, Strict(), Field(ge=1, le=MAX_ATTEMPT_NO)]
    run_id: RunId
    tenant_id: Identifier
    namespace: Identifier
    scenario_id: Identifier
    pins: Pins
    window_start: UtcDatetime
    window_end: UtcDatetime
    output_ids: Annotated[tuple[Identifier, ...], Field(min_length=1, max_length=MAX_OUTPUT_IDS)]
    evidence_root: str
    plan_hash: Hex64
    policy_rev: Hex64
    requested_at: UtcDatetime
    attempt_deadline: UtcDatetime

    @field_validator("output_ids")
    @classmethod
    def _unique_outputs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_unique_outputs(value)

    @field_validator("evidence_root", mode="before")
    @classmethod
    def _evidence_root(cls, value: object) -> str:
        return check_s3_uri(value, need_prefix=True)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        if self.attempt_deadline <= self.requested_at:
            raise ValueError("attempt_deadline must be after requested_at")
        if self.attempt_id != attempt_id_for(self.run_id, self.attempt_no):
            raise ValueError("attempt_id does not match sha256('sr_attempt|' + run_id + '|' + attempt_no)")
        return self

    def to_avro(self) -> dict[str, Any]:
        """The Avro dict shape (timestamps as epoch millis)."""
        return {
            "attempt_id": self.attempt_id,
            "attempt_no": self.attempt_no,
            "run_id": self.run_id,
            "tenant_id": self.tenant_id,
            "namespace": self.namespace,
            "scenario_id": self.scenario_id,
            "pins": self.pins.to_avro(),
            "window_start": millis(self.window_start),
            "window_end": millis(self.window_end),
            "output_ids": list(self.output_ids),
            "evidence_root": self.evidence_root,
            "plan_hash": self.plan_hash,
            "policy_rev": self.policy_rev,
            "requested_at": millis(self.requested_at),
            "attempt_deadline": millis(self.attempt_deadline),
        }

    @classmethod
    def from_avro(cls, data: Mapping[str, Any]) -> EngineRequest:
        """Validate a decoded Avro (or JSON) dict.

        Raises:
            DecodeError: the data is not a valid EngineRequest.
        """
        return decode_model(cls, data)


class EngineResult(BaseModel):
    """The engine reports how one attempt ended (``sr.engine-results``).

    ``detail`` is human-readable and truncated to 4096 characters, so an engine's long error
    message never makes its result invalid (a re-delivery truncates the same way).
    """

    model_config = _FROZEN

    attempt_id: AttemptId
    run_id: RunId
    status: EngineStatus
    detail: Annotated[str, Strict(), Field(max_length=MAX_DETAIL_CHARS)]
    reported_by: Identifier
    finished_at: UtcDatetime

    @field_validator("detail", mode="before")
    @classmethod
    def _truncate_detail(cls, value: object) -> object:
        if isinstance(value, str) and len(value) > MAX_DETAIL_CHARS:
            return value[: MAX_DETAIL_CHARS - 3] + "..."
        return value

    def to_avro(self) -> dict[str, Any]:
        """The Avro dict shape."""
        return {
            "attempt_id": self.attempt_id,
            "run_id": self.run_id,
            "status": self.status.value,
            "detail": self.detail,
            "reported_by": self.reported_by,
            "finished_at": millis(self.finished_at),
        }

    @classmethod
    def from_avro(cls, data: Mapping[str, Any]) -> EngineResult:
        """Validate a decoded Avro (or JSON) dict.

        Raises:
            DecodeError: the data is not a valid EngineResult.
        """
        return decode_model(cls, data)
