"""The run ledger: append-only, hash-chained, write-once entries (contract §5).

Entry ``seq`` lives at ``record/<seq:012d>.json`` and carries ``prev_hash`` = sha256 of the
exact bytes of entry ``seq-1``; entries are canonical JSON, so an edited, missing, reordered
or re-formatted entry is detected by :func:`parse_ledger`. Status is *derived* from the
ledger by :func:`derive_state`; nothing else is authoritative.

Bodies are canonical-JSON data. The kinds SR writes (READY, WAITING, FAILED, QUARANTINED,
SUPERSEDED, TRIGGER, for engine attempts ENGINE_REQUESTED and ENGINE_RESULT (contract §8), and
for recovery and revocation RETRIED and REVOKED (contract §11))
have typed bodies in :mod:`worker.core.ledger_bodies`; a run's first entry also carries the
admitted ``intent``. ADMITTED, REJECTED and PUBLISHED are never
written; :func:`derive_state` still folds them (ADMITTED/REJECTED as statuses, PUBLISHED as
``facts_view_hash`` + ``event_type``) so that a hand-made ledger is judged, not crashed on.

Fencing: an entry whose ``lease_epoch`` is lower than an epoch already seen earlier in the
chain was written by a fenced (stale) lease holder; :func:`derive_state` ignores it and lists
its seq in :attr:`RunState.fenced_seqs`.

Engine attempts: ENGINE_REQUESTED and ENGINE_RESULT never change the status (the lifecycle
writes status entries for that, e.g. WAITING ``ENGINE_RUNNING``); they build the attempt view
:attr:`RunState.attempts` / :attr:`RunState.open_attempt`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Final, Literal, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from worker.core.canonical import canonical_json, parse_json_strict, sha256_hex
from worker.core.engine import EngineStatus
from worker.core.identity import attempt_id_for
from worker.core.models import TERMINAL_STATUSES, Hex64, RunId, RunStatus
from worker.errors import CanonicalJSONError, IntegrityError, InvalidJSONError, MessageTooLargeError

__all__ = [
    "LEDGER_FORMAT_VERSION",
    "EngineAttempt",
    "LedgerEntry",
    "LedgerKind",
    "RunState",
    "derive_state",
    "entry_bytes",
    "entry_hash",
    "next_entry",
    "parse_entry",
    "parse_ledger",
]

LEDGER_FORMAT_VERSION: Final = 1
MAX_ENTRY_BYTES: Final = 1024 * 1024
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")
_HEX32_RE: Final = re.compile(r"[0-9a-f]{32}")
_ENGINE_STATUSES: Final = frozenset(s.value for s in EngineStatus)


class LedgerKind(StrEnum):
    """Kind of a ledger entry."""

    ADMITTED = "ADMITTED"
    WAITING = "WAITING"
    READY = "READY"
    FAILED = "FAILED"
    QUARANTINED = "QUARANTINED"
    REJECTED = "REJECTED"
    TRIGGER = "TRIGGER"
    SUPERSEDED = "SUPERSEDED"
    PUBLISHED = "PUBLISHED"
    ENGINE_REQUESTED = "ENGINE_REQUESTED"
    ENGINE_RESULT = "ENGINE_RESULT"
    REVOKED = "REVOKED"  # contract §11: a READY whose evidence no longer verifies is withdrawn
    RETRIED = "RETRIED"  # contract §11: an authorized RETRY reopened a FAILED / QUARANTINED run


class LedgerEntry(BaseModel):
    """One immutable ledger entry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1] = LEDGER_FORMAT_VERSION
    run_id: RunId
    seq: int = Field(ge=0, le=10**12 - 1, strict=True)
    prev_hash: Hex64 | None
    kind: LedgerKind
    at_ms: int = Field(ge=0, strict=True)
    lease_epoch: int = Field(ge=0, strict=True)
    body: dict[str, Any] = Field(default_factory=dict)

    @field_validator("body")
    @classmethod
    def _canonical_body(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            canonical_json(value)
        except CanonicalJSONError as exc:
            raise ValueError(f"body is not canonical-JSON data: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _chain_start(self) -> Self:
        if (self.seq == 0) != (self.prev_hash is None):
            raise ValueError("prev_hash must be null exactly at seq 0")
        return self


def entry_bytes(entry: LedgerEntry) -> bytes:
    """The exact stored bytes of an entry (canonical JSON)."""
    return canonical_json(entry.model_dump(mode="json"))


def entry_hash(entry: LedgerEntry) -> str:
    """sha256 of :func:`entry_bytes` (the next entry's ``prev_hash``)."""
    return sha256_hex(entry_bytes(entry))


def next_entry(
    run_id: str,
    previous: LedgerEntry | None,
    *,
    kind: LedgerKind,
    at_ms: int,
    lease_epoch: int,
    body: dict[str, Any] | None = None,
) -> LedgerEntry:
    """Build the entry that follows ``previous`` (or the first entry if ``None``).

    Raises:
        IntegrityError: ``previous`` belongs to another run.
        pydantic.ValidationError: invalid field values (a caller bug).
    """
    if previous is not None and previous.run_id != run_id:
        raise IntegrityError("previous ledger entry belongs to another run")
    return LedgerEntry(
        run_id=run_id,
        seq=0 if previous is None else previous.seq + 1,
        prev_hash=None if previous is None else entry_hash(previous),
        kind=kind,
        at_ms=at_ms,
        lease_epoch=lease_epoch,
        body=body or {},
    )


def parse_entry(data: bytes, *, run_id: str, seq: int) -> LedgerEntry:
    """Parse one stored entry and check it is canonical and belongs at ``(run_id, seq)``.

    Raises:
        IntegrityError: invalid JSON/shape, non-canonical bytes, or wrong run_id/seq.
    """
    try:
        entry = LedgerEntry.model_validate(parse_json_strict(data, max_bytes=MAX_ENTRY_BYTES))
    except (InvalidJSONError, MessageTooLargeError, ValidationError) as exc:
        raise IntegrityError(f"ledger entry seq {seq} of run {run_id} is invalid: {exc}") from exc
    if entry_bytes(entry) != bytes(data):
        raise IntegrityError(f"ledger entry seq {seq} of run {run_id} is not in canonical form")
    if entry.run_id != run_id:
        raise IntegrityError(f"ledger entry seq {seq} names run {entry.run_id}, expected {run_id}")
    if entry.seq != seq:
        raise IntegrityError(f"ledger entry at seq {seq} claims seq {entry.seq}")
    return entry


def parse_ledger(raw: Sequence[bytes], *, run_id: str) -> tuple[LedgerEntry, ...]:
    """Parse and verify a run's ledger (the raw bytes of entries ``0..n-1`` in order).

    Raises:
        IntegrityError: an entry is invalid, out of place, not canonical, for another run, or
            its ``prev_hash`` is not the sha256 of the previous entry's bytes (the message
            names the seq).
    """
    entries: list[LedgerEntry] = []
    previous_hash: str | None = None
    for seq, data in enumerate(raw):
        entry = parse_entry(data, run_id=run_id, seq=seq)
        if entry.prev_hash != previous_hash:
            raise IntegrityError(f"ledger hash chain of run {run_id} broken at seq {seq}")
        previous_hash = sha256_hex(bytes(data))
        entries.append(entry)
    return tuple(entries)


# --------------------------------------------------------------------------- derived state
class EngineAttempt(NamedTuple):
    """One engine attempt as the ledger records it: ``status`` is None until its result is in.

    Times are epoch milliseconds: ``requested_at_ms`` is the ENGINE_REQUESTED entry's time,
    ``deadline_ms`` its ``attempt_deadline``, ``result_at_ms`` the time SR recorded the result
    (None without one); ``detail`` is the result's.
    """

    attempt_no: int
    attempt_id: str
    status: EngineStatus | None
    requested_at_ms: int = 0
    deadline_ms: int = 0
    result_at_ms: int | None = None
    detail: str = ""


class RunState(BaseModel):
    """Status of a run as derived from its ledger.

    ``attempts`` lists the engine attempts in ``attempt_no`` order (1, 2, ...);
    ``open_attempt`` is the latest one if it has no result yet (an older attempt without a
    result was superseded by the next request and is never open again).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    status: RunStatus
    facts_view_hash: str | None = None
    ready_at_ms: int | None = None
    facts_history: tuple[str, ...] = ()
    last_reason_code: str | None = None
    plan_hash: str | None = None
    pending_supersede: tuple[str | None, str] | None = None
    published: tuple[tuple[str, str], ...] = ()
    last_seq: int
    lease_epoch: int
    fenced_seqs: tuple[int, ...] = ()
    attempts: tuple[EngineAttempt, ...] = ()
    open_attempt: EngineAttempt | None = None
    #: Facts views withdrawn by REVOKED entries, oldest first (contract §11).
    revoked: tuple[str, ...] = ()
    #: Attempts recorded before the latest RETRIED entry: they no longer count against the
    #: engine budget (numbering goes on after them).
    attempts_before_retry: int = 0
    #: How many RETRIED entries the ledger holds.
    retries: int = 0


_TERMINAL: Final = TERMINAL_STATUSES


def _optional_hash(entry: LedgerEntry, name: str) -> str | None:
    value = entry.body.get(name)
    return None if value is None else _required_hash(entry, name)


def _required_hash(entry: LedgerEntry, name: str) -> str:
    value = entry.body.get(name)
    if not isinstance(value, str) or _HEX64_RE.fullmatch(value) is None:
        raise IntegrityError(f"ledger entry seq {entry.seq} ({entry.kind.value}) lacks a valid {name}")
    return value


class _Deriver:
    """Mutable accumulator behind :func:`derive_state` (kept out of the public API)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.status: RunStatus | None = None
        self.facts: str | None = None
        self.ready_at: int | None = None
        self.history: list[str] = []
        self.reason: str | None = None
        self.plan_hash: str | None = None
        self.pending: tuple[str | None, str] | None = None
        self.published: set[tuple[str, str]] = set()
        self.attempts: list[EngineAttempt] = []
        self.revoked: list[str] = []
        self.attempts_before_retry = 0
        self.retries = 0

    def apply(self, entry: LedgerEntry) -> None:
        kind = entry.kind
        if kind is LedgerKind.READY:
            self._ready(entry)
        elif kind is LedgerKind.SUPERSEDED:
            old = _optional_hash(entry, "old_facts_view_hash")
            new = _required_hash(entry, "new_facts_view_hash")
            if old != self.facts or new == old:
                raise IntegrityError(f"ledger seq {entry.seq}: SUPERSEDED {old}->{new} does not fit state")
            self.pending = (old, new)
        elif kind is LedgerKind.PUBLISHED:
            fv = _required_hash(entry, "facts_view_hash")
            event_type = entry.body.get("event_type")
            if event_type not in ("READY", "SUPERSEDE", "REVOKED"):
                raise IntegrityError(f"ledger seq {entry.seq}: PUBLISHED lacks facts_view_hash/event_type")
            self.published.add((fv, str(event_type)))
        elif kind is LedgerKind.TRIGGER:
            pass  # audit only: a trigger asks for work, it is not a state change
        elif kind is LedgerKind.ENGINE_REQUESTED:
            self._engine_requested(entry)
        elif kind is LedgerKind.ENGINE_RESULT:
            self._engine_result(entry)
        elif kind is LedgerKind.REVOKED:
            self._revoked(entry)
        elif kind is LedgerKind.RETRIED:
            self._retried(entry)
        else:
            self._status_entry(entry, RunStatus(kind.value))  # status kinds share the status's name

    def _status_entry(self, entry: LedgerEntry, status: RunStatus) -> None:
        plan = entry.body.get("plan_hash")
        if status is RunStatus.ADMITTED and isinstance(plan, str) and _HEX64_RE.fullmatch(plan):
            self.plan_hash = plan
        if self.status in _TERMINAL:
            return  # terminal: only a READY via supersede leaves it
        if self.status is RunStatus.READY and status is not RunStatus.QUARANTINED:
            return  # committed facts are immutable; only contradicting evidence demotes them
        if status is RunStatus.ADMITTED and self.status is not None:
            return  # re-admission of a known run is a no-op
        self.status = status
        reason = entry.body.get("reason_code")
        if isinstance(reason, str):
            self.reason = reason

    def _revoked(self, entry: LedgerEntry) -> None:
        fv = _required_hash(entry, "facts_view_hash")
        if self.status is not RunStatus.READY or fv != self.facts or self.pending is not None:
            raise IntegrityError(f"ledger seq {entry.seq}: REVOKED {fv} does not fit a "
                                 f"{self.status.value if self.status else 'new'} run with facts {self.facts}")
        reason = entry.body.get("reason_code")
        # ``facts`` keeps naming the last facts view (now revoked, see ``revoked``), as the
        # index row does: the status says it is no longer in force.
        self.status = RunStatus.QUARANTINED
        self.reason = reason if isinstance(reason, str) else None
        self.revoked.append(fv)

    def _retried(self, entry: LedgerEntry) -> None:
        if self.status not in (RunStatus.FAILED, RunStatus.QUARANTINED):
            raise IntegrityError(f"ledger seq {entry.seq}: RETRIED on a "
                                 f"{self.status.value if self.status else 'new'} run (only FAILED / QUARANTINED)")
        self.status = RunStatus.ADMITTED
        self.reason = None
        self.attempts_before_retry = len(self.attempts)
        self.retries += 1

    def _engine_requested(self, entry: LedgerEntry) -> None:
        attempt_no = entry.body.get("attempt_no")
        if isinstance(attempt_no, bool) or not isinstance(attempt_no, int) or attempt_no < 1:
            raise IntegrityError(f"ledger entry seq {entry.seq} (ENGINE_REQUESTED) lacks a valid attempt_no")
        attempt_id = _required_attempt_id(entry)
        if attempt_id != attempt_id_for(self.run_id, attempt_no):
            raise IntegrityError(f"ledger seq {entry.seq}: attempt_id {attempt_id} is not attempt {attempt_no} "
                                 f"of run {self.run_id}")
        deadline = entry.body.get("attempt_deadline")
        if isinstance(deadline, bool) or not isinstance(deadline, int) or deadline <= entry.at_ms:
            raise IntegrityError(f"ledger entry seq {entry.seq} (ENGINE_REQUESTED) lacks a valid attempt_deadline")
        if attempt_no <= len(self.attempts):
            return  # a repeat of a recorded request changes nothing
        if attempt_no != len(self.attempts) + 1:
            raise IntegrityError(f"ledger seq {entry.seq}: ENGINE_REQUESTED attempt {attempt_no} follows "
                                 f"attempt {len(self.attempts)}")
        self.attempts.append(EngineAttempt(attempt_no, attempt_id, None, requested_at_ms=entry.at_ms,
                                           deadline_ms=deadline))

    def _engine_result(self, entry: LedgerEntry) -> None:
        attempt_id = _required_attempt_id(entry)
        status = entry.body.get("status")
        if not isinstance(status, str) or status not in _ENGINE_STATUSES:
            raise IntegrityError(f"ledger entry seq {entry.seq} (ENGINE_RESULT) lacks a valid status")
        position = next((i for i, a in enumerate(self.attempts) if a.attempt_id == attempt_id), None)
        if position is None:
            raise IntegrityError(f"ledger seq {entry.seq}: ENGINE_RESULT for attempt {attempt_id}, "
                                 "which was never requested")
        if self.attempts[position].status is None:
            detail = entry.body.get("detail")
            self.attempts[position] = self.attempts[position]._replace(
                status=EngineStatus(status), result_at_ms=entry.at_ms, detail=detail if isinstance(detail, str) else "")
        # else: an attempt's first recorded result stands; a later one changes nothing

    def _ready(self, entry: LedgerEntry) -> None:
        fv = _required_hash(entry, "facts_view_hash")
        plan = _required_hash(entry, "plan_hash")
        if self.pending is not None:
            if fv != self.pending[1]:
                raise IntegrityError(f"ledger seq {entry.seq}: READY {fv} does not match pending supersede")
            self.pending = None
        elif self.status is RunStatus.READY and fv == self.facts:
            return  # idempotent repeat of the current fact
        elif self.status is RunStatus.READY or self.status in _TERMINAL:
            raise IntegrityError(f"ledger seq {entry.seq}: READY {fv} on a {self.status.value} run without SUPERSEDED")
        self.status = RunStatus.READY
        self.facts = fv
        self.ready_at = entry.at_ms
        self.plan_hash = plan
        self.reason = None
        self.history.append(fv)


def _required_attempt_id(entry: LedgerEntry) -> str:
    value = entry.body.get("attempt_id")
    if not isinstance(value, str) or _HEX32_RE.fullmatch(value) is None:
        raise IntegrityError(f"ledger entry seq {entry.seq} ({entry.kind.value}) lacks a valid attempt_id")
    return value


def derive_state(entries: Sequence[LedgerEntry]) -> RunState:
    """Fold a verified ledger (from :func:`parse_ledger`) into the run's state.

    Rules: ADMITTED→ADMITTED; WAITING→WAITING; READY(facts, plan)→READY; SUPERSEDED(old→new)
    then READY(new)→READY with the new hash; FAILED/QUARANTINED/REJECTED are terminal unless
    a later READY follows a SUPERSEDED; a READY run only leaves READY for QUARANTINED;
    TRIGGER, PUBLISHED, ENGINE_REQUESTED and ENGINE_RESULT never change status;
    REVOKED(facts) takes a READY run with exactly those facts to QUARANTINED (``facts_view_hash``
    still names them, and they join :attr:`RunState.revoked`); RETRIED takes a FAILED / QUARANTINED run
    back to ADMITTED, so the next decision is made afresh (attempts before it no longer count
    against the engine budget). Engine
    entries build the attempt view: ENGINE_REQUESTED(attempt_id, attempt_no) adds attempt
    ``attempt_no`` (numbered 1, 2, ... without gaps; a repeat is a no-op), ENGINE_RESULT
    (attempt_id, status) sets a requested attempt's status once (a later result for it is a
    no-op). Entries of fenced lease holders are skipped, engine entries included.

    A ledger whose entries set no status but whose first entry records the admitted intent
    (a trigger recorded before the run's first decision) is ADMITTED.

    Raises:
        IntegrityError: empty ledger, mixed run ids, no status and no admitted intent, or an
            entry that contradicts the state
            (READY on a READY/terminal run without SUPERSEDED, SUPERSEDED from a hash that
            is not current, missing body fields, an attempt_id that is not
            ``attempt_id_for(run_id, attempt_no)``, an attempt number out of sequence, a result
            for an attempt never requested, REVOKED of facts that are not current, RETRIED of
            a run that is not FAILED / QUARANTINED).
    """
    if not entries:
        raise IntegrityError("cannot derive state from an empty ledger")
    run_id = entries[0].run_id
    deriver = _Deriver(run_id)
    max_epoch = -1
    fenced: list[int] = []
    for entry in entries:
        if entry.run_id != run_id:
            raise IntegrityError(f"ledger seq {entry.seq} belongs to run {entry.run_id}")
        if entry.lease_epoch < max_epoch:
            fenced.append(entry.seq)
            continue
        max_epoch = entry.lease_epoch
        deriver.apply(entry)
    if deriver.status is None:
        if isinstance(entries[0].body.get("intent"), dict):
            # The first entry records the admitted intent (e.g. a trigger recorded before the
            # run's first decision): the run is admitted, nothing more.
            deriver.status = RunStatus.ADMITTED
        else:
            # Only TRIGGER/PUBLISHED/SUPERSEDED/ENGINE_* entries: nothing ever admitted the run.
            raise IntegrityError(f"ledger of run {run_id} never establishes a status")
    return RunState(
        run_id=run_id,
        status=deriver.status,
        facts_view_hash=deriver.facts,
        ready_at_ms=deriver.ready_at,
        facts_history=tuple(deriver.history),
        last_reason_code=deriver.reason,
        plan_hash=deriver.plan_hash,
        pending_supersede=deriver.pending,
        published=tuple(sorted(deriver.published)),
        last_seq=entries[-1].seq,
        lease_epoch=max_epoch,
        fenced_seqs=tuple(fenced),
        attempts=tuple(deriver.attempts),
        open_attempt=deriver.attempts[-1] if deriver.attempts and deriver.attempts[-1].status is None else None,
        revoked=tuple(deriver.revoked),
        attempts_before_retry=deriver.attempts_before_retry,
        retries=deriver.retries,
    )
