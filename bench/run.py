"""Run the SR benchmark suite: ``python -m bench.run --quick|--full [--only B1,B3] [--out FILE]``.

Every figure is reported with the limit measured in the same run on the same servers, and
their ratio. Results go to ``bench/results/<timestamp>.json`` (or ``--out``) and a table is
printed on stdout. Servers: ``SR_TEST_KAFKA_BOOTSTRAP`` / ``SR_TEST_PG_DSN`` /
``SR_TEST_S3_ENDPOINT`` when set, the embedded stack otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, log, open_servers, temp_state_dir
from bench.provenance import client_versions, git_revision, machine_info, server_versions
from tests.harness.servers import Servers

SCENARIOS = ("B1", "B2", "B3", "B4", "B5")
# Quick mode starts every scenario's worker processes first (their ~3 s consumer-group joins
# overlap), runs the in-process scenarios while they join, then the limits, then the rest.
QUICK_ORDER = ("B4", "B3", "LIMITS", "B1", "B2", "B5")
FULL_ORDER = ("LIMITS", "B1", "B2", "B3", "B4", "B5")

SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "b1_intents": 60,
        "b1_per_intent_intents": 0,
        "b2_unloaded": 3,
        "b2_steady_s": 4.0,
        "b2_down_s": 1.0,
        "b2_recover_cap_s": 15.0,
        "b2_fallback_rate": 5.0,
        "b3_members": 4,
        "b3_member_mib": 16,
        "b3_rounds": 2,
        "b4_runs": 3,
        "b5_duplicates": 2000,
        "b5_runs": 20,
    },
    "full": {
        "b1_intents": 5000,
        "b1_per_intent_intents": 500,
        "b2_unloaded": 15,
        "b2_steady_s": 60.0,
        "b2_down_s": 10.0,
        "b2_recover_cap_s": 90.0,
        "b2_fallback_rate": 5.0,
        "b3_members": 64,
        "b3_member_mib": 16,
        "b3_rounds": 3,
        "b4_runs": 10,
        "b5_duplicates": 20000,
        "b5_runs": 50,
    },
}


@dataclass
class Context:
    """What every scenario gets: the servers, sizes, limits and earlier results."""

    servers: Servers
    mode: str
    sizes: dict[str, Any]
    work_dir: Path
    log_dir: Path
    limits: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    pid: int = field(default_factory=os.getpid)
    worker_settings: dict[str, Any] = field(default_factory=dict)


def _worker_defaults() -> dict[str, Any]:
    from worker.settings import Settings

    s = Settings()
    return {k: getattr(s, k) for k in ("run_concurrency", "batch_size", "verify_concurrency",
                                       "s3_max_pool_connections", "pg_pool_size", "poll_timeout")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="scaled-down counts (< 60 s)")
    mode.add_argument("--full", action="store_true", help="the full suite (default)")
    p.add_argument("--only", default="", help="comma-separated scenarios, e.g. B1,B3 (default: all)")
    p.add_argument("--out", type=Path, help="results JSON path (default bench/results/<timestamp>.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a size, e.g. --set b1_intents=1000 (repeatable)")
    p.add_argument("--keep-logs", action="store_true", help="keep worker logs and state (printed path)")
    return p.parse_args(argv)


def _sizes_and_scenarios(args: argparse.Namespace, mode: str) -> tuple[dict[str, Any], list[str]]:
    sizes = dict(SIZES[mode])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in sizes:
            raise SystemExit(f"unknown size {key!r}; known: {', '.join(sizes)}")
        sizes[key] = type(sizes[key])(float(value)) if isinstance(sizes[key], (int, float)) else value
    only = [s.strip().upper() for s in args.only.split(",") if s.strip()] or list(SCENARIOS)
    bad = [s for s in only if s not in SCENARIOS]
    if bad:
        raise SystemExit(f"unknown scenario(s) {bad}; known: {', '.join(SCENARIOS)}")
    return sizes, only


def _preload_worker() -> None:
    """Import every worker module the in-process scenarios use, once, at start-up.

    The tree may be edited while a long run is going: in-process scenarios then keep measuring
    the code the run started with (``git`` and ``git_at_end`` in the results tell if it moved).
    """
    import worker.adapters.avro
    import worker.adapters.kafka
    import worker.adapters.postgres
    import worker.adapters.s3
    import worker.app.processor
    import worker.app.verifier
    import worker.core.identity
    import worker.core.models
    import worker.core.plan
    import worker.core.policy
    import worker.runtime.worker
    import worker.settings  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    sizes, only = _sizes_and_scenarios(args, mode)
    _preload_worker()
    started = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    out_path = args.out or RESULTS_DIR / f"{stamp}{'-quick' if mode == 'quick' else ''}.json"
    state = temp_state_dir()
    doc: dict[str, Any] = {
        "suite": "scenario-runner bench",
        "mode": mode,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "git": git_revision(),
        "machine": machine_info(),
        "versions": client_versions(),
        "sizes": sizes,
        "scenarios": only,
    }
    failures: list[str] = []
    from bench import limits as limits_mod

    try:
        if any(s in only for s in ("B1", "B2", "B5")):
            limits_mod.prewarm(2)
        with open_servers(state / "stack") as servers:
            doc["servers"] = {"embedded": servers.embedded is not None, **server_versions(servers)}
            ctx = Context(servers=servers, mode=mode, sizes=sizes, work_dir=state / "work", log_dir=state / "logs")
            ctx.worker_settings = _worker_defaults()
            doc["worker_settings"] = ctx.worker_settings
            _run_scenarios(ctx, only, doc, failures)
    finally:
        limits_mod.shutdown()
        doc["elapsed_s"] = round(time.time() - started, 1)
        doc["git_at_end"] = git_revision()
        doc["failures"] = failures
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
        if args.keep_logs:
            log(f"logs and state kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
    print_table(doc)
    shown = out_path.relative_to(Path.cwd()) if out_path.is_relative_to(Path.cwd()) else out_path
    print(f"\nresults: {shown}")
    print(f"elapsed: {doc['elapsed_s']} s")
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


def _run_scenarios(ctx: Context, only: list[str], doc: dict[str, Any], failures: list[str]) -> None:
    from bench import b1_throughput, b2_latency, b3_evidence, b4_cost, b5_duplicates

    modules = {"B1": b1_throughput, "B2": b2_latency, "B3": b3_evidence, "B4": b4_cost, "B5": b5_duplicates}
    scenarios = {name: modules[name].Scenario(ctx) for name in SCENARIOS if name in only}
    try:
        background = _prepare_quick(scenarios, failures) if ctx.mode == "quick" else {}
        for step in QUICK_ORDER if ctx.mode == "quick" else FULL_ORDER:
            if step == "LIMITS":
                if any(s in only for s in ("B1", "B2", "B5")):
                    _measure_limits(ctx)
                    doc["limits"] = ctx.limits
                continue
            if step not in scenarios or any(f.startswith(f"{step} ") for f in failures):
                continue
            t0 = time.monotonic()
            try:
                ctx.results[step] = background[step].result() if step in background else scenarios[step].run()
                ctx.results[step]["scenario_seconds"] = round(time.monotonic() - t0, 1)
            except Exception as exc:
                failures.append(f"{step}: {type(exc).__name__}: {exc}")
                log(f"{step} FAILED: {exc}\n{traceback.format_exc()}")
                ctx.results[step] = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                scenarios[step].close()
    finally:
        for sc in scenarios.values():
            sc.close()
    doc["results"] = ctx.results
    doc["figures"] = _figures(ctx, modules)


def _prepare_quick(scenarios: dict[str, Any], failures: list[str]) -> dict[str, Any]:
    """Quick mode: prepare every world concurrently, with B4 in the background; start workers.

    Preparing is I/O-bound (topics, databases, evidence, B5's setup runs); B4 only counts
    requests (CPU contention cannot change a count). Worker processes are started from the
    main thread afterwards, so their consumer-group joins overlap with B3 and the limits.
    """
    t_prep = time.monotonic()
    background: dict[str, Any] = {}
    if "B4" in scenarios:
        background["B4"] = _in_thread(scenarios["B4"].run)
    preps = {name: _in_thread(sc.prepare) for name, sc in scenarios.items()}
    for name, fut in preps.items():
        try:
            fut.result()
            scenarios[name].start()
        except Exception as exc:
            failures.append(f"{name} (prepare): {type(exc).__name__}: {exc}")
            log(f"{name} prepare FAILED: {exc}\n{traceback.format_exc()}")
    if "B4" in background:
        background["B4"].exception()
    log(f"prepared {', '.join(scenarios)} in {time.monotonic() - t_prep:.1f}s")
    return background


def _measure_limits(ctx: Context) -> None:
    from bench import limits

    log("measuring limits")
    ws = ctx.worker_settings
    ctx.limits = limits.measure_all(ctx.servers, quick=ctx.mode == "quick",
                                    concurrency=ws["run_concurrency"] + ws["verify_concurrency"],
                                    pg_concurrency=ws["run_concurrency"], intent_bytes=_intent_bytes())


def _in_thread(fn: Any) -> Any:
    """Run ``fn`` on a daemon thread; returns a Future."""
    import threading
    from concurrent.futures import Future

    fut: Future[Any] = Future()

    def target() -> None:
        try:
            fut.set_result(fn())
        except BaseException as exc:
            fut.set_exception(exc)

    threading.Thread(target=target, name="bench-background", daemon=True).start()
    return fut


def _intent_bytes() -> int:
    """Encoded size of a typical benchmark intent (for the Kafka passthrough limit)."""
    from worker.adapters.avro import AvroCodec
    from worker.core.models import Pins, RunIntent

    intent = RunIntent(tenant_id="bench0123ab", namespace="bench", scenario_id="b1",
                       pins=Pins(manifest_fingerprint="a" * 64, parameter_hash="b" * 64, seed=12345),
                       window_start=0, window_end=86_400_000, output_ids=("transactions",),
                       evidence_root="s3://sr-bench/evidence/bench0123ab/shared", submitted_at=0,
                       submitted_by="bench", request_id="req-b1-12345")
    return len(AvroCodec().encode_intent(intent))


def _figures(ctx: Context, modules: dict[str, Any]) -> list[dict[str, Any]]:
    figs: list[dict[str, Any]] = []
    for name, mod in modules.items():
        res = ctx.results.get(name)
        if not res or "error" in res:
            continue
        try:
            figs.extend(mod.figures(res, ctx.limits))
        except Exception as exc:
            log(f"{name}: cannot build figures: {exc}\n{traceback.format_exc()}")
    return figs


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def print_table(doc: dict[str, Any]) -> None:
    """Print every figure with its limit and ratio."""
    figs = doc.get("figures") or []
    m = doc.get("machine", {})
    print(f"\nSR bench ({doc['mode']}), {doc.get('git')}, {m.get('nproc')} cores, {m.get('cpu_model')}, "
          f"load at start {m.get('loadavg_at_start')}")
    servers = doc.get("servers", {})
    print("servers: " + ", ".join(f"{k}={v}" for k, v in servers.items()))
    header = ("figure", "value", "unit", "limit", "limit unit", "ratio", "target", "met")
    rows = [header]
    for f in figs:
        met = {True: "yes", False: "NO", None: ""}[f.get("met")]
        rows.append((f["name"], _fmt(f["value"]), f["unit"], _fmt(f.get("limit")), f.get("limit_unit") or "",
                     _fmt(f.get("ratio")), f.get("target") or "", met))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    for i, r in enumerate(rows):
        print("  ".join(str(c).ljust(widths[j]) if j in (0, 2, 4, 6) else str(c).rjust(widths[j])
                        for j, c in enumerate(r)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    notes = [f for f in figs if f.get("note")]
    if notes:
        print("\nnotes:")
        for f in notes:
            print(f"  {f['name']}: {f['note']}")


if __name__ == "__main__":
    sys.exit(main())
