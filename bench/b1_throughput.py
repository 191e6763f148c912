"""B1 — throughput: READY/s end to end for distinct intents, with 1 and with 2 worker processes.

Each intent needs gates 3A and 6B of the example policy (2 gates x 4 members of 4 KiB). The
backlog is published after the workers joined the group and finished a warm-up, and READY
events are read from the world's ready topic. Reported per worker count:

* READY/s over the whole batch (first publish -> last READY) and over the steady middle
  (10 %..90 % of READYs);
* the S3 limit: raw S3 rates (same client, same concurrency, same number of client
  processes) divided by the measured S3 requests per READY run (from the workers'
  "worker stopped" counters), i.e. 1 / sum_verb(requests_verb / raw_rate_verb). In full mode
  the raw rates are measured right before and right after each batch (mean), so that load
  from other users of the machine hits the limit and the figure alike;
* CPU cores used by each worker and each server while the batch ran (the bottleneck).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from bench.clients import IntentPublisher, TopicWatcher
from bench.common import (
    World,
    figure,
    log,
    make_intent,
    make_world,
    percentile,
    receipt_for,
    s3_client,
    start_worker,
    sum_stop_stats,
    wait_assigned,
)
from bench.cpu import CpuMeter, bottleneck, cpu_per_unit, server_groups
from bench.limits import mean_rates, s3_rates, s3_ready_limit
from tests.harness.evidence import synthetic_example_evidence, write_objects
from tests.harness.paths import shared_evidence_policy
from tests.harness.workers import WorkerProc, stop_all


def seed_shared_evidence(world: World, name: str = "shared") -> str:
    """One evidence root shared by every intent of the world; returns its s3:// URI."""
    write_objects(s3_client(world.servers), world.bucket, synthetic_example_evidence(world.evidence_prefix(name)),
                  concurrency=16)
    return world.evidence_root(name)


def seed_per_intent_evidence(world: World, n: int, scenario: str = "b1", tag: str = "r") -> list[str]:
    """One evidence root per intent (no cache can flatter the reads), each with the receipt of the
    run ``make_intent(world, scenario, i, ...)`` (gate_6B is scoped); returns the URIs."""
    client = s3_client(world.servers)
    objects: list[tuple[str, bytes]] = []
    for i in range(n):
        objects.extend(synthetic_example_evidence(world.evidence_prefix(f"{tag}{i:05d}"), salt=f"{tag}{i}",
                                                  instance=receipt_for(scenario, i)))
    started = time.monotonic()
    write_objects(client, world.bucket, objects, concurrency=16)
    log(f"seeded {len(objects)} evidence objects for {n} roots in {time.monotonic() - started:.1f}s")
    return [world.evidence_root(f"{tag}{i:05d}") for i in range(n)]


