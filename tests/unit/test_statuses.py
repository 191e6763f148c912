"""The status enums agree with one another by value (worker.core.statuses derives, never maps)."""

from __future__ import annotations

import pytest

from worker.core.evidence import Classification
from worker.core.ledger import LedgerKind
from worker.core.models import EventType, RunStatus, StatusEventStatus
from worker.core.statuses import FINAL_STATUSES, event_status, ledger_kind, run_status
from worker.core.vocabulary import fact_key, status_key, value_subject


@pytest.mark.parametrize("classification", list(Classification))
def test_every_classification_leads_to_a_run_status(classification: Classification) -> None:
    status = run_status(classification)
    assert status is (RunStatus.READY if classification is Classification.COMPLETE else RunStatus(classification.value))


@pytest.mark.parametrize("status", [s for s in RunStatus if s is not RunStatus.ADMITTED])
def test_every_status_after_admission_has_a_ledger_kind(status: RunStatus) -> None:
    assert ledger_kind(status).value == status.value


def test_status_events_announce_exactly_the_non_ready_transitions() -> None:
    announced = {s for s in RunStatus if s.value in StatusEventStatus.__members__}
    assert announced == set(RunStatus) - {RunStatus.ADMITTED, RunStatus.READY}
    assert {event_status(s) for s in announced} == set(StatusEventStatus)
    with pytest.raises(ValueError):
        event_status(RunStatus.READY)


def test_final_statuses_are_the_ones_a_classification_cannot_leave() -> None:
    assert {RunStatus.READY, RunStatus.FAILED, RunStatus.QUARANTINED, RunStatus.REJECTED} == FINAL_STATUSES
    # READY and REVOKED facts are recorded by ledger entries of the same name (SUPERSEDE by SUPERSEDED).
    assert {LedgerKind(e.value) for e in EventType if e.value in LedgerKind.__members__} == \
        {LedgerKind.READY, LedgerKind.REVOKED}


def test_keys_and_subjects() -> None:
    run = "0" * 32
    assert fact_key(run, "f" * 64, "READY") == f"{run}:{'f' * 64}:READY"
    assert status_key(run, 3, "WAITING") == f"{run}:status:3:WAITING"
    assert value_subject("sr.ready") == "sr.ready-value"
