"""B2 — latency: intent publish -> READY received, at a steady offered load of half the B1 rate.

Phases, on one fresh world with one worker process:

1. unloaded: a few intents one at a time (each waits for its READY) — the latency floor, used
   as the limit the loaded percentiles are compared with;
2. steady: intents published at a fixed pace (0.5 x the 1-worker B1 READY/s of this run) for
   ``b2_steady_s`` seconds; p50/p95/p99 of publish -> READY;
3. restart: the worker is stopped (SIGTERM) while the load continues, restarted after
   ``b2_down_s`` seconds, and the load continues until latency is back to normal. Recovery time
   = restart -> READY of the last intent whose latency was still above
   max(2 x steady p99, steady p99 + 0.5 s). Its limit is the ideal drain time of the backlog at
   the B1 rate: backlog / (B1 rate - offered rate).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.b1_throughput import seed_shared_evidence
from bench.clients import IntentPublisher, TopicWatcher
from bench.common import OneWorkerScenario, figure, log, make_intent, make_world, percentile, start_worker
from bench.cpu import CpuMeter, bottleneck, server_groups
from tests.harness.paths import shared_evidence_policy


class PacedPublisher:
    """Publishes intents at ``rate``/s on a thread, recording publish time per key."""

    def __init__(self, publisher: IntentPublisher, make: Any, rate: float) -> None:
        self.publisher = publisher
        self.make = make
        self.rate = rate
        self.published: list[tuple[bytes, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-publisher", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> PacedPublisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.publisher.flush()

    def _run(self) -> None:
        interval = 1.0 / self.rate
        i = 0
        next_t = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_t:
                self._stop.wait(next_t - now)
                continue
            key, value = self.publisher.encode(self.make(i))
            t = time.monotonic()
            self.publisher.send(key, value)
            with self._lock:
                self.published.append((key, t))
            i += 1
            next_t += interval

    def snapshot(self) -> list[tuple[bytes, float]]:
        with self._lock:
            return list(self.published)


class Scenario(OneWorkerScenario):
    """B2 on one fresh world; the first worker is started in :meth:`start`."""

    name = "B2"
    log_tag = "a"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.shared = ""

    def prepare(self) -> None:
        if self.world is not None:
            return
        # Every run reads one shared evidence root: gate_6B unscoped (contract §4).
        self.world = make_world(self.ctx.servers, "b2", self.ctx.work_dir, policy=shared_evidence_policy())
        self.shared = seed_shared_evidence(self.world)

    def run(self) -> dict[str, Any]:
        self.start()
        ctx, world, procs, shared, sizes = self.ctx, self.world, self.procs, self.shared, self.ctx.sizes
        b1 = (ctx.results.get("B1") or {}).get("1w") or {}
        full_rate = b1.get("ready_per_s") or sizes["b2_fallback_rate"]
        offered = 0.5 * full_rate
        quiet_needed = 1.5 if ctx.mode == "quick" else 5.0
        publisher = IntentPublisher(ctx.servers, world.topics["intents"])
        with TopicWatcher(ctx.servers, world.topics["ready"]) as ready:
            procs[0].wait_started()
            # 1. unloaded latency (the first one also waits for the group join; not counted)
            unloaded: list[float] = []
            n_unloaded = sizes["b2_unloaded"]
            for i in range(n_unloaded + 1):
                key, value = publisher.encode(make_intent(world, "b2-unloaded", i, shared))
                t = time.monotonic()
                publisher.send(key, value)
                publisher.flush()
                if not ready.wait_distinct(i + 1, timeout=60, alive=procs[0].alive):
                    raise RuntimeError(f"unloaded intent {i} got no READY: {procs[0].tail()}")
                if i > 0:
                    unloaded.append(ready.times()[key] - t)
            floor = percentile(unloaded, 50)
            log(f"B2 unloaded latency p50 {floor * 1000:.0f} ms; offered load {offered:.2f}/s")

            # 2. steady load
            paced = PacedPublisher(publisher, lambda i: make_intent(world, "b2", i, shared), offered)
            meter = CpuMeter({"worker": [procs[0].pid], **server_groups(ctx.servers),
                              "bench client": [ctx.pid]}).start()
            t_steady = time.monotonic()
            paced.start()
            time.sleep(sizes["b2_steady_s"])
            cpu = meter.stop()
            # 3. restart under load
            t_stop = time.monotonic()
            procs[0].stop()
            t_stopped = time.monotonic()
            time.sleep(max(0.0, t_stop + sizes["b2_down_s"] - time.monotonic()))
            t_restart = time.monotonic()
            backlog_keys = {k for k, t in paced.snapshot() if t < t_restart}
            seen = ready.times()
            backlog = sum(1 for k in backlog_keys if k not in seen)
            procs.append(start_worker(world, ctx.log_dir / f"b2-{world.suffix}-b.log"))
            procs[1].wait_started()
            t_worker_started = time.monotonic()
            cap = t_restart + sizes["b2_recover_cap_s"]
            steady_lat = _latencies(paced.snapshot(), ready.times(), t_steady, t_stop - 2.0)
            p99 = percentile(steady_lat, 99) if steady_lat else 1.0
            threshold = max(2 * p99, p99 + 0.5)
            # Keep the load on until latency has been back under the threshold for a while.
            while time.monotonic() < cap:
                time.sleep(0.25)
                if _recovered_for(paced.snapshot(), ready.times(), t_stop - 2.0, threshold) >= quiet_needed:
                    break
            paced.stop()
            total = len(paced.snapshot())
            ready.wait_distinct(n_unloaded + 1 + total, timeout=60, alive=procs[1].alive)
            pubs, seen = paced.snapshot(), ready.times()
        steady_lat = _latencies(pubs, seen, t_steady, t_stop - 2.0)
        if not steady_lat:
            raise RuntimeError("no READY for the steady phase")
        after = [(k, t) for k, t in pubs if t >= t_stop - 2.0]
        slow = [seen[k] for k, t in after if k in seen and seen[k] - t > threshold]
        missing = sum(1 for k, _ in pubs if k not in seen)
        recovered_at = max(slow) if slow else t_restart
        first_after = min((seen[k] for k, _ in after if k in seen and seen[k] > t_restart), default=None)
        recovery = recovered_at - t_restart
        capped = time.monotonic() >= cap and bool(slow)
        ideal = backlog / (full_rate - offered) if full_rate > offered else float("nan")
        res = {
            "offered_per_s": round(offered, 2),
            "b1_rate_used": full_rate,
            "steady_s": sizes["b2_steady_s"],
            "steady_samples": len(steady_lat),
            "unloaded_ms": {"p50": round(floor * 1000, 1), "max": round(max(unloaded) * 1000, 1),
                            "samples": len(unloaded)},
            "latency_ms": {q: round(percentile(steady_lat, float(q[1:])) * 1000, 1) for q in ("p50", "p95", "p99")},
            "latency_max_ms": round(max(steady_lat) * 1000, 1),
            "recovery_threshold_ms": round(threshold * 1000, 1),
            "stop_took_s": round(t_stopped - t_stop, 2),
            "down_s": round(t_restart - t_stop, 2),
            "backlog_at_restart": backlog,
            "restart_to_worker_started_s": round(t_worker_started - t_restart, 2),
            "restart_to_first_ready_s": round(first_after - t_restart, 2) if first_after else None,
            "recovery_s": round(recovery, 2),
            "recovery_capped": capped,
            "ideal_drain_s": round(ideal, 2),
            "never_ready": missing,
            "cpu_steady": cpu,
        }
        log(f"B2: p50 {res['latency_ms']['p50']} ms p95 {res['latency_ms']['p95']} ms p99 "
            f"{res['latency_ms']['p99']} ms at {offered:.1f}/s; backlog {backlog}, recovery {recovery:.1f}s "
            f"(ideal drain {ideal:.1f}s)")
        return res


def _latencies(pubs: list[tuple[bytes, float]], seen: dict[bytes, float], lo: float, hi: float) -> list[float]:
    return [seen[k] - t for k, t in pubs if lo <= t < hi and k in seen]


def _recovered_for(pubs: list[tuple[bytes, float]], seen: dict[bytes, float], since: float,
                   threshold: float) -> float:
    """Seconds since the last intent (published after ``since``) that was late or is still pending and late."""
    now = time.monotonic()
    last_bad = since
    for k, t in pubs:
        if t < since:
            continue
        done = seen.get(k)
        late = (done - t) > threshold if done is not None else (now - t) > threshold
        if late:
            last_bad = max(last_bad, done if done is not None else now)
    return now - last_bad


def figures(res: dict[str, Any], limits: dict[str, Any]) -> list[dict[str, Any]]:
    floor = res["unloaded_ms"]["p50"]
    figs = [
        figure(f"B2 latency {q} at {res['offered_per_s']}/s offered", res["latency_ms"][q], "ms",
               limit=floor, limit_name="unloaded p50 latency (one intent at a time)",
               note="ratio = loaded / unloaded (lower is better)" if q == "p50" else "")
        for q in ("p50", "p95", "p99")
    ]
    figs.append(figure("B2 backlog recovery after worker restart", res["recovery_s"], "s",
                       limit=res["ideal_drain_s"], limit_name="backlog / (B1 rate - offered rate)",
                       note=f"backlog {res['backlog_at_restart']} intents after {res['down_s']} s down; worker "
                            f"start {res['restart_to_worker_started_s']} s, first READY after restart "
                            f"{res['restart_to_first_ready_s']} s; {bottleneck(res['cpu_steady'])}"))
    return figs