class Batch:
    """One measured batch: ``n_intents`` distinct intents through ``workers`` worker processes."""

    def __init__(self, ctx: Any, *, n_intents: int, workers: int, per_intent_roots: bool = False,
                 tag: str) -> None:
        self.ctx = ctx
        self.n = n_intents
        self.workers = workers
        self.per_intent_roots = per_intent_roots
        self.tag = tag
        self.world: World | None = None
        self.procs: list[WorkerProc] = []
        self.shared = ""
        self.roots: list[str] | None = None
        self.warm_roots: list[str] | None = None
        self.warm = 0

    def prepare(self) -> None:
        """World and evidence (thread-safe; no process started)."""
        if self.world is not None:
            return
        # Per-intent roots carry per-run receipts under the example policy (gate_6B scoped);
        # the shared-root batch lets every run read one root, so its gate_6B is unscoped.
        self.world = make_world(self.ctx.servers, self.tag.replace("-", ""), self.ctx.work_dir,
                                policy=None if self.per_intent_roots else shared_evidence_policy())
        self.warm = max(8 * self.workers, min(40, self.n // 10))
        if self.per_intent_roots:
            self.roots = seed_per_intent_evidence(self.world, self.n)
            self.warm_roots = seed_per_intent_evidence(self.world, self.warm, scenario="warmup", tag="w")
        else:
            self.shared = seed_shared_evidence(self.world)

    def start(self) -> None:
        """Start the worker processes (main thread; not waited for)."""
        self.prepare()
        assert self.world is not None
        if not self.procs:
            self.procs = [start_worker(self.world, self.ctx.log_dir / f"{self.tag}-{self.world.suffix}-w{i}.log")
                          for i in range(self.workers)]

    def close(self) -> None:
        stop_all(self.procs)
        if self.world is not None:
            self.world.drop()

    def measure(self) -> dict[str, Any]:
        self.start()
        ctx, world, procs, n = self.ctx, self.world, self.procs, self.n
        assert world is not None
        servers = ctx.servers
        for p in procs:
            p.wait_started()
        if not wait_assigned(procs, world, timeout=60):
            log("warning: workers did not settle on a balanced assignment within 60s")
        warm = self.warm
        publisher = IntentPublisher(servers, world.topics["intents"])
        encoded = [publisher.encode(make_intent(world, "b1", i, self.roots[i] if self.roots else self.shared))
                   for i in range(n)]
        with TopicWatcher(servers, world.topics["ready"]) as ready:
            # Warm-up: group joined, connections open, code paths hot.
            for i in range(warm):
                root = self.warm_roots[i] if self.warm_roots else self.shared
                publisher.send(*publisher.encode(make_intent(world, "warmup", i, root)))
            publisher.flush()
            if not ready.wait_distinct(warm, timeout=120, alive=lambda: all(p.alive() for p in procs)):
                raise RuntimeError(f"warm-up READYs missing ({ready.distinct()}/{warm}): {procs[0].tail()}")
            groups = {f"worker {i}": [p.pid] for i, p in enumerate(procs)}
            meter = CpuMeter({**groups, **server_groups(servers), "bench client": [ctx.pid]}).start()
            t0 = time.monotonic()
            for key, value in encoded:
                publisher.send(key, value)
            publisher.flush()
            t_published = time.monotonic()
            timeout = max(120.0, n / 2.0)
            ok = ready.wait_distinct(warm + n, timeout=timeout, alive=lambda: all(p.alive() for p in procs))
            cpu = meter.stop()
            if not ok:
                raise RuntimeError(f"only {ready.distinct() - warm}/{n} READY within {timeout:.0f}s")
            times = ready.times()
            keys = {k for k, _ in encoded}
            arrivals = sorted(t for k, t in times.items() if k in keys)
        stop_all(procs)
        stats = [p.stop_stats() for p in procs]
        if any(s is None for s in stats):
            log("warning: a worker did not log its stop counters")
        totals = sum_stop_stats(stats)
        runs = warm + n
        per_run = {k: v / runs for k, v in totals["s3_requests"].items()}
        t_last = arrivals[-1]
        lo, hi = arrivals[int(0.1 * (len(arrivals) - 1))], arrivals[int(0.9 * (len(arrivals) - 1))]
        steady = (0.8 * (len(arrivals) - 1)) / (hi - lo) if hi > lo else float("nan")
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        return {
            "intents": n,
            "workers": self.workers,
            "evidence": ("per-intent roots, per-run receipts (gate_6B scoped)" if self.per_intent_roots
                         else "one shared root (gate_6B unscoped)"),
            "warmup_runs": warm,
            "publish_s": round(t_published - t0, 2),
            "first_ready_after_s": round(arrivals[0] - t0, 3),
            "elapsed_s": round(t_last - t0, 2),
            "ready_per_s": round(n / (t_last - t0), 2),
            "ready_per_s_steady": round(steady, 2),
            "max_gap_between_readys_s": round(max(gaps), 3) if gaps else 0.0,
            "p99_gap_s": round(percentile(gaps, 99), 4) if gaps else 0.0,
            "s3_requests_per_ready": {k: round(v, 3) for k, v in per_run.items()},
            "pg_round_trips_per_ready": round(totals["pg_round_trips"] / runs, 3),
            "worker_stop_counters": stats,
            "cpu": cpu,
            **cpu_per_unit(cpu, n / (t_last - t0)),
        }


class Scenario:
    """B1 for 1 and 2 workers (+ per-intent evidence roots in full mode)."""

    name = "B1"

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        n = ctx.sizes["b1_intents"]
        self.batches: dict[str, Batch] = {
            "1w": Batch(ctx, n_intents=n, workers=1, tag="b1-1w"),
            "2w": Batch(ctx, n_intents=n, workers=2, tag="b1-2w"),
        }
        if ctx.sizes.get("b1_per_intent_intents"):
            self.batches["1w_per_intent_roots"] = Batch(ctx, n_intents=ctx.sizes["b1_per_intent_intents"],
                                                        workers=1, per_intent_roots=True, tag="b1-roots")

    def prepare(self) -> None:
        for b in self.batches.values():
            b.prepare()

    def start(self) -> None:
        for b in self.batches.values():
            b.start()

    def close(self) -> None:
        for b in self.batches.values():
            b.close()

    def _limit_rates(self, procs: int, before: dict[str, Any] | None) -> tuple[dict[str, Any], list[Any]]:
        key = "s3_1proc" if procs == 1 else "s3_2proc"
        if before is None:
            return self.ctx.limits[key], []
        after = self._adjacent(procs)
        return mean_rates(before, after), [before, after]

    def _adjacent(self, procs: int) -> dict[str, Any]:
        ws = self.ctx.worker_settings
        return s3_rates(self.ctx.servers, concurrency=ws["run_concurrency"] + ws["verify_concurrency"],
                        seconds=4.0, procs=(procs,))[procs]

    def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        adjacent = self.ctx.mode == "full"
        for key, batch in self.batches.items():
            log(f"B1 {key}: {batch.n} intents, {batch.workers} worker(s)")
            try:
                before = self._adjacent(batch.workers) if adjacent else None
                res = batch.measure()
            finally:
                batch.close()
            rates, adjacent_runs = self._limit_rates(batch.workers, before)
            limit = s3_ready_limit(rates, res["s3_requests_per_ready"])
            res["s3_limit_rates"] = {v: rates[v]["per_s"] for v in ("PUT", "GET", "LIST") if v in rates}
            res["s3_limit_measured"] = "before+after the batch" if adjacent_runs else "once, at the start of the run"
            res["s3_limit_ready_per_s"] = round(limit, 2)
            res["ratio_to_s3_limit"] = round(res["ready_per_s"] / limit, 3)
            log(f"B1 {key}: {res['ready_per_s']} READY/s (steady {res['ready_per_s_steady']}), "
                f"S3 limit {limit:.1f}/s, ratio {res['ratio_to_s3_limit']}; {bottleneck(res['cpu'])}")
            out[key] = res
        out["scaling_2w_over_1w"] = round(out["2w"]["ready_per_s"] / out["1w"]["ready_per_s"], 3)
        out["scaling_2w_over_1w_steady"] = round(out["2w"]["ready_per_s_steady"] / out["1w"]["ready_per_s_steady"], 3)
        out["s3_limit_scaling_2proc_over_1proc"] = round(
            out["2w"]["s3_limit_ready_per_s"] / out["1w"]["s3_limit_ready_per_s"], 3)
        return out


def figures(b1: dict[str, Any], limits: dict[str, Any]) -> list[dict[str, Any]]:
    figs = []
    labels = {"1w": "1 worker", "2w": "2 workers", "1w_per_intent_roots": "1 worker, per-intent evidence roots"}
    for key, label in labels.items():
        if key not in b1:
            continue
        r = b1[key]
        figs.append(figure(f"B1 READY/s, {label} ({r['intents']} intents)", r["ready_per_s"], "READY/s",
                           limit=r["s3_limit_ready_per_s"], limit_name="raw S3 rate / S3 requests per READY",
                           note=f"steady {r['ready_per_s_steady']}/s; S3/READY {r['s3_requests_per_ready']}; "
                                f"{bottleneck(r['cpu'])}"))
        if r.get("cpu_limit_per_s"):
            figs.append(figure(f"B1 READY/s, {label}, vs machine CPU", r["ready_per_s"], "READY/s",
                               limit=r["cpu_limit_per_s"],
                               limit_name="all cores at the measured CPU cost per READY (workers + servers)",
                               note=f"CPU ms per READY: {r['cpu_ms_per_unit']} (total {r['cpu_ms_per_unit_total']})"))
    if limits.get("kafka_passthrough"):
        pt = limits["kafka_passthrough"]["per_s"]
        figs.append(figure("B1 READY/s vs raw Kafka passthrough, 1 worker", b1["1w"]["ready_per_s"], "READY/s",
                           limit=pt, limit_unit="records/s", limit_name="raw consume->produce"))
    if limits.get("s3_1proc_boto3") and "1w" in b1:
        boto = s3_ready_limit(limits["s3_1proc_boto3"], b1["1w"]["s3_requests_per_ready"])
        rates = limits["s3_1proc_boto3"]
        figs.append(figure("B1 what-if: S3 limit with boto3 only, 1 process", boto, "READY/s",
                           limit=b1["1w"]["s3_limit_ready_per_s"],
                           limit_name="the same limit with SR's clients (obstore PUT/GET, boto3 LIST)",
                           note=f"boto3 raw PUT {rates['PUT']['per_s']}/s GET {rates['GET']['per_s']}/s at "
                                f"{rates['GET']['client_cpu_ms_per_request']} ms client CPU/request; "
                                "ratio < 1 = how much lower the S3 limit was with boto3 alone"))
    scaling = b1["scaling_2w_over_1w"]
    figs.append(figure("B1 scaling 2 workers / 1 worker", scaling, "x",
                       limit=b1["s3_limit_scaling_2proc_over_1proc"],
                       limit_name="S3 limit scaling 2 client processes / 1", target=">= 1.5 (servers not bottleneck)",
                       met=scaling >= 1.5, note=bottleneck(b1["2w"]["cpu"])))
    return figs
