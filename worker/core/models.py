"""Wire models of SR's Kafka contract (contract §2): frozen, strict pydantic v2 models.

Conventions:

* Timestamps are timezone-aware ``datetime`` in UTC with **millisecond** precision, because
  that is what Avro ``timestamp-millis`` and SR's identity hashing carry. Inputs may be epoch
  milliseconds (``int``), an aware ``datetime`` or an ISO-8601 string *with* an offset; they
  are converted to UTC and truncated to whole milliseconds. **Naive datetimes are rejected**
  (guessing a zone is how two producers end up with two run ids for one run).
* ``to_avro()`` returns the dict shape the Avro codec writes (timestamps as epoch-millis
  ``int``, enums as their symbol); ``from_avro()`` accepts it back.
* Identifier fields (tenant, namespace, scenario, output ids, submitted_by, requested_by)
  match ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``, so they are always safe S3 key segments.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Final, Self, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from worker.core.keys import parse_s3_uri
from worker.core.vocabulary import fact_key
from worker.errors import DecodeError, IntentInvalidError, UnsafeKeyError

__all__ = [
    "EPOCH",
    "MAX_DETAIL_CHARS",
    "MAX_OUTPUT_IDS",
    "TERMINAL_STATUSES",
    "EventType",
    "Hex64",
    "Identifier",
    "Pins",
    "ReadyEvent",
    "ReasonCode",
    "RunId",
    "RunIntent",
    "RunStatus",
    "RunStatusEvent",
    "RunTrigger",
    "StatusEventStatus",
    "Strategy",
    "TriggerKind",
    "UtcDatetime",
    "check_s3_uri",
    "check_unique_outputs",
    "datetime_from_millis",
    "decode_model",
    "millis",
    "parse_intent",
    "parse_trigger",
    "to_utc",
    "validation_summary",
]

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MAX_OUTPUT_IDS: Final = 256
MAX_DETAIL_CHARS: Final = 4096
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


# --------------------------------------------------------------------------- enums
class Strategy(StrEnum):
    """How the run obtains its outputs (carried through to the plan; SR only verifies)."""

    AUTO = "AUTO"
    INVOKE = "INVOKE"
    REUSE = "REUSE"


class TriggerKind(StrEnum):
    """Why an operator or upstream asks SR to look at a run again."""

    EVIDENCE_ARRIVED = "EVIDENCE_ARRIVED"
    REEVALUATE = "REEVALUATE"
    REEMIT = "REEMIT"
    SUPERSEDE = "SUPERSEDE"
    #: Verify a FAILED / QUARANTINED run again (contract §11; RunTrigger version 2).
    RETRY = "RETRY"


class EventType(StrEnum):
    """Type of a :class:`ReadyEvent`.

    ``REVOKED`` (contract §11) is in the schema (ReadyEvent version 2) so that SR and its
    consumers decode it; SR does not publish it yet.
    """

    READY = "READY"
    SUPERSEDE = "SUPERSEDE"
    REVOKED = "REVOKED"


class RunStatus(StrEnum):
    """Status of a run in the index and as derived from the ledger."""

    ADMITTED = "ADMITTED"
    WAITING = "WAITING"
    READY = "READY"
    FAILED = "FAILED"
    QUARANTINED = "QUARANTINED"
    REJECTED = "REJECTED"


#: Statuses a run never leaves by itself (only a committed correction moves a run on).
TERMINAL_STATUSES: Final = frozenset({RunStatus.FAILED, RunStatus.QUARANTINED, RunStatus.REJECTED})


class StatusEventStatus(StrEnum):
    """Statuses announced on ``sr.run-status`` (READY goes to ``sr.ready`` instead)."""

    WAITING = "WAITING"
    FAILED = "FAILED"
    QUARANTINED = "QUARANTINED"
    REJECTED = "REJECTED"


# --------------------------------------------------------------------------- time helpers
def to_utc(value: datetime) -> datetime:
    """Return an aware datetime converted to UTC and truncated to whole milliseconds.

    Raises:
        ValueError: ``value`` is naive (a caller bug for code paths; for input data pydantic
            turns this into a validation error).
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("naive datetime: timestamps must carry a timezone (UTC expected)")
    utc = value.astimezone(UTC)
    return utc.replace(microsecond=utc.microsecond - utc.microsecond % 1000)


