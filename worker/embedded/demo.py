"""The guided demo behind ``sr dev --demo`` (dev only): sample evidence, sample intents, the
worker and the reference engine in-process, and the events printed as they arrive.

The ``invoke`` sample has no evidence at all: SR requests engine attempt 1, the reference
engine (the loop behind ``sr engine simulate``) writes the evidence and reports SUCCEEDED, and
SR verifies it and commits READY — the INVOKE flow of contract §8 end to end.

Evidence bundles are built exactly as contract §4 describes, by the reference engine's bundle
writer (:mod:`worker.engine.bundles`: members, ``index.json`` for member-digest gates,
``_passed.flag`` last), so the demo exercises the real verification path: nothing is
special-cased for it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.adapters.s3 import ObjectStore
from worker.app.ports import Record
from worker.core.evidence import RECEIPT_NAME, receipt_document
from worker.core.identity import run_id_of
from worker.core.keys import parse_s3_uri
from worker.core.models import RunIntent
from worker.core.plan import scope_values
from worker.core.policy import load_policy
from worker.embedded.stack import Endpoints
from worker.engine.bundles import put_bundle_digest_gate, put_member_concat_gate

SAMPLES = ("complete", "waiting", "invoke", "tampered", "duplicate", "collision")


def samples_dir() -> Path:
    """Directory of the bundled sample intents."""
    return Path(str(resources.files("worker") / "schemas" / "samples"))


def example_policy_path() -> Path:
    """Path of the bundled example policy."""
    return Path(str(resources.files("worker") / "schemas" / "policy.example.toml"))


def load_sample(name: str) -> dict[str, Any]:
    """A sample intent (Avro dict shape) by name; ``duplicate`` is ``complete`` re-submitted."""
    base = "complete" if name == "duplicate" else name
    data: dict[str, Any] = json.loads((samples_dir() / f"{base}.json").read_text())
    if name == "duplicate":
        # Only fields outside the fingerprint differ: a duplicate, not a collision.
        data["request_id"] = "sample-duplicate-1"
        data["submitted_by"] = "another-producer"
    return data


def seed_example_evidence(store: ObjectStore, intent: RunIntent, *, tamper: bool = False) -> None:
    """Write evidence for the example policy's gates (gate_3A, gate_6B) under the intent's
    evidence root, with a ``_receipt.json`` naming the intent's run in each scoped gate
    (contract §4: gate_6B is bound to the run's pins and scenario; gate_3A is global).

    With ``tamper`` a member of gate_6B is overwritten after its flag was computed.
    """
    root = parse_s3_uri(intent.evidence_root)
    prefix = "/".join(root.segments)
    policy = load_policy(example_policy_path().read_bytes())
    instance = scope_values(pins=intent.pins, scenario_id=intent.scenario_id, run_id=run_id_of(intent))

    def with_receipt(gate_id: str, members: dict[str, bytes]) -> dict[str, bytes]:
        scope = policy.gates[gate_id].scope
        return {**members, RECEIPT_NAME: receipt_document(gate_id, scope, instance)} if scope else members

    put_member_concat_gate(store.put, root.bucket, f"{prefix}/gates/3A", with_receipt("gate_3A", {
        "accounts/part-0000.csv": b"account_id,balance\n1,100\n2,250\n",
        "accounts/part-0001.csv": b"account_id,balance\n3,75\n",
    }))
    members = {
        "transactions/part-0000.csv": b"tx_id,account_id,amount\n1,1,10\n2,2,-5\n",
        "transactions/part-0001.csv": b"tx_id,account_id,amount\n3,3,42\n",
    }
    put_bundle_digest_gate(store.put, root.bucket, f"{prefix}/gates/6B", with_receipt("gate_6B", members))
    for output in ("transactions", "accounts"):
        store.put(root.bucket, f"{prefix}/outputs/{output}/part-0000.parquet", f"{output} data".encode())
    if tamper:
        store.put(root.bucket, f"{prefix}/gates/6B/transactions/part-0001.csv", b"tx_id,account_id,amount\n3,3,4200\n")


EXPECTED = Counter({"READY": 2, "WAITING": 2, "QUARANTINED": 1, "REJECTED": 1, "DLQ": 1,
                    "ENGINE_REQUEST": 1, "ENGINE_RESULT": 1})


def run_demo(eps: Endpoints, console: Console, stop: threading.Event, *, exit_when_done: bool,
             timeout: float = 120.0) -> bool:
    """Run the worker in-process on ``eps``, feed the samples, print events as they arrive.

    Returns True when every sample reached its expected outcome within ``timeout`` seconds.
    """
    from worker.adapters.avro import AvroCodec
    from worker.adapters.kafka import EventProducer, TopicReader
    from worker.core.identity import run_id_of
    from worker.engine.loop import SimulatorLoop
    from worker.engine.simulator import SimulatorConfig
    from worker.logs import configure_logging
    from worker.runtime.compose import kafka_config, load_policy_file
    from worker.runtime.worker import Worker

    configure_logging("ERROR")
    settings, intents = _prepare(eps, console)
    codec = AvroCodec()
    policy = load_policy_file(settings.policy_file)
    worker = Worker(settings, policy)
    engine = SimulatorLoop(settings, policy, SimulatorConfig(delay=1.0), group_id=f"{settings.group_id}-engine")
    thread = threading.Thread(target=worker.run, name="sr-demo-worker", daemon=True)
    engine_thread = threading.Thread(target=engine.run, name="sr-demo-engine", daemon=True)
    thread.start()
    engine_thread.start()
    seen: Counter[str] = Counter()
    topics = settings.topics
    watch, stack = _open_watch(settings, codec)
    reader = TopicReader(kafka_config(settings), (topics.ready, topics.status, topics.dlq, topics.engine_requests,
                                                  topics.engine_results))
    try:
        reader.open()
        if not worker.ready.wait(60) or not engine.ready.wait(60):
            console.print("[red]worker or reference engine did not start[/]")
            return False
        with EventProducer(kafka_config(settings)) as producer:
            for name in SAMPLES:
                intent = intents[name]
                producer.send_and_wait(topics.intents, key=run_id_of(intent).encode(),
                                       value=codec.encode_intent(intent))
                console.print(f"submitted [cyan]{name:<9}[/] run_id={run_id_of(intent)}", highlight=False)
                if name == "tampered":
                    # Let the original run commit before its duplicate and collision arrive.
                    _drain(reader, watch, console, seen, stop, until=lambda: seen["READY"] >= 1, timeout=30)
        deadline = time.monotonic() + timeout
        done = _drain(reader, watch, console, seen, stop,
                      until=lambda: all(seen[k] >= v for k, v in EXPECTED.items()),
                      timeout=max(0.0, deadline - time.monotonic()))
        table = Table("outcome", "expected", "seen", title="demo summary")
        for key, want in EXPECTED.items():
            table.add_row(key, str(want), str(seen[key]))
        console.print(table)
        if not exit_when_done and not stop.is_set():
            console.print("worker keeps running; submit more with `sr submit` (Ctrl-C to stop)", highlight=False)
            while not stop.wait(0.3):
                _drain(reader, watch, console, seen, stop, until=lambda: False, timeout=0.3)
        return done
    finally:
        reader.close()
        stack.close()
        worker.stop()
        engine.stop()
        thread.join(60)
        engine_thread.join(60)


def _open_watch(settings: Any, codec: Any) -> tuple[_Watch, ExitStack]:
    """The demo's watch and the stack that closes its object store."""
    from worker.client import FactTracker
    from worker.runtime.compose import object_store

    stack = ExitStack()
    return _Watch(codec, FactTracker(), stack.enter_context(object_store(settings))), stack


def _prepare(eps: Endpoints, console: Console) -> tuple[Any, dict[str, Any]]:
    """Settings for the embedded endpoints, migrated database, seeded evidence, parsed samples."""
    from worker.adapters.postgres import migrate
    from worker.adapters.s3 import ObjectStore
    from worker.core.models import parse_intent
    from worker.runtime.compose import s3_config
    from worker.settings import load_settings

    settings = load_settings(
        None, {},
        kafka_bootstrap=eps.kafka_bootstrap, pg_dsn=eps.pg_dsn, s3_endpoint=eps.s3_endpoint,
        s3_bucket=eps.s3_bucket, aws_access_key_id=eps.s3_access_key, aws_secret_access_key=eps.s3_secret_key,
        s3_region=eps.s3_region, policy_file=example_policy_path(), session_timeout=6.0, poll_timeout=0.2,
        group_id=f"sr-demo-{uuid.uuid4().hex[:6]}",
    )
    migrate(settings.pg_conninfo().get_secret_value())
    intents = {name: parse_intent(load_sample(name)) for name in SAMPLES}
    with ObjectStore(s3_config(settings)) as store:
        seed_example_evidence(store, intents["complete"])
        seed_example_evidence(store, intents["tampered"], tamper=True)
    console.print("seeded sample evidence (complete, tampered; none for waiting and invoke)", highlight=False)
    return settings, intents


def _drain(reader: Any, watch: _Watch, console: Console, seen: Counter[str], stop: threading.Event, *,
           until: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not until():
        if stop.is_set() or time.monotonic() > deadline:
            return bool(until())
        for record in reader.poll(100, 0.2):
            _print_event(record, watch, console, seen)
    return True


@dataclass
class _Watch:
    """How the demo reads events: the codec, and for READY lines the client's follower
    bookkeeping and check (worker.client: re-sends dropped, facts view fetched and its sha256
    compared with facts_view_hash before the line is printed)."""

    codec: Any
    tracker: Any
    store: Any


def _print_fact(watch: _Watch, event: Any, console: Console, seen: Counter[str]) -> None:
    from worker.client import Decision, FactsViewMismatchError, verify_facts_view

    if event.event_type.value == "SUPERSEDE":
        watch.tracker.offer(event)
        seen["SUPERSEDE"] += 1
        console.print(f"[bold green]{'SUPERSEDE':<10}[/] run_id={event.run_id}", highlight=False)
        return
    if watch.tracker.offer(event) is not Decision.HAND:
        return  # a re-send of a fact already shown
    try:
        view = verify_facts_view(watch.store, event)
    except FactsViewMismatchError as exc:
        watch.tracker.reject(event)
        console.print(f"[red]{'UNVERIFIED':<10}[/] {exc}", highlight=False, soft_wrap=True)
        return
    seen[event.event_type.value] += 1
    outputs = ", ".join(f"{o.output_id} ({'+'.join(o.gates)})" for o in view.outputs) or "-"
    bound = "; ".join(f"{r.gate_id}: {', '.join(f'{k}={v}' for k, v in r.bound.items())}"
                      for r in view.receipts if r.scope)
    console.print(f"[bold green]{event.event_type.value:<10}[/] run_id={event.run_id} facts view "
                  f"{event.facts_view_hash[:16]}… verified (sha256); outputs {outputs}"
                  + (f"; bound {bound}" if bound else ""), highlight=False, soft_wrap=True)


def _print_event(record: Record, watch: _Watch, console: Console, seen: Counter[str]) -> None:
    if record.topic.endswith("dlq"):
        headers = {k: v.decode(errors="replace") for k, v in record.headers}
        seen["DLQ"] += 1
        console.print(f"[magenta]DLQ[/]        class={headers.get('sr-error-class')} "
                      f"msg={headers.get('sr-error-message', '')[:80]}", highlight=False, soft_wrap=True)
        return
    record_name, datum = watch.codec.decode(record.value)
    if record_name.endswith("EngineRequest"):
        seen["ENGINE_REQUEST"] += 1
        console.print(f"[blue]{'ENGINE ->':<10}[/] run_id={datum['run_id']} attempt {datum['attempt_no']} "
                      f"({datum['attempt_id']}) write to {datum['evidence_root']}", highlight=False, soft_wrap=True)
        return
    if record_name.endswith("EngineResult"):
        seen["ENGINE_RESULT"] += 1
        console.print(f"[blue]{'ENGINE <-':<10}[/] run_id={datum['run_id']} {datum['status']} "
                      f"by {datum['reported_by']}", highlight=False, soft_wrap=True)
        return
    if record_name.endswith("ReadyEvent"):
        _print_fact(watch, watch.codec.decode_ready(record.value), console, seen)
    else:
        seen[datum["status"]] += 1
        console.print(f"[yellow]{datum['status']:<10}[/] run_id={datum['run_id']} reason={datum['reason_code']}",
                      highlight=False)
