"""Typed bodies of ledger entries: one model per entry kind, discriminated by ``LedgerEntry.kind``.

The processor builds entries from these models and every reader (events, operators,
runpacks) gets fields by attribute instead of by string key. :func:`body_of` turns a model
into the exact dict stored today — same keys present, same ``null`` s — so the canonical
bytes of every entry are unchanged (``tests/unit/test_golden_bytes.py``). :func:`parse_body`
is the reverse, fail-closed: an entry whose body does not fit its kind is an
:class:`~worker.errors.IntegrityError`.

==============================  ================================================================
kind                            body
==============================  ================================================================
READY                           :class:`ReadyBody`
WAITING, FAILED, QUARANTINED    :class:`StatusBody`
SUPERSEDED                      :class:`SupersededBody`
TRIGGER                         :class:`TriggerBody`
ENGINE_REQUESTED                :class:`EngineRequestedBody` (contract §8)
ENGINE_RESULT                   :class:`EngineResultBody` (contract §8)
REVOKED                         :class:`RevokedBody` (contract §11)
RETRIED                         :class:`RetriedBody` (contract §11)
==============================  ================================================================

Any entry may carry ``intent`` (the admitted intent, Avro-shaped): SR writes it into the
first entry of a run only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from worker.core.engine import MAX_ATTEMPT_NO, AttemptId, EngineStatus
from worker.core.ledger import LedgerEntry, LedgerKind
from worker.core.models import MAX_DETAIL_CHARS, Hex64
from worker.errors import IntegrityError

__all__ = [
    "TYPED_KINDS",
    "EngineRequestedBody",
    "EngineResultBody",
    "LedgerBody",
    "ReadyBody",
    "RetriedBody",
    "RevokedBody",
    "StatusBody",
    "SupersededBody",
    "TriggerBody",
    "body_of",
    "parse_body",
    "recorded_plan_hash",
]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The admitted intent (Avro dict); only on a run's first entry.
    intent: dict[str, Any] | None = None

    #: Fields written even when ``None`` (everything else is left out when ``None``).
    _always: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        """The stored body: ``None`` fields are omitted unless the kind always writes them."""
        data = self.model_dump(mode="json")
        return {k: v for k, v in data.items() if v is not None or k in self._always}


class ReadyBody(_Body):
    """A committed fact: READY with its facts view (and, after a SUPERSEDE, the old one)."""

    plan_hash: Hex64
    facts_view_hash: Hex64
    facts_view_uri: str
    policy_rev: str
    supersedes_facts_view_hash: Hex64 | None = None


class StatusBody(_Body):
    """A WAITING / FAILED / QUARANTINED transition. ``plan_hash`` is null when no plan exists."""

    _always = frozenset({"plan_hash"})

    plan_hash: Hex64 | None
    reason_code: str
    detail: str


class SupersededBody(_Body):
    """The announcement that ``old_facts_view_hash`` is replaced by ``new_facts_view_hash``."""

    old_facts_view_hash: Hex64
    new_facts_view_hash: Hex64
    facts_view_uri: str
    plan_hash: Hex64
    policy_rev: str


class TriggerBody(_Body):
    """A trigger on record: who asked for what, when (``requested_at`` in epoch ms), and the
    id of the key that signed it when triggers must be signed (contract §10; left out when
    unsigned, so unsigned triggers keep their bytes)."""

    kind: str
    reason: str
    requested_by: str
    requested_at: int
    key_id: str | None = None


class RevokedBody(_Body):
    """The READY of ``facts_view_hash`` is withdrawn: a re-verification (``reason_code``
    EVIDENCE_CONTRADICTS_READY, ``detail`` says which check failed) no longer supports it.
    The fields of the revoked fact are repeated so the REVOKED event is rebuilt from this
    entry alone."""

    facts_view_hash: Hex64
    facts_view_uri: str
    plan_hash: Hex64
    policy_rev: str
    reason_code: str
    detail: str


class RetriedBody(_Body):
    """An authorized RETRY reopened the run, which was ``previous_status`` with
    ``previous_reason_code``; ``requested_by`` / ``requested_at`` (epoch ms) name the
    trigger, so a re-delivered RETRY is applied once."""

    previous_status: str
    previous_reason_code: str | None
    requested_by: str
    requested_at: int
    reason: str

    _always = frozenset({"previous_reason_code"})

    @property
    def plan_hash(self) -> None:
        """A retry records no plan (readers collecting plan hashes skip it)."""
        return None


class EngineRequestedBody(_Body):
    """SR requested engine attempt ``attempt_no`` (1-based) with id ``attempt_id``
    (:func:`~worker.core.identity.attempt_id_for`) for the plan ``plan_hash`` (policy
    ``policy_rev``); no result is expected after ``attempt_deadline`` (epoch ms). The entry's
    ``at_ms`` is the request's ``requested_at``, so the entry and the admitted intent are all
    it takes to rebuild the request's exact bytes.
    """

    attempt_id: AttemptId
    attempt_no: Annotated[int, Strict(), Field(ge=1, le=MAX_ATTEMPT_NO)]
    attempt_deadline: Annotated[int, Strict(), Field(ge=0)]
    plan_hash: Hex64
    policy_rev: Hex64


class EngineResultBody(_Body):
    """The engine's result for attempt ``attempt_id``, as SR recorded it (also for a superseded
    attempt: recorded, then ignored). ``detail`` is the result's, at most 4096 characters."""

    attempt_id: AttemptId
    status: EngineStatus
    detail: Annotated[str, Strict(), Field(max_length=MAX_DETAIL_CHARS)]

    @property
    def plan_hash(self) -> None:
        """An engine entry records no plan (readers collecting plan hashes skip it)."""
        return None


