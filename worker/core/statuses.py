"""How SR's status enums derive from one another (contract §4, §5).

The enums share values: a :class:`~worker.core.evidence.Classification` other than COMPLETE
*is* a :class:`~worker.core.models.RunStatus` of the same name, which *is* a
:class:`~worker.core.ledger.LedgerKind` and a :class:`~worker.core.models.StatusEventStatus`
of the same name. These functions derive one from the other instead of keeping mapping
tables; ``tests/unit/test_statuses.py`` checks the enums keep agreeing.
"""

from __future__ import annotations

from typing import Final

from worker.core.evidence import Classification
from worker.core.ledger import LedgerKind
from worker.core.models import TERMINAL_STATUSES, RunStatus, StatusEventStatus

__all__ = ["FINAL_STATUSES", "event_status", "ledger_kind", "run_status"]

#: Statuses nothing but a trigger (SUPERSEDE) moves a run out of.
FINAL_STATUSES: Final = TERMINAL_STATUSES | {RunStatus.READY}


def run_status(classification: Classification) -> RunStatus:
    """The run status a classification leads to (COMPLETE → READY)."""
    return RunStatus.READY if classification is Classification.COMPLETE else RunStatus(classification.value)


def ledger_kind(status: RunStatus) -> LedgerKind:
    """The ledger entry kind that records a transition to ``status``."""
    return LedgerKind(status.value)


def event_status(status: RunStatus) -> StatusEventStatus:
    """The ``RunStatusEvent.status`` announcing ``status``.

    Raises:
        ValueError: ``status`` is not announced on the status topic (ADMITTED, READY).
    """
    return StatusEventStatus(status.value)


