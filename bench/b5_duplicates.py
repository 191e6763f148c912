"""B5 — a storm of duplicate intents: how fast one worker absorbs them, and what they cost.

``b5_runs`` distinct runs are made READY by a first worker, which is then stopped. A fresh
worker (fresh counters) joins, and ``b5_duplicates`` re-deliveries of those intents (new
request_id, spread over all partitions) are published. The rate is duplicates / (first
publish -> the group's committed offsets cover every published record). The second worker's
"worker stopped" counters give S3 requests and Postgres round trips per duplicate.

Limit: the slower of the raw Kafka consume->produce passthrough rate and the raw Postgres
round-trip rate divided by the measured round trips per duplicate.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.b1_throughput import seed_shared_evidence
from bench.clients import IntentPublisher, TopicWatcher
from bench.common import OneWorkerScenario, committed_total, figure, log, make_intent, make_world, wait_assigned
from bench.cpu import CpuMeter, bottleneck, cpu_per_unit, server_groups
from tests.harness.paths import shared_evidence_policy


class Scenario(OneWorkerScenario):
    """B5 on one fresh world: setup runs in :meth:`prepare`, the storm worker in :meth:`start`."""

    name = "B5"
    log_tag = "storm"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.base: list[Any] = []

    def prepare(self) -> None:
        """Make ``b5_runs`` runs READY in-process (no Kafka intents), then start the storm worker."""
        if self.world is not None:
            return
        from worker.app.ports import Record
        from worker.app.processor import Action
        from worker.core.policy import load_policy
        from worker.runtime.compose import open_services
        from worker.runtime.dispatch import dispatch

        ctx = self.ctx
        # Every run reads one shared evidence root: gate_6B unscoped (contract §4).
        self.world = world = make_world(ctx.servers, "b5", ctx.work_dir, policy=shared_evidence_policy())
        shared = seed_shared_evidence(world)
        self.base = [make_intent(world, "b5", i, shared) for i in range(ctx.sizes["b5_runs"])]
        with open_services(world.settings(), load_policy(world.policy_path.read_bytes())) as svc:

            def make_ready(i: int) -> None:
                rec = Record(topic=world.topics["intents"], partition=0, offset=i, key=None,
                             value=svc.codec.encode_intent(self.base[i]), headers=(), timestamp_ms=None)
                outcome = dispatch(svc.processor, rec, triggers_topic=world.topics["triggers"])
                if outcome.action is not Action.READY:
                    raise RuntimeError(f"B5 setup run {i}: {outcome}")

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(make_ready, range(len(self.base))))

    def run(self) -> dict[str, Any]:
        self.start()
        ctx, world, procs = self.ctx, self.world, self.procs
        runs, dups = ctx.sizes["b5_runs"], ctx.sizes["b5_duplicates"]
        publisher = IntentPublisher(ctx.servers, world.topics["intents"])
        encoded = [publisher.encode(self.base[j % runs].model_copy(update={"request_id": f"dup-{j}"}))
                   for j in range(dups)]
        with TopicWatcher(ctx.servers, world.topics["ready"]) as ready:
            procs[0].wait_started()
            if not wait_assigned(procs, world, timeout=60):
                log("warning: storm worker not assigned within 60s")
            initial_ready = ready.count
            meter = CpuMeter({"worker": [procs[0].pid], **server_groups(ctx.servers),
                              "bench client": [ctx.pid]}).start()
            t0 = time.monotonic()
            for key, value in encoded:
                publisher.send(key, value)
            publisher.flush()
            t_published = time.monotonic()
            target = sum(publisher.end_offsets().values())
            deadline = t0 + max(120.0, dups / 50.0)
            done = None
            while time.monotonic() < deadline and procs[0].alive():
                if committed_total(ctx.servers, world.group_id, world.topics["intents"], world.partitions) >= target:
                    done = time.monotonic()
                    break
                time.sleep(0.1)
            cpu = meter.stop()
            if done is None:
                raise RuntimeError(f"duplicates not all committed in time: {procs[0].tail()}")
            time.sleep(0.3)
            extra_ready = ready.count - initial_ready
        procs[0].stop()
        stats = procs[0].stop_stats() or {"s3_requests": {}, "pg_round_trips": None}
        s3 = stats["s3_requests"]
        s3_total = sum(v for k, v in s3.items() if not k.startswith("bytes"))
        pg = stats["pg_round_trips"]
        rate = dups / (done - t0)
        res: dict[str, Any] = {
            "runs": runs,
            "duplicates": dups,
            "publish_s": round(t_published - t0, 2),
            "elapsed_s": round(done - t0, 2),
            "duplicates_per_s": round(rate, 1),
            "s3_requests_total": s3,
            "s3_requests_per_duplicate": round(s3_total / dups, 4),
            "s3_writes_per_duplicate": round(s3.get("PUT", 0) / dups, 4),
            "pg_round_trips_per_duplicate": round(pg / dups, 3) if pg is not None else None,
            "pg_round_trips_total": pg,
            "extra_ready_events": extra_ready,
            "cpu": cpu,
            **cpu_per_unit(cpu, rate),
        }
        kafka = ctx.limits.get("kafka_passthrough", {}).get("per_s")
        pg_rate = ctx.limits.get("pg_round_trips", {}).get("per_s")
        candidates = {}
        if kafka:
            candidates["raw Kafka consume->produce"] = kafka
        if pg_rate and res["pg_round_trips_per_duplicate"]:
            candidates["raw Postgres round trips / round trips per duplicate"] = pg_rate / res[
                "pg_round_trips_per_duplicate"]
        if candidates:
            name, value = min(candidates.items(), key=lambda kv: kv[1])
            res["limit_per_s"], res["limit_name"] = round(value, 1), name
            res["limit_candidates"] = {k: round(v, 1) for k, v in candidates.items()}
        log(f"B5: {rate:.0f} duplicates/s; per duplicate S3 {res['s3_requests_per_duplicate']} "
            f"pg {res['pg_round_trips_per_duplicate']}; {bottleneck(cpu)}")
        return res


def figures(res: dict[str, Any], limits: dict[str, Any]) -> list[dict[str, Any]]:
    pg = res["pg_round_trips_per_duplicate"]
    return [
        figure(f"B5 duplicate storm ({res['duplicates']} duplicates of {res['runs']} runs)", res["duplicates_per_s"],
               "dup/s", limit=res.get("limit_per_s"), limit_unit="msg/s", limit_name=res.get("limit_name"),
               note=f"{bottleneck(res['cpu'])}; other limits {res.get('limit_candidates')}"),
        figure("B5 duplicates/s vs machine CPU", res["duplicates_per_s"], "dup/s", limit=res.get("cpu_limit_per_s"),
               limit_name="all cores at the measured CPU cost per duplicate",
               note=f"CPU ms per duplicate: {res.get('cpu_ms_per_unit')}"),
        figure("B5 S3 writes per duplicate (storm)", res["s3_writes_per_duplicate"], "req", limit=0,
               limit_name="target", target="0", met=res["s3_writes_per_duplicate"] == 0,
               note=f"all S3 requests per duplicate {res['s3_requests_per_duplicate']}"),
        figure("B5 Postgres round trips per duplicate (storm)", pg, "rt", limit=2, limit_name="target",
               target="<= 2", met=pg is not None and pg <= 2,
               note=f"extra READY events during the storm: {res['extra_ready_events']}"),
    ]
