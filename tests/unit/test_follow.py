"""The follower's bookkeeping (contract §9): each current fact per run is handed over once per change."""

from __future__ import annotations

from typing import Any

from worker.core.follow import Decision, FactTracker
from worker.core.models import ReadyEvent

from .conftest import H1, H2

RUN, OTHER = "a" * 32, "b" * 32
OLD, NEW, NEWER = "1" * 64, "2" * 64, "3" * 64


def event(kind: str, fv: str, *, run: str = RUN, supersedes: str | None = None) -> ReadyEvent:
    datum: dict[str, Any] = {
        "event_type": kind, "run_id": run, "facts_view_hash": fv,
        "facts_view_uri": f"s3://sr-dev/sr/run/{run}/facts/{fv}.json", "supersedes_facts_view_hash": supersedes,
        "tenant_id": "t", "namespace": "n", "scenario_id": "s",
        "pins": {"manifest_fingerprint": H1, "parameter_hash": H2, "seed": 1},
        "policy_rev": "d" * 64, "plan_hash": "e" * 64, "emitted_at": 1_700_000_000_000}
    return ReadyEvent.from_avro(datum)


def decisions(tracker: FactTracker, events: list[ReadyEvent]) -> list[Decision]:
    return [tracker.offer(e) for e in events]


def test_a_ready_is_handed_once_and_re_sends_are_dropped() -> None:
    tracker = FactTracker()
    ready = event("READY", OLD)
    assert decisions(tracker, [ready, ready, event("READY", OLD)]) == [Decision.HAND, Decision.DUPLICATE,
                                                                        Decision.DUPLICATE]
    assert tracker.current == {RUN: OLD}


def test_a_supersede_chain_hands_each_new_current_fact_once() -> None:
    tracker = FactTracker()
    stream = [event("READY", OLD),
              event("SUPERSEDE", NEW, supersedes=OLD), event("READY", NEW, supersedes=OLD),
              event("SUPERSEDE", NEWER, supersedes=NEW), event("READY", NEWER, supersedes=NEW)]
    assert decisions(tracker, stream) == [Decision.HAND, Decision.RECORDED, Decision.HAND,
                                          Decision.RECORDED, Decision.HAND]
    assert tracker.current == {RUN: NEWER}
    # A replay of the whole history (sr replay, a re-read from the beginning) changes nothing...
    assert set(decisions(tracker, stream)) == {Decision.DUPLICATE}
    # ...and an old READY re-emitted later never becomes current again.
    fresh = FactTracker()
    decisions(fresh, stream[1:])  # the consumer joined after the first READY
    assert fresh.offer(event("READY", OLD)) is Decision.STALE
    assert fresh.current == {RUN: NEWER}


def test_a_ready_that_carries_its_supersedes_retires_the_old_view_even_without_the_supersede() -> None:
    tracker = FactTracker()
    assert tracker.offer(event("READY", NEW, supersedes=OLD)) is Decision.HAND
    assert tracker.offer(event("READY", OLD)) is Decision.STALE


def test_revoked_is_handed_when_it_withdraws_the_current_fact() -> None:
    tracker = FactTracker()
    assert tracker.offer(event("READY", OLD)) is Decision.HAND
    assert tracker.offer(event("REVOKED", OLD)) is Decision.HAND
    assert tracker.current == {}
    assert tracker.offer(event("READY", OLD)) is Decision.DUPLICATE  # the same READY again
    assert FactTracker().offer(event("REVOKED", NEW)) is Decision.RECORDED  # not a current fact


def test_runs_are_independent_and_a_rejected_ready_is_not_current() -> None:
    tracker = FactTracker()
    assert decisions(tracker, [event("READY", OLD), event("READY", OLD, run=OTHER)]) == [Decision.HAND] * 2
    bad = event("READY", NEW, run=OTHER)
    assert tracker.offer(bad) is Decision.HAND
    tracker.reject(bad)
    assert tracker.current == {RUN: OLD, OTHER: OLD}  # the previous fact stays current
    assert tracker.offer(bad) is Decision.HAND  # a re-send is judged (verified) again
