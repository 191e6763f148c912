"""Run identity (contract §3): equivalence key, run id, intent fingerprint, lock key.

* ``run_equivalence_key`` = sha256(canonical JSON of {tenant_id, namespace, scenario_id,
  pins, window_start, window_end, sorted(output_ids)}), timestamps as epoch millis.
* ``run_id`` = first 32 hex chars of sha256("sr_run|" + run_equivalence_key).
* ``intent_fingerprint`` = sha256(canonical JSON of the intent's Avro-shaped dict minus
  request_id, submitted_at, submitted_by and deadline, with output_ids sorted).
* ``attempt_id`` (contract §8) = first 32 hex chars of
  sha256("sr_attempt|" + run_id + "|" + str(attempt_no)).

Changing anything here changes every run id in existence: the unit tests pin golden values.
"""

from __future__ import annotations

import re
from typing import Any, Final

from worker.core.canonical import canonical_json, sha256_hex
from worker.core.models import RunIntent, millis
from worker.errors import UnsafeKeyError

__all__ = [
    "attempt_id_for",
    "equivalence_material",
    "fingerprint_material",
    "intent_fingerprint",
    "run_equivalence_key",
    "run_id_for",
    "run_id_of",
    "run_lock_key",
]

_RUN_ID_PREFIX: Final = "sr_run|"
_ATTEMPT_ID_PREFIX: Final = "sr_attempt|"
#: Fields that describe *who asked and when*, not *what* was asked: a re-submission that
#: differs only in these is a duplicate, not a collision.
_NON_FINGERPRINT_FIELDS: Final = frozenset({"request_id", "submitted_at", "submitted_by", "deadline"})
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")
_RUN_ID_RE: Final = re.compile(r"[0-9a-f]{32}")


def equivalence_material(intent: RunIntent) -> dict[str, Any]:
    """The plain dict whose canonical JSON is hashed into the run equivalence key."""
    return {
        "tenant_id": intent.tenant_id,
        "namespace": intent.namespace,
        "scenario_id": intent.scenario_id,
        "pins": intent.pins.to_avro(),
        "window_start": millis(intent.window_start),
        "window_end": millis(intent.window_end),
        "output_ids": sorted(intent.output_ids),
    }


def run_equivalence_key(intent: RunIntent) -> str:
    """The run equivalence key (64 lowercase hex) of an intent."""
    return sha256_hex(canonical_json(equivalence_material(intent)))


def run_id_for(equivalence_key: str) -> str:
    """The run id (32 lowercase hex) of an equivalence key.

    Raises:
        UnsafeKeyError: ``equivalence_key`` is not 64 lowercase hex characters.
    """
    if not isinstance(equivalence_key, str) or _HEX64_RE.fullmatch(equivalence_key) is None:
        raise UnsafeKeyError("run equivalence key must be 64 lowercase hex characters")
    return sha256_hex((_RUN_ID_PREFIX + equivalence_key).encode("ascii"))[:32]


def run_id_of(intent: RunIntent) -> str:
    """Shortcut for ``run_id_for(run_equivalence_key(intent))``."""
    return run_id_for(run_equivalence_key(intent))


def fingerprint_material(intent: RunIntent) -> dict[str, Any]:
    """The plain dict whose canonical JSON is hashed into the intent fingerprint."""
    material = {k: v for k, v in intent.to_avro().items() if k not in _NON_FINGERPRINT_FIELDS}
    # Ordering of output_ids is not meaningful; sorting keeps a reordered re-submission a
    # duplicate rather than a collision.
    material["output_ids"] = sorted(intent.output_ids)
    return material


def intent_fingerprint(intent: RunIntent) -> str:
    """The intent fingerprint (64 lowercase hex): same key + different fingerprint = collision."""
    return sha256_hex(canonical_json(fingerprint_material(intent)))


def attempt_id_for(run_id: str, attempt_no: int) -> str:
    """The engine attempt id (32 lowercase hex) of attempt ``attempt_no`` (1-based) of a run.

    Raises:
        UnsafeKeyError: ``run_id`` is not 32 lowercase hex characters, or ``attempt_no`` is not
            an integer >= 1.
    """
    if not isinstance(run_id, str) or _RUN_ID_RE.fullmatch(run_id) is None:
        raise UnsafeKeyError("run_id must be 32 lowercase hex characters")
    if isinstance(attempt_no, bool) or not isinstance(attempt_no, int) or attempt_no < 1:
        raise UnsafeKeyError("attempt_no must be an integer >= 1")
    return sha256_hex(f"{_ATTEMPT_ID_PREFIX}{run_id}|{attempt_no}".encode("ascii"))[:32]


def run_lock_key(run_id: str) -> int:
    """The signed 64-bit Postgres advisory-lock key of a run (first 16 hex chars).

    Raises:
        UnsafeKeyError: ``run_id`` is not 32 lowercase hex characters.
    """
    if not isinstance(run_id, str) or _RUN_ID_RE.fullmatch(run_id) is None:
        raise UnsafeKeyError("run_id must be 32 lowercase hex characters")
    unsigned = int(run_id[:16], 16)
    # pg_advisory_lock takes a signed bigint: reinterpret the top bit as the sign.
    return unsigned - (1 << 64) if unsigned >= (1 << 63) else unsigned
