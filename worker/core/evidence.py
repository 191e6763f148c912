"""Pure parts of evidence verification (contract §4): flags, indexes, digests, classification.

The I/O side (listing bundles, streaming members with byte caps) lives in the runtime; it
feeds bytes and digests into these functions and gets typed outcomes back. Everything here
fails closed: anything unexpected is an error or a non-PASS outcome, never a PASS.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from worker.core.canonical import canonical_json, parse_json_strict
from worker.core.keys import validate_relative_key
from worker.core.models import Hex64, Identifier, to_utc
from worker.core.policy import GateMethod
from worker.errors import BadFlagError, BadIndexError, InvalidJSONError, MessageTooLargeError, UnsafeKeyError

__all__ = [
    "FLAG_NAME",
    "INDEX_NAME",
    "MAX_RECEIPT_BYTES",
    "RECEIPT_NAME",
    "Classification",
    "ClassificationResult",
    "GateOutcome",
    "GateResult",
    "IndexEntry",
    "bundle_member_order",
    "check_receipt",
    "classify",
    "member_concat_digest",
    "parse_index_json",
    "parse_passed_flag",
    "receipt_document",
]

FLAG_NAME: Final = "_passed.flag"
INDEX_NAME: Final = "index.json"
#: A scoped gate's instance proof, a member of its bundle (contract §4, instance binding).
RECEIPT_NAME: Final = "_receipt.json"
MAX_RECEIPT_BYTES: Final = 64 * 1024
DEFAULT_INDEX_MAX_BYTES: Final = 16 * 1024 * 1024

_FLAG_RE: Final = re.compile(rb"sha256_hex=([0-9a-f]{64})\n?")
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")


def parse_passed_flag(data: bytes) -> str:
    """Return the digest in a ``_passed.flag``.

    The content must be exactly ``sha256_hex=<64 lowercase hex>`` optionally followed by a
    single ``\\n`` — no CR, BOM, spaces, second line or uppercase hex.

    Raises:
        BadFlagError: anything else.
    """
    if not isinstance(data, bytes | bytearray) or len(data) > 100:
        raise BadFlagError("_passed.flag is not a single 'sha256_hex=<hex64>' line")
    match = _FLAG_RE.fullmatch(bytes(data))
    if match is None:
        raise BadFlagError("_passed.flag is not a single 'sha256_hex=<hex64>' line")
    return match.group(1).decode("ascii")


class IndexEntry(BaseModel):
    """One member of a ``sha256_member_digest_concat`` bundle's ``index.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    sha256_hex: Hex64


def parse_index_json(
    data: bytes, *, max_entries: int = 100_000, max_bytes: int = DEFAULT_INDEX_MAX_BYTES
) -> tuple[IndexEntry, ...]:
    """Parse a bundle's ``index.json``: a non-empty JSON array of ``{"path", "sha256_hex"}``.

    Paths are relative keys of safe segments (no ``..``, no leading ``/``), unique, and
    neither ``_passed.flag`` nor ``index.json``; digests are 64 lowercase hex.
    Array order is preserved (it defines the concatenation order).

    Raises:
        BadIndexError: anything else, including invalid JSON, more than ``max_entries``
            entries, or more than ``max_bytes`` bytes.
    """
    try:
        doc = parse_json_strict(data, max_bytes=max_bytes, max_depth=3)
    except (InvalidJSONError, MessageTooLargeError) as exc:
        raise BadIndexError(f"index.json: {exc}") from exc
    if not isinstance(doc, list):
        raise BadIndexError("index.json must be a JSON array")
    if not doc:
        # An empty index would let an empty bundle pass: fail closed.
        raise BadIndexError("index.json lists no members")
    if len(doc) > max_entries:
        raise BadIndexError(f"index.json has {len(doc)} entries, cap is {max_entries}")
    entries: list[IndexEntry] = []
    seen: set[str] = set()
    for position, item in enumerate(doc):
        if not isinstance(item, dict) or set(item) != {"path", "sha256_hex"}:
            raise BadIndexError(f"index.json entry {position} must be exactly {{'path', 'sha256_hex'}}")
        path, digest = item["path"], item["sha256_hex"]
        if not isinstance(digest, str) or _HEX64_RE.fullmatch(digest) is None:
            raise BadIndexError(f"index.json entry {position}: sha256_hex must be 64 lowercase hex")
        try:
            validate_relative_key(path)
        except UnsafeKeyError as exc:
            raise BadIndexError(f"index.json entry {position}: unsafe path: {exc}") from exc
        if path in (FLAG_NAME, INDEX_NAME):
            raise BadIndexError(f"index.json entry {position}: {path!r} cannot be a member")
        if path in seen:
            raise BadIndexError(f"index.json entry {position}: duplicate path {path!r}")
        seen.add(path)
        entries.append(IndexEntry(path=path, sha256_hex=digest))
    return tuple(entries)


