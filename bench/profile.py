"""Where a worker's CPU goes: ``python -m bench.profile [--runs N] [--duplicates N]``.

Not a benchmark (no figure, no limit): a diagnostic for the optimisation work. It starts the
embedded stack (or uses the ``SR_TEST_*`` servers), then drives the worker's own processor
in-process, one message at a time on one thread, under :mod:`cProfile`:

* ``--runs`` fresh READY runs (2 gates x 4 members of 4 KiB), then
* ``--duplicates`` re-deliveries of those intents.

It prints CPU seconds per message and the share of CPU by library (obstore, botocore/boto3, urllib3,
psycopg, confluent-kafka, pydantic, fastavro, hashlib/json, SR's own code...), plus the top
functions by own time. Kafka consume and offset commits are not included (no consumer runs).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import threading
import time
from collections import defaultdict
from typing import Any

from bench.common import (
    log,
    make_intent,
    make_world,
    open_servers,
    s3_client,
    temp_state_dir,
)
from tests.harness.evidence import synthetic_example_evidence, write_objects
from tests.harness.paths import shared_evidence_policy

CATEGORIES = (
    ("/obstore/", "obstore"),
    ("botocore", "boto3/botocore"), ("boto3", "boto3/botocore"), ("s3transfer", "boto3/botocore"),
    ("urllib3", "urllib3 (HTTP)"), ("http/client", "http.client"), ("psycopg", "psycopg"),
    ("confluent_kafka", "confluent-kafka"), ("pydantic", "pydantic"), ("fastavro", "fastavro"),
    ("tenacity", "tenacity"), ("/worker/", "SR (worker/)"), ("logging", "logging"), ("json", "json"),
    ("ssl", "ssl"), ("socket", "socket"), ("threading", "threading/locks"), ("concurrent", "futures"),
)


INSIDE = {
    "S3 request attempts (ObjectStore._attempt)": ("adapters/s3/store.py", {"_attempt"}),
    "S3 body reads (ObjectStore._read_capped)": ("adapters/s3/store.py", {"_read_capped"}),
    "Postgres statements (postgres.execute)": ("adapters/postgres/queries.py", {"execute"}),
    "Kafka publish (Publisher.publish)": ("app/publisher.py", {"publish"}),
    "Avro decode (AvroCodec.decode_intent)": ("adapters/avro/codec.py", {"decode_intent"}),
    "identity (run_equivalence_key, fingerprint)": ("core/identity.py", {"run_equivalence_key",
                                                                          "intent_fingerprint"}),
}


def _category(filename: str, funcname: str) -> str:
    for needle, name in CATEGORIES:
        if needle in filename:
            return name
    if filename == "~":
        if "obstore" in funcname:
            return "obstore (native)"
        if "sha256" in funcname or "hashlib" in funcname:
            return "hashlib"
        if "socket" in funcname or "recv" in funcname or "send" in funcname:
            return "socket"
        return "builtins"
    return "other python"


def report(stats: pstats.Stats, messages: int, wall: float, title: str, top: int) -> None:
    by_cat: dict[str, float] = defaultdict(float)
    total = 0.0
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        by_cat[_category(filename, func)] += tt
        total += tt
    print(f"\n== {title}: {messages} messages, {wall / messages * 1000:.1f} ms wall and "
          f"{total / messages * 1000:.1f} ms CPU (all threads, profiled) per message")
    for cat, tt in sorted(by_cat.items(), key=lambda kv: kv[1], reverse=True):
        print(f"  {cat:<20} {100 * tt / total:5.1f} %  {tt / messages * 1000:7.2f} ms/message")
    print("  time inside (cumulative, all threads; overlapping):")
    for label, (needle, funcs) in INSIDE.items():
        cum = sum(ct for (fn, _l, func), (_cc, _nc, _tt, ct, _c) in stats.stats.items()  # type: ignore[attr-defined]
                  if needle in fn and func in funcs)
        if cum:
            print(f"  {label:<40} {cum / messages * 1000:7.2f} ms/message")
    print(f"  top {top} functions by own time:")
    stats.sort_stats("tottime").print_stats(top)


class ThreadProfiles:
    """cProfile on every thread started while active (CPU time per thread: ``time.thread_time``)."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        prof = cProfile.Profile(time.thread_time)
        with self._lock:
            self.profiles.append(prof)
        sys.setprofile(None)
        prof.enable()

    def __enter__(self) -> ThreadProfiles:
        threading.setprofile(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        threading.setprofile(None)


def _merge(main_prof: cProfile.Profile, threads: ThreadProfiles) -> pstats.Stats:
    stats = pstats.Stats(main_prof)
    for prof in threads.profiles:
        try:
            stats.add(prof)
        except (TypeError, ValueError):  # a thread that never ran a profiled call
            continue
    return stats


def _drive(servers: Any, state: Any, *, n: int, n_warm: int, title: str, top: int, repeat: int = 0) -> None:
    from worker.app.ports import Record
    from worker.core.policy import load_policy
    from worker.runtime.compose import open_services
    from worker.runtime.dispatch import dispatch

    # Every run reads one shared evidence root: gate_6B unscoped (contract §4).
    world = make_world(servers, "prof", state / "work", partitions=1, policy=shared_evidence_policy())
    write_objects(s3_client(servers), world.bucket, synthetic_example_evidence(world.evidence_prefix("ok")),
                  concurrency=16)
    root = world.evidence_root("ok")
    base = [make_intent(world, "prof", i, root) for i in range(n)]
    main_prof = cProfile.Profile(time.thread_time)
    with ThreadProfiles() as threads, \
            open_services(world.settings(), load_policy(world.policy_path.read_bytes())) as svc:
        def rec(intent: Any, offset: int) -> Any:
            return Record(topic=world.topics["intents"], partition=0, offset=offset, key=None,
                          value=svc.codec.encode_intent(intent), headers=(), timestamp_ms=None)

        for i in range(n_warm):
            dispatch(svc.processor, rec(base[i], i), triggers_topic=world.topics["triggers"])
        if repeat:
            # duplicates: every intent made READY first (unprofiled), then re-delivered
            for i in range(n_warm, len(base)):
                dispatch(svc.processor, rec(base[i], i), triggers_topic=world.topics["triggers"])
            records = [rec(base[j % len(base)].model_copy(update={"request_id": f"d{j}"}), j)
                       for j in range(repeat)]
        else:
            records = [rec(b, i) for i, b in enumerate(base[n_warm:])]
        t0 = time.monotonic()
        main_prof.enable()
        for r in records:
            dispatch(svc.processor, r, triggers_topic=world.topics["triggers"])
        main_prof.disable()
        wall = time.monotonic() - t0
    world.drop()
    # Duplicates run on the calling thread only; READY runs also use the verifier's pools.
    stats = pstats.Stats(main_prof) if repeat else _merge(main_prof, threads)
    report(stats, len(records), wall, title, top)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--duplicates", type=int, default=1000)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    state = temp_state_dir()
    try:
        with open_servers(state / "stack") as servers:
            _drive(servers, state, n=args.runs + 5, n_warm=5, title="READY runs (in-process, one at a time)",
                   top=args.top)
            _drive(servers, state, n=50, n_warm=0, title="duplicate intents (in-process, one at a time)",
                   top=args.top, repeat=args.duplicates)
    finally:
        log("done")
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