LedgerBody = (ReadyBody | StatusBody | SupersededBody | TriggerBody | EngineRequestedBody | EngineResultBody
              | RevokedBody | RetriedBody)

_MODEL_OF: Final[dict[LedgerKind, type[_Body]]] = {
    LedgerKind.READY: ReadyBody,
    LedgerKind.WAITING: StatusBody,
    LedgerKind.FAILED: StatusBody,
    LedgerKind.QUARANTINED: StatusBody,
    LedgerKind.SUPERSEDED: SupersededBody,
    LedgerKind.TRIGGER: TriggerBody,
    LedgerKind.ENGINE_REQUESTED: EngineRequestedBody,
    LedgerKind.ENGINE_RESULT: EngineResultBody,
    LedgerKind.REVOKED: RevokedBody,
    LedgerKind.RETRIED: RetriedBody,
}


#: The entry kinds SR writes, i.e. the kinds :func:`parse_body` accepts.
TYPED_KINDS: Final = frozenset(_MODEL_OF)


def body_of(body: LedgerBody, *, intent: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dict to store for ``body``, with ``intent`` added (a run's first entry)."""
    if intent is not None:
        body = body.model_copy(update={"intent": intent})
    return body.to_dict()


def parse_body(entry: LedgerEntry) -> LedgerBody:
    """The typed body of ``entry``.

    Raises:
        IntegrityError: SR writes no body for this kind, or the body does not fit it.
    """
    model = _MODEL_OF.get(entry.kind)
    if model is None:
        raise IntegrityError(f"ledger seq {entry.seq} of run {entry.run_id}: no typed body for {entry.kind.value}")
    try:
        parsed = model.model_validate(entry.body)
    except ValidationError as exc:
        raise IntegrityError(f"ledger seq {entry.seq} of run {entry.run_id} ({entry.kind.value}) has an invalid body: "
                             f"{exc.error_count()} problem(s), first: {exc.errors()[0]['msg']}") from exc
    return parsed  # type: ignore[return-value]  # _MODEL_OF only holds LedgerBody members


def recorded_plan_hash(entries: Sequence[LedgerEntry]) -> str | None:
    """The first plan hash any entry's body records (a run plans once, so every entry that
    names a plan names the same one); None if none does. For runs that never were READY,
    whose fold (:attr:`~worker.core.ledger.RunState.plan_hash`) has none.

    Raises:
        IntegrityError: an entry's body does not fit its kind.
    """
    for entry in entries:
        if entry.kind is LedgerKind.TRIGGER:
            continue
        body = parse_body(entry)
        if not isinstance(body, TriggerBody) and body.plan_hash is not None:
            return body.plan_hash
    return None