def bundle_member_order(relative_keys: Iterable[str]) -> list[str]:
    """Members of a ``sha256_bundle_digest`` bundle in digest order.

    Excludes the bundle-root ``_passed.flag`` and sorts by the UTF-8 bytes of the relative
    key (= ASCII order, since safe keys are ASCII).

    Raises:
        UnsafeKeyError: a listed key is not a safe relative key (hostile bundle contents).
        BadIndexError: a key is listed twice.
    """
    members: list[str] = []
    for key in relative_keys:
        validate_relative_key(key)
        if key != FLAG_NAME:
            members.append(key)
    if len(set(members)) != len(members):
        raise BadIndexError("bundle listing contains a key twice")
    return sorted(members, key=lambda k: k.encode("utf-8"))


def member_concat_digest(hexes: Iterable[str]) -> str:
    """sha256 over the concatenated member hex digests, in the given (index) order.

    Raises:
        BadIndexError: an element is not 64 lowercase hex characters.
    """
    digest = hashlib.sha256()
    for value in hexes:
        if not isinstance(value, str) or _HEX64_RE.fullmatch(value) is None:
            raise BadIndexError("member digest must be 64 lowercase hex characters")
        digest.update(value.encode("ascii"))
    return digest.hexdigest()


# --------------------------------------------------------------------------- outcomes
class GateOutcome(StrEnum):
    """Result of verifying one gate bundle."""

    PASS = "PASS"  # noqa: S105 - an outcome, not a password
    MISSING = "MISSING"
    MISMATCH = "MISMATCH"
    BAD_FLAG = "BAD_FLAG"
    BAD_INDEX = "BAD_INDEX"
    TOO_LARGE = "TOO_LARGE"
    INSTANCE_MISMATCH = "INSTANCE_MISMATCH"  # the receipt names another run's values
    INSTANCE_PROOF_MISSING = "INSTANCE_PROOF_MISSING"  # a scoped gate without a usable receipt


class GateResult(BaseModel):
    """What verifying one gate found (the raw material of a facts-view receipt).

    ``scope`` is the gate's instance binding; ``bound`` the values its receipt proved (set on
    PASS of a scoped gate: exactly the run's own values of ``scope``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    gate_id: Identifier
    method: GateMethod
    bundle_uri: str
    outcome: GateOutcome
    expected_digest: Hex64 | None = None
    computed_digest: Hex64 | None = None
    member_count: int = Field(default=0, ge=0)
    byte_count: int = Field(default=0, ge=0)
    detail: str = ""
    scope: tuple[str, ...] = ()
    bound: dict[str, str | int] = Field(default_factory=dict)


def receipt_document(gate_id: str, scope: Iterable[str], instance: Mapping[str, str | int]) -> bytes:
    """The ``_receipt.json`` a producer writes into a gate scoped to ``scope``: canonical JSON
    of ``gate_id`` and ``instance``'s value of each scope field (what :func:`check_receipt`
    accepts)."""
    return canonical_json({"gate_id": gate_id, **{field: instance[field] for field in scope}})


def check_receipt(  # noqa: PLR0911 - one return per verdict, in the order they are checked
    data: bytes | None, *, gate_id: str, scope: Sequence[str], instance: Mapping[str, str | int],
) -> tuple[GateOutcome, str, dict[str, str | int]]:
    """Judge a scoped gate's ``_receipt.json`` (whose bytes the flag already covers).

    The receipt must be a canonical-JSON object (at most :data:`MAX_RECEIPT_BYTES`) with
    ``gate_id`` equal to the gate and, for every scope field, the run's own value (same JSON
    type: ``seed`` an integer, the rest strings). Other keys are allowed and ignored.

    Returns:
        ``(PASS, "", bound values)``; ``(INSTANCE_PROOF_MISSING, detail, {})`` when there is
        no receipt, it is not canonical JSON, not an object, or lacks a scope field;
        ``(INSTANCE_MISMATCH, detail, {})`` when it names another gate or another value.
    """
    missing = GateOutcome.INSTANCE_PROOF_MISSING
    if data is None:
        return missing, f"{RECEIPT_NAME} not covered by the flag", {}
    try:
        doc = parse_json_strict(data, max_bytes=MAX_RECEIPT_BYTES, max_depth=2)
    except (InvalidJSONError, MessageTooLargeError) as exc:
        return missing, f"{RECEIPT_NAME}: {exc}", {}
    if not isinstance(doc, dict):
        return missing, f"{RECEIPT_NAME} is not a JSON object", {}
    if canonical_json(doc) != bytes(data):
        return missing, f"{RECEIPT_NAME} is not canonical JSON (sorted keys, no whitespace)", {}
    if doc.get("gate_id") != gate_id:
        return GateOutcome.INSTANCE_MISMATCH, f"{RECEIPT_NAME} is for gate {str(doc.get('gate_id'))[:80]!r}", {}
    absent = sorted(f for f in scope if f not in doc)
    if absent:
        return missing, f"{RECEIPT_NAME} does not name {', '.join(absent)}", {}
    wrong = sorted(f for f in scope if type(doc[f]) is not type(instance[f]) or doc[f] != instance[f])
    if wrong:
        shown = ", ".join(f"{f}={json.dumps(doc[f])[:80]}" for f in wrong)
        return GateOutcome.INSTANCE_MISMATCH, f"{RECEIPT_NAME} is for another instance: {shown}", {}
    return GateOutcome.PASS, "", {f: instance[f] for f in sorted(scope)}


class Classification(StrEnum):
    """Classification of a run from its gate results."""

    COMPLETE = "COMPLETE"
    WAITING = "WAITING"
    FAILED = "FAILED"
    QUARANTINED = "QUARANTINED"


class ClassificationResult(BaseModel):
    """A classification plus the ``reason_code``/``detail`` of the status event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    classification: Classification
    reason_code: str
    detail: str