def millis(value: datetime) -> int:
    """Epoch milliseconds of an aware datetime (floor; exact for SR's millisecond values).

    Raises:
        ValueError: ``value`` is naive.
    """
    delta = to_utc(value) - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def datetime_from_millis(ms: int) -> datetime:
    """Aware UTC datetime of epoch milliseconds (no OS ``fromtimestamp`` limits involved).

    Raises:
        TypeError: ``ms`` is not an int.
        ValueError: ``ms`` lies outside years 1–9999.
    """
    if isinstance(ms, bool) or not isinstance(ms, int):
        raise TypeError(f"epoch milliseconds must be an integer, got {type(ms).__name__}")
    try:
        return EPOCH + timedelta(milliseconds=ms)
    except OverflowError as exc:
        raise ValueError(f"epoch milliseconds {ms} out of the representable range") from exc


def _coerce_datetime(value: object) -> object:
    """Before-validator: accept millis / aware datetime / ISO string with offset."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")  # noqa: TRY004 - pydantic wraps only ValueError
    if isinstance(value, int):
        return datetime_from_millis(value)
    if isinstance(value, str):
        if len(value) > 64:
            raise ValueError("timestamp string too long")
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from exc
    if isinstance(value, datetime):
        return to_utc(value)
    raise ValueError(f"expected epoch millis, ISO-8601 string or aware datetime, got {type(value).__name__}")


UtcDatetime = Annotated[datetime, BeforeValidator(_coerce_datetime)]
"""An aware UTC datetime with millisecond precision (see module docstring)."""

Identifier = Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]
"""A conservative identifier that is always a safe S3 key segment."""

Hex64 = Annotated[str, Strict(), StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""64 lowercase hex characters (a sha256 digest)."""

RunId = Annotated[str, Strict(), StringConstraints(pattern=r"^[0-9a-f]{32}$")]
"""32 lowercase hex characters."""

ReasonCode = Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")]
"""An upper-case reason code (``EVIDENCE_MISSING``, ``ENGINE_TIMEOUT``, ...)."""


def check_unique_outputs(value: tuple[str, ...]) -> tuple[str, ...]:
    """Validator body: ``output_ids`` without repeats (RunIntent, EngineRequest).

    Raises:
        ValueError: an output id appears twice.
    """
    if len(set(value)) != len(value):
        raise ValueError("output_ids must be unique")
    return value


def check_s3_uri(value: object, *, need_prefix: bool) -> str:
    """Before-validator body: the canonical form of an ``s3://bucket[/prefix]`` URI.

    Raises:
        ValueError: not a string, not a safe S3 URI, or no prefix where ``need_prefix``.
    """
    if not isinstance(value, str):
        raise ValueError("must be an s3:// URI string")  # noqa: TRY004 - pydantic wraps only ValueError
    try:
        location = parse_s3_uri(value)
    except UnsafeKeyError as exc:
        # pydantic only wraps ValueError/AssertionError into a ValidationError.
        raise ValueError(str(exc)) from exc
    if need_prefix and not location.prefix:
        raise ValueError("must name a prefix below the bucket (s3://bucket/prefix)")
    return location.uri


_FROZEN: Final = ConfigDict(frozen=True, extra="forbid")


class Pins(BaseModel):
    """The world pins of a run: which manifest, which parameters, which seed."""

    model_config = _FROZEN

    manifest_fingerprint: Hex64
    parameter_hash: Hex64
    seed: Annotated[int, Strict(), Field(ge=_INT64_MIN, le=_INT64_MAX)]

    def to_avro(self) -> dict[str, Any]:
        """The Avro/canonical-JSON dict of the pins."""
        return {
            "manifest_fingerprint": self.manifest_fingerprint,
            "parameter_hash": self.parameter_hash,
            "seed": self.seed,
        }


