"""What handling one message did: the vocabulary of logs, metrics and tests."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from worker.errors import SRError

__all__ = ["Action", "Outcome"]


class Action(enum.StrEnum):
    """What handling one message did. The first five are run statuses of the same name."""

    READY = "READY"
    WAITING = "WAITING"
    FAILED = "FAILED"
    QUARANTINED = "QUARANTINED"
    REJECTED = "REJECTED"
    DUPLICATE = "DUPLICATE"
    BUSY = "BUSY"
    UNCHANGED = "UNCHANGED"
    REEMITTED = "REEMITTED"
    SUPERSEDED = "SUPERSEDED"
    ENGINE_REQUESTED = "ENGINE_REQUESTED"
    REVOKED = "REVOKED"  # a READY was withdrawn (contract §11)
    REFUSED = "REFUSED"  # a trigger on record that asked for something not allowed (a RETRY)


@dataclass(frozen=True)
class Outcome:
    """Result of handling one message: the action, the run it was about, and a detail
    (a facts_view_hash, a reason_code or a short explanation).

    ``dead_letter`` is set when the decision includes a DLQ copy of the message (a
    REJECTED intent): the runtime writes it — the one place that writes the DLQ, for
    rejections and for poison messages alike — before the offset is stored.
    """

    action: Action
    run_id: str | None
    detail: str = ""
    dead_letter: SRError | None = None
