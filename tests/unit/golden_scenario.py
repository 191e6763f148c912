"""The scenario behind the golden-bytes test: one of every kind of truth SR writes.

Run as a script (``python -m tests.unit.golden_scenario``) it rewrites
``tests/fixtures/golden_v2/objects.json``, and the test checks that today's code writes
exactly those bytes (plan, facts views, ledger entries, publication payloads).

``golden_v1`` is the fixture as it stood before instance binding (contract §4): plans without
output gates, format-1 facts views, ReadyEvent v1 frames. It is frozen: the tests check that
its plans still give byte-identical format-1 facts views and that its READY frames decode.
``golden_v2`` differs from it only where instance binding and ReadyEvent v2 say: each plan
records its outputs' covering gates and gate_6B's scope, each facts view is format 2 (scope,
bound values, outputs with locators), the example policy's ``policy_rev`` is the scoped one,
and sr.ready frames carry the ReadyEvent v2 fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.harness.app_world import BUCKET, PREFIX, World
from worker.core.identity import run_id_of
from worker.core.models import Strategy, TriggerKind

#: The scenario's intents say AUTO, the default strategy, as they did when the fixture was made.
AUTO = Strategy.AUTO
GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden_v2" / "objects.json"
GOLDEN_V1 = Path(__file__).resolve().parents[1] / "fixtures" / "golden_v1" / "objects.json"


def run_scenario() -> dict[str, Any]:
    """Drive the scenario on a fresh in-memory world; returns everything SR wrote."""
    world = World()
    processor = world.processor()
    # READY at first sight (both gates), then a correction: SUPERSEDE(old->new) + READY(new).
    ready = world.intent("ready", outputs=("transactions", "accounts"), strategy=AUTO)
    world.write_complete(ready)
    world.handle(processor, ready)
    world.clock.advance(60)
    world.write_gate_6b(ready, {"part-0": b"corrected-0\n", "part-1": b"transactions-1\n"})
    world.handle_trigger(processor, world.trigger(run_id_of(ready), TriggerKind.SUPERSEDE, reason="fix"))
    world.handle_trigger(processor, world.trigger(run_id_of(ready), TriggerKind.REEMIT, reason="resend"))
    # WAITING, then READY after EVIDENCE_ARRIVED.
    waiting = world.intent("waiting", outputs=("accounts",), strategy=AUTO)
    world.handle(processor, waiting)
    world.clock.advance(5)
    world.write_gate_3a(waiting)
    world.handle_trigger(processor, world.trigger(run_id_of(waiting), TriggerKind.EVIDENCE_ARRIVED))
    # FAILED: an output the policy does not know. QUARANTINED: a tampered member.
    world.handle(processor, world.intent("unknown", outputs=("nope",), strategy=AUTO))
    tampered = world.intent("tampered", outputs=("transactions",), strategy=AUTO)
    world.write_gate_3a(tampered)
    world.write_gate_6b(tampered, tamper={"part-1": b"evil\n"})
    world.handle(processor, tampered)
    objects = {key: world.store.read(BUCKET, key).decode() for key in world.store.keys(BUCKET, f"{PREFIX}/")}
    messages = [{"topic": m.topic, "key": (m.key or b"").decode(), "value": m.value.hex(),
                 "headers": {k: v.decode() for k, v in m.headers}} for m in world.sink.sent]
    return {"objects": objects, "messages": messages}


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(run_scenario(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
