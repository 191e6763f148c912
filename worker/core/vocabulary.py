"""SR's run vocabulary in one place: header names, publication keys, schema subjects, and how
the status enums relate (contract §2, §6).

Everything that spells a wire name or derives one status kind from another lives here, so
the processor, the publisher, the runpack verifier and the CLI cannot disagree:

* a READY / SUPERSEDE fact is keyed ``<run_id>:<facts_view_hash>:<event_type>`` — the outbox
  ``pub_key`` and the ``sr-idempotency-key`` header are the same string;
* a status event is keyed ``<run_id>:status:<ledger_seq>:<status>``;
* an engine request is keyed ``<run_id>:engine:<attempt_id>`` (one per attempt, contract §8);
* a topic's Schema Registry subject is ``<topic>-value`` (TopicNameStrategy);

The engine orchestration reason codes (contract §8) are spelled here too.

It imports nothing, so every layer (models included) can use it. How the status enums
derive from one another is in :mod:`worker.core.statuses`.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DLQ_HEADERS",
    "ENGINE_EVIDENCE_INCOMPLETE",
    "ENGINE_FAILED",
    "ENGINE_REASON_CODES",
    "ENGINE_RUNNING",
    "ENGINE_TIMEOUT",
    "ERROR_CLASS_HEADER",
    "ERROR_HEADER_PREFIX",
    "ERROR_MESSAGE_HEADER",
    "EVIDENCE_CONTRADICTS_READY",
    "IDEMPOTENCY_HEADER",
    "MAX_ERROR_MESSAGE_CHARS",
    "SOURCE_OFFSET_HEADER",
    "SOURCE_PARTITION_HEADER",
    "SOURCE_TOPIC_HEADER",
    "engine_request_key",
    "fact_key",
    "status_key",
    "value_subject",
]

# --------------------------------------------------------------------------- headers
IDEMPOTENCY_HEADER: Final = "sr-idempotency-key"
ERROR_HEADER_PREFIX: Final = "sr-error"
ERROR_CLASS_HEADER: Final = "sr-error-class"
ERROR_MESSAGE_HEADER: Final = "sr-error-message"
SOURCE_TOPIC_HEADER: Final = "sr-source-topic"
SOURCE_PARTITION_HEADER: Final = "sr-source-partition"
SOURCE_OFFSET_HEADER: Final = "sr-source-offset"
#: Every header a DLQ copy carries, in the order SR writes them.
DLQ_HEADERS: Final = (ERROR_CLASS_HEADER, ERROR_MESSAGE_HEADER, SOURCE_TOPIC_HEADER, SOURCE_PARTITION_HEADER,
                      SOURCE_OFFSET_HEADER)
#: Longest ``sr-error-message`` value SR writes (characters).
MAX_ERROR_MESSAGE_CHARS: Final = 1024

# --------------------------------------------------------------------------- engine reason codes
#: WAITING while an engine attempt is open (requested, no result yet).
ENGINE_RUNNING: Final = "ENGINE_RUNNING"
#: FAILED: the last allowed attempt reported FAILED (or SUCCEEDED with incomplete evidence).
ENGINE_FAILED: Final = "ENGINE_FAILED"
#: FAILED: the last allowed attempt sent no result by its attempt deadline.
ENGINE_TIMEOUT: Final = "ENGINE_TIMEOUT"
#: An attempt reported SUCCEEDED but verification still found evidence missing: it counts as failed.
ENGINE_EVIDENCE_INCOMPLETE: Final = "ENGINE_EVIDENCE_INCOMPLETE"
#: Every reason code of the engine path.
ENGINE_REASON_CODES: Final = frozenset({ENGINE_RUNNING, ENGINE_FAILED, ENGINE_TIMEOUT, ENGINE_EVIDENCE_INCOMPLETE})

# --------------------------------------------------------------------------- recovery reason codes (contract §11)
#: QUARANTINED: a READY run's evidence no longer verifies; its READY was revoked.
EVIDENCE_CONTRADICTS_READY: Final = "EVIDENCE_CONTRADICTS_READY"

# --------------------------------------------------------------------------- keys
def fact_key(run_id: str, facts_view_hash: str, event_type: str) -> str:
    """Outbox key and idempotency header of a READY / SUPERSEDE fact."""
    return f"{run_id}:{facts_view_hash}:{event_type}"


def status_key(run_id: str, ledger_seq: int, status: str) -> str:
    """Outbox key and idempotency header of a status event recorded at ``ledger_seq``."""
    return f"{run_id}:status:{ledger_seq}:{status}"


def engine_request_key(run_id: str, attempt_id: str) -> str:
    """Outbox key and idempotency header of the engine request of attempt ``attempt_id``."""
    return f"{run_id}:engine:{attempt_id}"


def value_subject(topic: str) -> str:
    """The Schema Registry subject of ``topic``'s values (TopicNameStrategy)."""
    return f"{topic}-value"