# Deterministic precedence among the FAILED outcomes.
_FAILED_ORDER: Final = (GateOutcome.BAD_FLAG, GateOutcome.BAD_INDEX, GateOutcome.TOO_LARGE,
                        GateOutcome.INSTANCE_PROOF_MISSING)


def _gates_with(results: Sequence[GateResult], outcome: GateOutcome) -> list[str]:
    return sorted(r.gate_id for r in results if r.outcome is outcome)


def classify(  # noqa: PLR0911 - one return per verdict, in precedence order
    results: Sequence[GateResult], *, deadline: datetime | None, now: datetime,
) -> ClassificationResult:
    """Classify a run from its gate results (fail closed).

    Precedence: any MISMATCH → QUARANTINED/DIGEST_MISMATCH; else any INSTANCE_MISMATCH →
    QUARANTINED/INSTANCE_MISMATCH (evidence of another run under this run's root); else any
    BAD_FLAG, BAD_INDEX, TOO_LARGE or INSTANCE_PROOF_MISSING → FAILED with that reason (in
    that order); else any MISSING → WAITING/
    EVIDENCE_MISSING before the deadline, FAILED/EVIDENCE_MISSING_DEADLINE at or after it;
    else COMPLETE/ALL_GATES_PASS. No results at all is FAILED/NO_GATES, never COMPLETE.
    A PASS without matching expected/computed digests is treated as a MISMATCH.

    Raises:
        ValueError: ``now`` or ``deadline`` is naive, or a gate id appears twice (caller bugs).
    """
    now_utc = to_utc(now)
    deadline_utc = None if deadline is None else to_utc(deadline)
    ids = [r.gate_id for r in results]
    if len(set(ids)) != len(ids):
        raise ValueError("classify: a gate appears twice in results")
    if not results:
        return ClassificationResult(
            classification=Classification.FAILED, reason_code="NO_GATES", detail="no gate results to judge"
        )
    # A "PASS" whose digests disagree (or are absent) is evidence we cannot trust.
    bogus = sorted(
        r.gate_id
        for r in results
        if r.outcome is GateOutcome.PASS and (r.expected_digest is None or r.expected_digest != r.computed_digest)
    )
    mismatched = sorted({*_gates_with(results, GateOutcome.MISMATCH), *bogus})
    if mismatched:
        return ClassificationResult(
            classification=Classification.QUARANTINED,
            reason_code="DIGEST_MISMATCH",
            detail=f"digest mismatch in gate(s): {', '.join(mismatched)}",
        )
    foreign = [r for r in results if r.outcome is GateOutcome.INSTANCE_MISMATCH]
    if foreign:
        return ClassificationResult(
            classification=Classification.QUARANTINED,
            reason_code="INSTANCE_MISMATCH",
            detail="; ".join(f"{r.gate_id}: {r.detail}" for r in sorted(foreign, key=lambda r: r.gate_id))[:2000],
        )
    for outcome in _FAILED_ORDER:
        failed = _gates_with(results, outcome)
        if failed:
            return ClassificationResult(
                classification=Classification.FAILED,
                reason_code=outcome.value,
                detail=f"{outcome.value} in gate(s): {', '.join(failed)}",
            )
    missing = _gates_with(results, GateOutcome.MISSING)
    if missing:
        listed = ", ".join(missing)
        if deadline_utc is None or now_utc < deadline_utc:
            return ClassificationResult(
                classification=Classification.WAITING,
                reason_code="EVIDENCE_MISSING",
                detail=f"evidence missing for gate(s): {listed}",
            )
        return ClassificationResult(
            classification=Classification.FAILED,
            reason_code="EVIDENCE_MISSING_DEADLINE",
            detail=f"evidence still missing at deadline {deadline_utc.isoformat()} for gate(s): {listed}",
        )
    return ClassificationResult(
        classification=Classification.COMPLETE,
        reason_code="ALL_GATES_PASS",
        detail=f"{len(results)} gate(s) passed",
    )
