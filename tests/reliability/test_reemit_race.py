"""Ordered re-emission on real servers (contract §11): operators re-emitting READY runs over and
over while a worker supersedes them never put READY(old) after READY(new) on ``sr.ready``.

``sr reemit`` and ``sr replay`` read the ledger and send while holding the run's lease (the one
every commit holds), so a re-emit either sends before the SUPERSEDE commits (READY(old), then
the worker's SUPERSEDE and READY(new)) or after it (READY(new)). Without the lease, the
re-emitter can read the ledger, lose the CPU to the SUPERSEDE, and then send READY(old) after
READY(new): the unit variant (``tests/unit/test_app_recovery.py``) shows that happens in most
rounds when the lease is skipped. Rounds: ``SR_RACE_RUNS`` runs (default 12; ``make soak`` 60),
each re-emitted continuously by two operator threads while its SUPERSEDE is handled.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict

import pytest

from tests.harness.evidence import EvidenceWriter
from tests.harness.kafka import produce_raw, read_topic, submit
from tests.harness.parallel import HEAVY
from tests.harness.probes import wait_for
from tests.harness.sr_env import SREnv, make_intent
from tests.harness.workers import WorkerThread
from tests.integration.test_engine_orchestration import row
from tests.reliability.conftest import SOAK
from worker.app.operators import reemit_run
from worker.core.identity import run_id_of
from worker.core.models import EventType, RunTrigger, TriggerKind
from worker.errors import InputError, LeaseBusyError
from worker.runtime.compose import open_operator_services

# HEAVY (tests/harness/parallel.py): several worker processes under load, run one at a time.
pytestmark = [pytest.mark.integration, HEAVY]

RUNS = int(os.environ.get("SR_RACE_RUNS", "60" if SOAK else "12"))


@pytest.mark.timeout(300)
def test_reemit_racing_supersede_never_puts_ready_old_after_ready_new(sr_env: SREnv,
                                                                      write_evidence: EvidenceWriter) -> None:
    from datetime import UTC, datetime

    env, settings = sr_env, sr_env.settings
    intents = [make_intent(env, f"race-{i}") for i in range(RUNS)]
    for i in range(RUNS):
        write_evidence(f"race-{i}")
    worker = WorkerThread(env, sweep_interval=3600).start()
    stop = threading.Event()
    sent: dict[str, int] = defaultdict(int)
    errors: list[BaseException] = []

    def reemitter(offset: int) -> None:
        try:
            with open_operator_services(settings) as services:
                i = offset
                while not stop.is_set():
                    run_id = run_id_of(intents[i % RUNS])
                    try:
                        reemit_run(run_id, processor=services.processor, index=services.index,
                                   truth=services.truth)
                        sent[run_id] += 1
                    except (InputError, LeaseBusyError):
                        pass  # not READY yet, or the worker held the lease for all of the wait
                    i += 1
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    try:
        submit(env, intents)
        assert wait_for(lambda: all(row(env, i) == ("READY", None) for i in intents), timeout=120)
        for i in range(RUNS):  # corrected evidence: a SUPERSEDE gives every run a new facts view
            write_evidence(f"race-{i}", extra_6b={"transactions/correction.csv": b"tx,corrected\n"})
        threads = [threading.Thread(target=reemitter, args=(k,), daemon=True) for k in range(2)]
        for thread in threads:
            thread.start()
        assert wait_for(lambda: sum(sent.values()) >= RUNS, timeout=60)  # re-emits are flowing
        now = datetime.now(UTC)
        produce_raw(env, settings.topics.triggers, [
            (run_id_of(i).encode(), env.codec.encode_trigger(RunTrigger(
                run_id=run_id_of(i), kind=TriggerKind.SUPERSEDE, reason="correction", requested_by="ops",
                requested_at=now))) for i in intents])
        assert wait_for(lambda: all(row(env, i) == ("READY", None) and _superseded(env, i) for i in intents),
                        timeout=120)
        stop.wait(2.0)  # keep re-emitting the new facts for a while
    finally:
        stop.set()
        for thread in threads if "threads" in locals() else []:
            thread.join(30)
        worker.stop()
    assert not errors, errors
    # Everything was produced (and acknowledged) before this point: read what is there.
    records = read_topic(settings.kafka_bootstrap, settings.topics.ready, until=lambda rs: len(rs) >= 3 * RUNS,
                         timeout=30, settle=1.5)
    by_run: dict[bytes, list[tuple[EventType, str]]] = defaultdict(list)
    for record in records:
        event = env.codec.decode_ready(record.value or b"")
        by_run[record.key or b""].append((event.event_type, event.facts_view_hash))
    resent_after_new = 0
    for intent in intents:
        facts = by_run[run_id_of(intent).encode()]
        old = facts[0][1]
        new = next(fv for kind, fv in facts if kind is EventType.SUPERSEDE)
        first_new = facts.index((EventType.READY, new))
        tail = facts[first_new:]
        assert (EventType.READY, old) not in tail, (run_id_of(intent), facts)
        resent_after_new += tail.count((EventType.READY, new)) - 1
    # The race was real: re-emits of every run happened around its SUPERSEDE.
    assert sum(sent.values()) > 2 * RUNS and resent_after_new > 0, (dict(sent), resent_after_new)


def _superseded(env: SREnv, intent: object) -> bool:
    from tests.integration.test_engine_orchestration import ledger_kinds

    return "SUPERSEDED" in ledger_kinds(env, intent)  # type: ignore[arg-type]
