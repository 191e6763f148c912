"""Hash-chained ledger: chain verification and state derivation."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.canonical import sha256_hex
from worker.core.ledger import (
    LedgerEntry,
    LedgerKind,
    derive_state,
    entry_bytes,
    entry_hash,
    next_entry,
    parse_ledger,
)
from worker.core.models import RunStatus
from worker.errors import IntegrityError

RUN = "0123456789abcdef0123456789abcdef"
OTHER = "f" * 32
F1, F2, F3, P = "1" * 64, "2" * 64, "3" * 64, "9" * 64


def chain(*steps: tuple[LedgerKind, dict[str, Any]] | tuple[LedgerKind, dict[str, Any], int]) -> list[LedgerEntry]:
    entries: list[LedgerEntry] = []
    for i, step in enumerate(steps):
        kind, body = step[0], step[1]
        epoch = step[2] if len(step) == 3 else 1
        entries.append(
            next_entry(RUN, entries[-1] if entries else None, kind=kind, at_ms=1000 + i, lease_epoch=epoch, body=body)
        )
    return entries


def raw(entries: list[LedgerEntry]) -> list[bytes]:
    return [entry_bytes(e) for e in entries]


ADMIT = (LedgerKind.ADMITTED, {"plan_hash": P})
WAIT = (LedgerKind.WAITING, {"reason_code": "EVIDENCE_MISSING", "detail": "x"})
READY1 = (LedgerKind.READY, {"facts_view_hash": F1, "plan_hash": P})


def test_chain_roundtrip() -> None:
    entries = chain(ADMIT, WAIT, READY1)
    assert entries[0].prev_hash is None
    assert entries[1].prev_hash == sha256_hex(entry_bytes(entries[0])) == entry_hash(entries[0])
    assert parse_ledger(raw(entries), run_id=RUN) == tuple(entries)
    assert parse_ledger([], run_id=RUN) == ()


def test_entry_bytes_canonical() -> None:
    data = entry_bytes(chain(ADMIT)[0])
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()


def test_edit_detected() -> None:
    stored = raw(chain(ADMIT, WAIT, READY1))
    edited = json.loads(stored[1])
    edited["body"]["detail"] = "changed"
    stored[1] = json.dumps(edited, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(IntegrityError, match="seq 2"):
        parse_ledger(stored, run_id=RUN)


def test_missing_and_reordered_detected() -> None:
    stored = raw(chain(ADMIT, WAIT, READY1))
    with pytest.raises(IntegrityError, match="seq 1"):
        parse_ledger([stored[0], stored[2]], run_id=RUN)
    with pytest.raises(IntegrityError, match="seq 0"):
        parse_ledger([stored[1], stored[0], stored[2]], run_id=RUN)
    with pytest.raises(IntegrityError):
        parse_ledger(stored[1:], run_id=RUN)


def test_reformatted_or_garbage_detected() -> None:
    stored = raw(chain(ADMIT, WAIT))
    pretty = json.dumps(json.loads(stored[0]), indent=2).encode()
    with pytest.raises(IntegrityError, match="canonical"):
        parse_ledger([pretty, stored[1]], run_id=RUN)
    for junk in (b"", b"\xff", b"[]", b"{}", b"[" * 10_000, b'{"a":NaN}'):
        with pytest.raises(IntegrityError, match="seq 0"):
            parse_ledger([junk], run_id=RUN)


def test_wrong_run_detected() -> None:
    with pytest.raises(IntegrityError):
        parse_ledger(raw(chain(ADMIT)), run_id=OTHER)


def test_entry_validation() -> None:
    with pytest.raises(ValueError, match="prev_hash"):
        LedgerEntry(run_id=RUN, seq=1, prev_hash=None, kind=LedgerKind.ADMITTED, at_ms=0, lease_epoch=0)
    with pytest.raises(ValueError, match="prev_hash"):
        LedgerEntry(run_id=RUN, seq=0, prev_hash=F1, kind=LedgerKind.ADMITTED, at_ms=0, lease_epoch=0)
    with pytest.raises(ValueError, match="canonical"):
        LedgerEntry(
            run_id=RUN, seq=0, prev_hash=None, kind=LedgerKind.ADMITTED, at_ms=0, lease_epoch=0, body={"x": 0.5}
        )
    with pytest.raises(IntegrityError):
        next_entry(OTHER, chain(ADMIT)[0], kind=LedgerKind.WAITING, at_ms=0, lease_epoch=0)


@given(st.lists(st.binary(max_size=80), max_size=4))
def test_random_bytes_only_integrity_error(blobs: list[bytes]) -> None:
    try:
        parse_ledger(blobs, run_id=RUN)
    except IntegrityError:
        pass


# ----------------------------------------------------------------------- derived state
def test_states() -> None:
    assert derive_state(chain(ADMIT)).status is RunStatus.ADMITTED
    state = derive_state(chain(ADMIT, WAIT))
    assert (state.status, state.last_reason_code, state.plan_hash) == (RunStatus.WAITING, "EVIDENCE_MISSING", P)
    ready = derive_state(chain(ADMIT, WAIT, READY1))
    assert ready.status is RunStatus.READY
    assert ready.facts_view_hash == F1
    assert ready.ready_at_ms == 1002
    assert ready.facts_history == (F1,)
    assert ready.last_seq == 2


def test_trigger_and_published_do_not_change_status() -> None:
    entries = chain(
        ADMIT,
        READY1,
        (LedgerKind.TRIGGER, {"kind": "REEMIT"}),
        (LedgerKind.PUBLISHED, {"facts_view_hash": F1, "event_type": "READY"}),
        READY1,  # idempotent repeat
    )
    state = derive_state(entries)
    assert state.status is RunStatus.READY
    assert state.ready_at_ms == 1001  # the first commit of the fact, not the repeat
    assert state.published == ((F1, "READY"),)


def test_supersede_flow() -> None:
    entries = chain(
        ADMIT,
        READY1,
        (LedgerKind.SUPERSEDED, {"old_facts_view_hash": F1, "new_facts_view_hash": F2}),
    )
    mid = derive_state(entries)
    assert (mid.status, mid.facts_view_hash, mid.pending_supersede) == (RunStatus.READY, F1, (F1, F2))
    entries = chain(
        ADMIT,
        READY1,
        (LedgerKind.SUPERSEDED, {"old_facts_view_hash": F1, "new_facts_view_hash": F2}),
        (LedgerKind.READY, {"facts_view_hash": F2, "plan_hash": P}),
    )
    state = derive_state(entries)
    assert (state.status, state.facts_view_hash, state.ready_at_ms) == (RunStatus.READY, F2, 1003)
    assert state.facts_history == (F1, F2)
    assert state.pending_supersede is None


def test_terminal_states() -> None:
    failed = (LedgerKind.FAILED, {"reason_code": "EVIDENCE_MISSING_DEADLINE", "detail": ""})
    state = derive_state(chain(ADMIT, failed, WAIT))
    assert (state.status, state.last_reason_code) == (RunStatus.FAILED, "EVIDENCE_MISSING_DEADLINE")
    with pytest.raises(IntegrityError):
        derive_state(chain(ADMIT, failed, READY1))
    revived = derive_state(
        chain(ADMIT, failed, (LedgerKind.SUPERSEDED, {"old_facts_view_hash": None, "new_facts_view_hash": F1}), READY1)
    )
    assert revived.status is RunStatus.READY
    quarantined = (LedgerKind.QUARANTINED, {"reason_code": "DIGEST_MISMATCH", "detail": ""})
    assert derive_state(chain(ADMIT, READY1, quarantined)).status is RunStatus.QUARANTINED
    assert derive_state(chain(ADMIT, READY1, WAIT, failed)).status is RunStatus.READY
    rejected = (LedgerKind.REJECTED, {"reason_code": "EVIDENCE_ROOT_FORBIDDEN", "detail": ""})
    assert derive_state(chain(rejected)).status is RunStatus.REJECTED


@pytest.mark.parametrize(
    "steps",
    [
        [ADMIT, READY1, (LedgerKind.READY, {"facts_view_hash": F2, "plan_hash": P})],
        [ADMIT, (LedgerKind.READY, {"plan_hash": P})],
        [ADMIT, (LedgerKind.READY, {"facts_view_hash": "x", "plan_hash": P})],
        [ADMIT, READY1, (LedgerKind.SUPERSEDED, {"old_facts_view_hash": F3, "new_facts_view_hash": F2})],
        [ADMIT, READY1, (LedgerKind.SUPERSEDED, {"old_facts_view_hash": F1, "new_facts_view_hash": F1})],
        [
            ADMIT,
            READY1,
            (LedgerKind.SUPERSEDED, {"old_facts_view_hash": F1, "new_facts_view_hash": F2}),
            (LedgerKind.READY, {"facts_view_hash": F3, "plan_hash": P}),
        ],
        [ADMIT, (LedgerKind.PUBLISHED, {"facts_view_hash": F1, "event_type": "NOPE"})],
        [(LedgerKind.TRIGGER, {})],
    ],
)
def test_contradictions_fail_closed(steps: list[tuple[LedgerKind, dict[str, Any]]]) -> None:
    with pytest.raises(IntegrityError):
        derive_state(chain(*steps))


def test_empty_and_mixed() -> None:
    with pytest.raises(IntegrityError):
        derive_state([])
    other = next_entry(OTHER, None, kind=LedgerKind.ADMITTED, at_ms=0, lease_epoch=0)
    with pytest.raises(IntegrityError):
        derive_state([*chain(ADMIT), other])


def test_fenced_entries_ignored() -> None:
    entries = chain(
        (LedgerKind.ADMITTED, {}, 1),
        (LedgerKind.WAITING, {"reason_code": "EVIDENCE_MISSING"}, 2),
        (LedgerKind.FAILED, {"reason_code": "STALE"}, 1),  # written by the fenced epoch-1 holder
    )
    state = derive_state(entries)
    assert (state.status, state.fenced_seqs, state.lease_epoch) == (RunStatus.WAITING, (2,), 2)