# --------------------------------------------------------------------------- RunIntent
class RunIntent(BaseModel):
    """An upstream request to produce/serve a scenario over a window (``sr.run-intents``)."""

    model_config = _FROZEN

    request_id: Annotated[str, Strict(), Field(min_length=1, max_length=128)] | None = None
    tenant_id: Identifier
    namespace: Identifier
    scenario_id: Identifier
    pins: Pins
    window_start: UtcDatetime
    window_end: UtcDatetime
    output_ids: Annotated[tuple[Identifier, ...], Field(min_length=1, max_length=MAX_OUTPUT_IDS)]
    strategy: Strategy = Strategy.AUTO
    evidence_root: str
    deadline: UtcDatetime | None = None
    submitted_at: UtcDatetime
    submitted_by: Identifier

    @field_validator("request_id")
    @classmethod
    def _printable_request_id(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("request_id must be printable (no control characters)")
        return value

    @field_validator("output_ids")
    @classmethod
    def _unique_outputs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_unique_outputs(value)

    @field_validator("evidence_root", mode="before")
    @classmethod
    def _evidence_root(cls, value: object) -> str:
        # Normalised to the canonical URI so "s3://b/p/" and "s3://b/p" are one intent.
        return check_s3_uri(value, need_prefix=True)

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        return self

    def to_avro(self) -> dict[str, Any]:
        """The Avro dict shape (timestamps as epoch millis, strategy as its symbol)."""
        return {
            "request_id": self.request_id,
            "tenant_id": self.tenant_id,
            "namespace": self.namespace,
            "scenario_id": self.scenario_id,
            "pins": self.pins.to_avro(),
            "window_start": millis(self.window_start),
            "window_end": millis(self.window_end),
            "output_ids": list(self.output_ids),
            "strategy": self.strategy.value,
            "evidence_root": self.evidence_root,
            "deadline": None if self.deadline is None else millis(self.deadline),
            "submitted_at": millis(self.submitted_at),
            "submitted_by": self.submitted_by,
        }

    @classmethod
    def from_avro(cls, data: Mapping[str, Any]) -> RunIntent:
        """Validate an Avro-shaped (or JSON) dict; same as :func:`parse_intent`.

        Raises:
            IntentInvalidError: the data does not describe a valid intent.
        """
        return parse_intent(data)


def validation_summary(exc: ValidationError) -> str:
    """A compact, bounded description of a pydantic error (it becomes a DLQ header): the first
    five problems by field, then how many more."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


_Model = TypeVar("_Model", bound=BaseModel)


def decode_model(model: type[_Model], data: object) -> _Model:
    """Validate a decoded Avro (or JSON) dict into ``model``.

    Raises:
        DecodeError: ``data`` is not a mapping, or not a valid ``model`` (the message names
            the model and summarises the problems without echoing values).
    """
    if not isinstance(data, Mapping):
        raise DecodeError(f"{model.__name__} must be an object")
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise DecodeError(f"invalid {model.__name__}: {validation_summary(exc)}") from exc


def parse_intent(data: Mapping[str, Any]) -> RunIntent:
    """Validate untrusted intent data into a :class:`RunIntent`.

    Raises:
        IntentInvalidError: not a mapping, unknown/missing fields, or any field invalid.
    """
    if not isinstance(data, Mapping):
        raise IntentInvalidError(f"intent must be an object, got {type(data).__name__}")
    try:
        return RunIntent.model_validate(dict(data))
    except ValidationError as exc:
        raise IntentInvalidError(f"invalid RunIntent: {validation_summary(exc)}") from exc


# --------------------------------------------------------------------------- RunTrigger
class RunTrigger(BaseModel):
    """A request to look at an existing run again (``sr.triggers``)."""

    model_config = _FROZEN

    run_id: RunId
    kind: TriggerKind
    reason: Annotated[str, Strict(), Field(max_length=1024)]
    requested_by: Identifier
    requested_at: UtcDatetime

    @field_validator("reason")
    @classmethod
    def _printable_reason(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("reason must be printable (no control characters)")
        return value

    def to_avro(self) -> dict[str, Any]:
        """The Avro dict shape."""
        return {
            "run_id": self.run_id,
            "kind": self.kind.value,
            "reason": self.reason,
            "requested_by": self.requested_by,
            "requested_at": millis(self.requested_at),
        }

    @classmethod
    def from_avro(cls, data: Mapping[str, Any]) -> RunTrigger:
        """Same as :func:`parse_trigger`.

        Raises:
            IntentInvalidError: the data does not describe a valid trigger.
        """
        return parse_trigger(data)


def parse_trigger(data: Mapping[str, Any]) -> RunTrigger:
    """Validate untrusted trigger data into a :class:`RunTrigger`.

    Raises:
        IntentInvalidError: not a mapping, unknown/missing fields, or any field invalid.
    """
    if not isinstance(data, Mapping):
        raise IntentInvalidError(f"trigger must be an object, got {type(data).__name__}")
    try:
        return RunTrigger.model_validate(dict(data))
    except ValidationError as exc:
        raise IntentInvalidError(f"invalid RunTrigger: {validation_summary(exc)}") from exc


# --------------------------------------------------------------------------- outbound events
class ReadyEvent(BaseModel):
    """READY / SUPERSEDE (/ REVOKED, contract §11) announcement on ``sr.ready`` (keyed by run_id).

    ``emitted_at`` is the facts view's commit time from the ledger, never "now", so every
    re-emission of the same fact is byte-identical.
    """

    model_config = _FROZEN

    event_type: EventType
    run_id: RunId
    facts_view_hash: Hex64
    facts_view_uri: str
    supersedes_facts_view_hash: Hex64 | None = None
    tenant_id: Identifier
    namespace: Identifier
    scenario_id: Identifier
    pins: Pins
    policy_rev: Hex64
    plan_hash: Hex64
    emitted_at: UtcDatetime

    @field_validator("facts_view_uri", mode="before")
    @classmethod
    def _facts_uri(cls, value: object) -> str:
        return check_s3_uri(value, need_prefix=True)

    @model_validator(mode="after")
    def _supersede_consistent(self) -> Self:
        if self.event_type is EventType.SUPERSEDE and self.supersedes_facts_view_hash is None:
            raise ValueError("a SUPERSEDE event must name supersedes_facts_view_hash")
        if self.supersedes_facts_view_hash == self.facts_view_hash:
            raise ValueError("a facts view cannot supersede itself")
        return self

    @property
    def idempotency_key(self) -> str:
        """Value of the ``sr-idempotency-key`` header: ``run_id:facts_view_hash:event_type``."""
        return fact_key(self.run_id, self.facts_view_hash, self.event_type.value)

    def to_avro(self) -> dict[str, Any]:
        """The Avro dict shape."""
        return {
            "event_type": self.event_type.value,
            "run_id": self.run_id,
            "facts_view_hash": self.facts_view_hash,
            "facts_view_uri": self.facts_view_uri,
            "supersedes_facts_view_hash": self.supersedes_facts_view_hash,
            "tenant_id": self.tenant_id,
            "namespace": self.namespace,
            "scenario_id": self.scenario_id,
            "pins": self.pins.to_avro(),
            "policy_rev": self.policy_rev,
            "plan_hash": self.plan_hash,
            "emitted_at": millis(self.emitted_at),
        }

    @classmethod
    def from_avro(cls, data: Mapping[str, Any]) -> ReadyEvent:
        """Validate a decoded Avro dict.

        Raises:
            DecodeError: the data is not a valid ReadyEvent.
        """
        return decode_model(cls, data)


class RunStatusEvent(BaseModel):
    """A status transition announced on ``sr.run-status`` (keyed by run_id).

    ``detail`` is human-readable and truncated to 4096 characters so an arbitrarily long
    error message can never make the event itself invalid.
    """

    model_config = _FROZEN

    run_id: RunId
    status: StatusEventStatus
    reason_code: ReasonCode
    detail: Annotated[str, Strict(), Field(max_length=MAX_DETAIL_CHARS)]
    tenant_id: Identifier
    namespace: Identifier
    scenario_id: Identifier
    emitted_at: UtcDatetime

    @field_validator("detail", mode="before")
    @classmethod
    def _truncate_detail(cls, value: object) -> object:
        if isinstance(value, str) and len(value) > MAX_DETAIL_CHARS:
            return value[: MAX_DETAIL_CHARS - 3] + "..."
        return value

    def to_avro(self) -> dict[str, Any]:
        """The Avro dict shape."""
        return {
            "run_id": self.run_id,
            "status": self.status.value,
            "reason_code": self.reason_code,
            "detail": self.detail,
            "tenant_id": self.tenant_id,
            "namespace": self.namespace,
            "scenario_id": self.scenario_id,
            "emitted_at": millis(self.emitted_at),
        }

    @classmethod
    def from_avro(cls, data: Mapping[str, Any]) -> RunStatusEvent:
        """Validate a decoded Avro dict.

        Raises:
            DecodeError: the data is not a valid RunStatusEvent.
        """
        return decode_model(cls, data)
