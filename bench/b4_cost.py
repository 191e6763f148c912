"""B4 — cost: S3 requests by verb and Postgres round trips per message kind; S3 bytes per run.

Measured in-process on the worker's own services (``open_services``: the same adapters,
counters and processor as ``sr run``), like ``tests/integration/test_fencing_and_cost.py``:

* READY run — a fresh intent whose 2 gates x 4 members of 4 KiB all PASS;
* WAITING (first) — a fresh intent whose gate 6B has no ``_passed.flag`` yet;
* WAITING re-check — the sweep re-driving a due WAITING run (evidence still missing);
* duplicate intent — a re-delivery of an intent of a READY run (other request_id) and of a
  WAITING run;
* engine round trip (contract §8) — an INVOKE intent without evidence (the step that requests
  attempt 1), then, once "the engine" wrote the evidence, its SUCCEEDED result (the step that
  records it, verifies and commits READY); and a FAILED result (recorded, WAITING for the
  retry). SR's own CPU (process time of the whole bench process, which is idle otherwise)
  is reported per step next to the requests.

The limit column is the target of the issue where there is one (S3 writes per READY run
<= 4; zero S3 writes and <= 2 Postgres round trips per duplicate).
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    InProcessScenario,
    figure,
    log,
    make_intent,
    make_world,
    receipt_for,
    s3_client,
)
from tests.harness.evidence import synthetic_example_evidence, write_objects

VERBS = ("PUT", "GET", "LIST", "HEAD", "DELETE")


def _record(world: Any, codec: Any, intent: Any, offset: int) -> Any:
    from worker.app.ports import Record

    return Record(topic=world.topics["intents"], partition=0, offset=offset, key=None,
                  value=codec.encode_intent(intent), headers=(), timestamp_ms=None)


class _Cost:
    def __init__(self) -> None:
        self.samples: list[dict[str, float]] = []

    def add(self, s3: dict[str, Any], pg: float, wall_ms: float = 0.0, cpu_ms: float = 0.0) -> None:
        self.samples.append({**{v: float(s3.get(v, 0)) for v in VERBS}, "pg": float(pg),
                             "bytes_out": float(s3.get("bytes_out", 0)), "bytes_in": float(s3.get("bytes_in", 0)),
                             "wall_ms": wall_ms, "cpu_ms": cpu_ms})

    def mean(self) -> dict[str, float]:
        n = len(self.samples)
        keys = self.samples[0].keys() if self.samples else ()
        out = {k: round(sum(s[k] for s in self.samples) / n, 3) for k in keys}
        out["s3_requests"] = round(sum(out[v] for v in VERBS), 3)
        out["samples"] = n
        return out


def measure(ctx: Any) -> dict[str, Any]:
    from worker.app.processor import Action
    from worker.core.identity import run_id_of
    from worker.core.policy import load_policy
    from worker.runtime.compose import open_services
    from worker.runtime.dispatch import dispatch

    runs = ctx.sizes["b4_runs"]
    world = make_world(ctx.servers, "b4", ctx.work_dir, partitions=1)
    try:
        client = s3_client(ctx.servers)
        # READY runs each get their own root with their receipt (the example policy scopes gate_6B),
        # so the figures include instance binding; WAITING runs share a root without a 6B flag.
        ready_evidence = [synthetic_example_evidence(world.evidence_prefix(f"ok{i}"),
                                                     instance=receipt_for("b4-ready", i)) for i in range(runs)]
        ready_evidence.append(synthetic_example_evidence(world.evidence_prefix("warm"),
                                                         instance=receipt_for("b4-warm", 0)))
        write_objects(client, world.bucket, [o for objs in ready_evidence for o in objs], concurrency=16)
        partial = [(k, v) for k, v in synthetic_example_evidence(world.evidence_prefix("wait"))
                   if not k.endswith("6B/_passed.flag")]
        write_objects(client, world.bucket, partial, concurrency=16)
        wait_root = world.evidence_root("wait")
        try:
            settings = world.settings(recheck_interval=0.0)
        except Exception:
            settings = world.settings()
        policy = load_policy(world.policy_path.read_bytes())
        costs = {k: _Cost() for k in ("ready", "waiting_first", "waiting_recheck", "duplicate_of_ready",
                                      "duplicate_of_waiting", "engine_request", "engine_result_ready",
                                      "engine_result_failed")}
        with open_services(settings, policy) as svc:
            proc, codec = svc.processor, svc.codec
            offset = 0

            def handle(intent: Any, expect: Any, cost: _Cost | None, *, record: Any = None) -> str:
                nonlocal offset
                record = record if record is not None else _record(world, codec, intent, offset)
                svc.store.counter.reset()
                svc.pg_counter.reset()
                t0, c0 = time.perf_counter(), time.process_time()
                outcome = dispatch(proc, record, triggers_topic=world.topics["triggers"],
                                   results_topic=world.topics["engine_results"])
                wall_ms, cpu_ms = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
                offset += 1
                if outcome.action is not expect:
                    raise RuntimeError(f"expected {expect}, got {outcome}")
                if cost is not None:
                    cost.add(svc.store.counter.snapshot(), svc.pg_counter.snapshot(), wall_ms, cpu_ms)
                return str(outcome.run_id)

            def result_record(run_id: str, attempt_no: int, status: str) -> Any:
                from datetime import UTC, datetime

                from worker.app.ports import Record
                from worker.core.engine import EngineResult, EngineStatus
                from worker.core.identity import attempt_id_for

                result = EngineResult(attempt_id=attempt_id_for(run_id, attempt_no), run_id=run_id,
                                      status=EngineStatus(status), detail="", reported_by="bench-engine",
                                      finished_at=datetime.now(UTC))
                return Record(topic=world.topics["engine_results"], partition=0, offset=offset, key=run_id.encode(),
                              value=codec.encode_engine_result(result), headers=(), timestamp_ms=None)

            handle(make_intent(world, "b4-warm", 0, world.evidence_root("warm")), Action.READY, None)  # caches
            ready_intents = [make_intent(world, "b4-ready", i, world.evidence_root(f"ok{i}")) for i in range(runs)]
            for intent in ready_intents:
                handle(intent, Action.READY, costs["ready"])
            for i, intent in enumerate(ready_intents):
                dup = intent.model_copy(update={"request_id": f"dup-{i}", "submitted_by": "someone-else"})
                handle(dup, Action.DUPLICATE, costs["duplicate_of_ready"])
            wait_intents = [make_intent(world, "b4-wait", i, wait_root) for i in range(runs)]
            waiting_ids = [handle(intent, Action.WAITING, costs["waiting_first"]) for intent in wait_intents]
            for i, intent in enumerate(wait_intents):
                dup = intent.model_copy(update={"request_id": f"dup-{i}", "submitted_by": "someone-else"})
                handle(dup, Action.DUPLICATE, costs["duplicate_of_waiting"])
            # Re-checks: the sweep (as the worker runs it) when runs are due right away, else drive().
            recheck_mode = "drive(run_id, fresh=False)"
            svc.store.counter.reset()
            svc.pg_counter.reset()
            swept: list[Any] = []
            if getattr(settings, "recheck_interval", 1.0) == 0.0 and hasattr(proc, "sweep"):
                time.sleep(0.01)
                swept = [o for o in proc.sweep(limit=1000) if o.run_id in set(waiting_ids)]
            if len(swept) == len(waiting_ids):
                recheck_mode = "sweep() over due WAITING runs (due_for_check amortised)"
                s3, pg = svc.store.counter.snapshot(), svc.pg_counter.snapshot()
                n = len(swept)
                for _ in range(n):
                    costs["waiting_recheck"].add({k: v / n for k, v in s3.items()}, pg / n)
            else:
                for run_id in waiting_ids:
                    svc.store.counter.reset()
                    svc.pg_counter.reset()
                    proc.drive(run_id, fresh=False, wait=0.0)
                    costs["waiting_recheck"].add(svc.store.counter.snapshot(), svc.pg_counter.snapshot())
            assert all(run_id_of(i) in waiting_ids for i in wait_intents)
            _engine_round_trips(world, client, runs, handle=handle, result_record=result_record, costs=costs)
        res: dict[str, Any] = {k: c.mean() for k, c in costs.items()}
        res["recheck_mode"] = recheck_mode
        res["mode"] = ctx.mode
        res["evidence"] = "2 gates x 4 members of 4 KiB (gate_3A member-concat, gate_6B bundle digest)"
        r = res["ready"]
        log(f"B4 READY run: PUT {r['PUT']} GET {r['GET']} LIST {r['LIST']} pg {r['pg']} bytes_out {r['bytes_out']}; "
            f"duplicate: S3 {res['duplicate_of_ready']['s3_requests']} pg {res['duplicate_of_ready']['pg']}")
        return res
    finally:
        world.drop()


def _engine_round_trips(world: Any, client: Any, runs: int, *, handle: Any, result_record: Any,
                        costs: dict[str, _Cost]) -> None:
    """Request, the engine writes the evidence, SUCCEEDED → READY; and a FAILED result."""
    from worker.app.processor import Action

    invoked = [make_intent(world, "b4-invoke", i, world.evidence_root(f"inv{i}"), strategy="INVOKE")
               for i in range(runs)]
    invoked_ids = [handle(intent, Action.ENGINE_REQUESTED, costs["engine_request"]) for intent in invoked]
    for i in range(runs):
        write_objects(client, world.bucket, synthetic_example_evidence(world.evidence_prefix(f"inv{i}"),
                                                                       instance=receipt_for("b4-invoke", i)),
                      concurrency=16)
    for run_id in invoked_ids:
        handle(None, Action.READY, costs["engine_result_ready"], record=result_record(run_id, 1, "SUCCEEDED"))
    failing = [make_intent(world, "b4-failing", i, world.evidence_root(f"fail{i}"), strategy="INVOKE")
               for i in range(runs)]
    failing_ids = [handle(intent, Action.ENGINE_REQUESTED, None) for intent in failing]
    for run_id in failing_ids:
        handle(None, Action.WAITING, costs["engine_result_failed"], record=result_record(run_id, 1, "FAILED"))


def _verbs(c: dict[str, Any]) -> str:
    return ", ".join(f"{v} {c[v]:g}" for v in VERBS if c.get(v)) or "none"


class Scenario(InProcessScenario):
    """B4: in-process, nothing to start ahead."""

    name = "B4"
    measure = staticmethod(measure)


def figures(res: dict[str, Any], limits: dict[str, Any]) -> list[dict[str, Any]]:
    r, dup, dupw = res["ready"], res["duplicate_of_ready"], res["duplicate_of_waiting"]
    wf, wr = res["waiting_first"], res["waiting_recheck"]
    figs = [
        figure("B4 S3 writes (PUT) per READY run", r["PUT"], "req", limit=4, limit_name="target",
               target="<= 4", met=r["PUT"] <= 4),
        figure("B4 S3 requests per READY run (all verbs)", r["s3_requests"], "req", note=_verbs(r)),
        figure("B4 Postgres round trips per READY run", r["pg"], "rt"),
        figure("B4 in-process service time per READY run (handle_intent)", r["wall_ms"], "ms",
               note="one run at a time, no Kafka consume; compare with the B2 unloaded latency"
                    + ("" if res.get("mode") != "quick" else
                       " (quick mode: measured while the other scenarios prepare, not comparable)")),
        figure("B4 S3 bytes written per READY run", r["bytes_out"], "bytes", note=f"read {r['bytes_in']:g} bytes"),
        figure("B4 S3 requests per WAITING run (first check)", wf["s3_requests"], "req",
               note=f"{_verbs(wf)}; Postgres {wf['pg']:g} rt; {wf['bytes_out']:g} bytes written"),
        figure("B4 S3 requests per WAITING re-check", wr["s3_requests"], "req",
               note=f"{_verbs(wr)}; Postgres {wr['pg']:g} rt; {res['recheck_mode']}"),
        figure("B4 Postgres round trips per WAITING re-check", wr["pg"], "rt"),
        figure("B4 S3 writes per duplicate intent (READY run)", dup["PUT"], "req", limit=0, limit_name="target",
               target="0", met=dup["PUT"] == 0, note=f"all S3 requests: {dup['s3_requests']:g}"),
        figure("B4 Postgres round trips per duplicate (READY run)", dup["pg"], "rt", limit=2, limit_name="target",
               target="<= 2", met=dup["pg"] <= 2),
        figure("B4 S3 writes per duplicate intent (WAITING run)", dupw["PUT"], "req", limit=0,
               limit_name="target", target="0", met=dupw["PUT"] == 0,
               note=f"all S3 requests: {dupw['s3_requests']:g}; Postgres {dupw['pg']:g} rt"),
    ]
    if "engine_request" in res:
        figs.extend(_engine_figures(res, r))
    return figs


def _engine_figures(res: dict[str, Any], ready: dict[str, Any]) -> list[dict[str, Any]]:
    """The engine round trip against a READY run whose evidence was there from the start."""
    req, done, failed = res["engine_request"], res["engine_result_ready"], res["engine_result_failed"]
    trip = {k: req[k] + done[k] for k in ("s3_requests", "PUT", "pg", "cpu_ms")}
    return [
        figure("B4 engine round trip: S3 requests per INVOKE run (request + result → READY)", trip["s3_requests"],
               "req", note=f"request step {_verbs(req)}; result step {_verbs(done)}; "
                           f"a READY run with evidence already there: {ready['s3_requests']:g}"),
        figure("B4 engine round trip: S3 writes per INVOKE run", trip["PUT"], "req",
               note=f"READY run without the engine: {ready['PUT']:g} (the engine adds WAITING, ENGINE_REQUESTED, "
                    "ENGINE_RESULT ledger entries)"),
        figure("B4 engine round trip: Postgres round trips per INVOKE run", trip["pg"], "rt",
               note=f"request step {req['pg']:g}, result step {done['pg']:g}; READY run without the engine "
                    f"{ready['pg']:g}"),
        figure("B4 engine round trip: SR CPU per INVOKE run", trip["cpu_ms"], "ms",
               note=f"request step {req['cpu_ms']:g} ms, result step {done['cpu_ms']:g} ms; READY run without "
                    f"the engine {ready['cpu_ms']:g} ms (process time, one run at a time)"),
        figure("B4 engine: cost of a FAILED result (recorded, WAITING for the retry)", failed["s3_requests"], "req",
               note=f"{_verbs(failed)}; Postgres {failed['pg']:g} rt; CPU {failed['cpu_ms']:g} ms"),
    ]
