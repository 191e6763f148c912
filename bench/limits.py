"""Limits measured in the same run, on the same servers, with the same client libraries.

* S3: raw small-object (4 KiB) conditional PUT, GET (body read) and LIST rates with the client
  library the worker's adapter uses for that verb (obstore for PUT/GET, boto3 for LIST, by
  default), configured exactly like the adapter, at the worker's S3 concurrency, from 1 or more
  processes (so the 2-worker limit is measured with 2 client processes). The boto3-only rates
  are kept as a what-if (the "before" of the client change).
* Kafka: raw confluent-kafka consume -> produce passthrough (acks=all) of intent-sized records.
* Postgres: raw single-statement round trips (``SELECT 1``) at the worker's run concurrency.

Each limit also records the CPU the client processes and the servers used while it ran.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

from bench.common import KiB, log, s3_client
from bench.cpu import CpuMeter, server_groups
from tests.harness.evidence import write_objects
from tests.harness.servers import Servers

SMALL = 4 * KiB


# ----------------------------------------------------------------------------- S3
_CLIENTS: dict[str, Any] = {}


def _s3_child(args: dict[str, Any]) -> dict[str, Any]:
    """One client process: ``concurrency`` threads doing ``verb`` until the deadline."""
    servers = Servers(**args["servers"])
    pool_size = max(32, args["concurrency"] * 2)
    endpoint = servers.require_s3()
    client = _CLIENTS.get(endpoint)
    if client is None:
        client = _CLIENTS[endpoint] = s3_client(servers, pool=pool_size)
    verb, bucket, conc = args["verb"], servers.s3_bucket, args["concurrency"]
    body = os.urandom(SMALL)
    keys: list[str] = args["keys"]
    list_prefix: str = args["list_prefix"]
    me = uuid.uuid4().hex[:6]
    counts = [0] * conc
    errors = [0] * conc
    obs = _obstore(servers) if library_for(verb, args.get("library", "sr")) == "obstore" else None

    def op(i: int, n: int) -> None:
        if obs is not None:
            _obstore_op(obs, verb, args, me, i, n, body)
        elif verb == "PUT":
            client.put_object(Bucket=bucket, Key=f"{args['put_prefix']}/{me}/{i}/{n}", Body=body, IfNoneMatch="*")
        elif verb == "GET":
            resp = client.get_object(Bucket=bucket, Key=keys[(i * 7919 + n) % len(keys)])
            resp["Body"].read()
        else:
            client.list_objects_v2(Bucket=bucket, Prefix=list_prefix, MaxKeys=1000)

    barrier = threading.Barrier(conc + 1)
    deadline_box: list[float] = [time.monotonic() + 3600]

    def loop(i: int) -> None:
        op(i, -1)  # warm the connection
        barrier.wait()
        n = 0
        while time.monotonic() < deadline_box[0]:
            try:
                op(i, n)
                counts[i] += 1
            except Exception:
                errors[i] += 1
            n += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(conc)]
    for t in threads:
        t.start()
    proc = psutil.Process()
    barrier.wait()
    cpu0 = sum(proc.cpu_times()[:2])
    t0 = time.monotonic()
    deadline_box[0] = t0 + args["seconds"]
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    return {"ops": sum(counts), "errors": sum(errors), "wall": wall, "cpu_s": cpu}


def library_for(verb: str, library: str) -> str:
    """The client library a raw ``verb`` is measured with: ``library`` itself, or for ``"sr"``
    the one the worker's adapter uses for that verb (``worker.adapters.s3.routes_for``)."""
    if library != "sr":
        return library
    from worker.adapters.s3 import S3Config

    return S3Config().client_library if verb in ("PUT", "GET", "HEAD") else "boto3"


def _obstore(servers: Servers) -> Any:
    """obstore's store for the bench bucket, built by SR's own adapter (same configuration:
    checksums, timeouts, no obstore retries). No request is sent."""
    from bench.common import s3_config
    from worker.adapters.s3 import raw_obstore_store

    return raw_obstore_store(s3_config(servers), servers.s3_bucket)


def _obstore_op(store: Any, verb: str, args: dict[str, Any], me: str, i: int, n: int, body: bytes) -> None:  # noqa: PLR0917
    import obstore

    if verb == "PUT":
        obstore.put(store, f"{args['put_prefix']}/obs-{me}/{i}/{n}", body, mode="create")
    elif verb == "GET":
        keys = args["keys"]
        obstore.get(store, keys[(i * 7919 + n) % len(keys)]).bytes()
    else:
        list(obstore.list(store, prefix=args["list_prefix"]))




def s3_rates(servers: Servers, *, concurrency: int, seconds: float, procs: tuple[int, ...] = (1,),
             verbs: tuple[str, ...] = ("PUT", "GET", "LIST"), library: str = "sr") -> dict[int, dict[str, Any]]:
    """Raw requests per second by verb, for each client-process count in ``procs`` (summed).

    ``library``: ``"sr"`` measures each verb with the library SR's adapter uses for it
    (:func:`library_for`); ``"boto3"`` / ``"obstore"`` force one library (what-ifs). Either
    way the client is configured exactly like SR's adapter.
    """
    client = s3_client(servers)
    run = uuid.uuid4().hex[:8]
    keys = [f"bench-limits/{run}/get/{i:05d}" for i in range(64)]
    write_objects(client, servers.s3_bucket, [(k, os.urandom(SMALL)) for k in keys], concurrency=16)
    list_prefix = f"bench-limits/{run}/list/"
    write_objects(client, servers.s3_bucket, [(f"{list_prefix}part-{i:04d}", os.urandom(SMALL)) for i in range(5)],
                  concurrency=16)
    server_args = {k: getattr(servers, k) for k in ("kafka_bootstrap", "pg_dsn", "s3_endpoint", "s3_bucket",
                                                     "s3_access_key", "s3_secret_key", "s3_region")}
    results: dict[int, dict[str, Any]] = {}
    with client_pool(max(procs)) as pool:
        for n in procs:
            out: dict[str, Any] = {"library": library, "concurrency_per_process": concurrency, "processes": n,
                                   "seconds": seconds, "object_bytes": SMALL,
                                   "library_by_verb": {verb: library_for(verb, library) for verb in verbs}}
            for verb in verbs:
                args = {"servers": server_args, "verb": verb, "concurrency": concurrency, "seconds": seconds,
                        "keys": keys, "list_prefix": list_prefix, "put_prefix": f"bench-limits/{run}/put",
                        "library": library}
                clients = [proc.pid for proc in getattr(pool, "_pool", [])]
                meter = CpuMeter({"s3 client processes": clients, **server_groups(servers)}).start()
                found = pool.map(_s3_child, [args] * n, chunksize=1)
                cpu = meter.stop()
                ops = sum(r["ops"] for r in found)
                wall = max(r["wall"] for r in found)
                client_cpu = sum(r["cpu_s"] for r in found)
                out[verb] = {
                    "per_s": round(ops / wall, 1),
                    "errors": sum(r["errors"] for r in found),
                    "client_cpu_ms_per_request": round(1000 * client_cpu / max(ops, 1), 3),
                    "client_cores": round(client_cpu / wall, 2),
                    "cores_by_process": cpu["cores_by_process"],
                    "machine_busy_cores": cpu["machine_busy_cores"],
                }
                log(f"limit S3 {verb} ({library_for(verb, library)}): {out[verb]['per_s']}/s "
                    f"({n} proc x {concurrency} in flight, "
                    f"client {out[verb]['client_cpu_ms_per_request']} ms CPU/request)")
            results[n] = out
    return results


def mean_rates(*runs: dict[str, Any]) -> dict[str, Any]:
    """Per-verb mean of several :func:`s3_rates` results for one process count."""
    out: dict[str, Any] = dict(runs[0])
    for verb in ("PUT", "GET", "LIST"):
        vals = [r[verb]["per_s"] for r in runs if verb in r]
        if vals:
            out[verb] = {**runs[0][verb], "per_s": round(sum(vals) / len(vals), 1), "runs_per_s": vals}
    return out


def _noop(_: int) -> None:
    import boto3  # noqa: F401 - import cost paid before timing

    import bench.common  # noqa: F401


_POOL: dict[str, Any] = {}


def prewarm(procs: int = 2) -> None:
    """Start the spawned client processes early (their start-up overlaps with other work)."""
    if "pool" in _POOL:
        return
    pool = mp.get_context("spawn").Pool(procs)
    _POOL["pool"], _POOL["size"] = pool, procs
    _POOL["warm"] = pool.map_async(_noop, range(procs), chunksize=1)


def shutdown() -> None:
    """Stop the prewarmed client processes (by the pool's own terminate/join)."""
    pool = _POOL.pop("pool", None)
    if pool is not None:
        pool.terminate()
        pool.join()
    _POOL.clear()


@contextlib.contextmanager
def client_pool(procs: int) -> Iterator[Any]:
    """The prewarmed pool when it is big enough, else a fresh one (closed afterwards)."""
    if _POOL.get("size", 0) >= procs:
        _POOL["warm"].wait(120)
        yield _POOL["pool"]
        return
    pool = mp.get_context("spawn").Pool(procs)
    try:
        pool.map(_noop, range(procs), chunksize=1)
        yield pool
    finally:
        pool.terminate()
        pool.join()


def s3_ready_limit(rates: dict[str, Any], per_run: dict[str, float]) -> float:
    """READY/s the raw S3 rates allow for a run costing ``per_run`` requests by verb.

    Time per run on the S3 client = sum over verbs of count / raw rate (HEAD/DELETE priced
    as GET); the limit is its inverse.
    """
    seconds = 0.0
    for verb, count in per_run.items():
        if verb.startswith("bytes") or not count:
            continue
        key = verb if verb in ("PUT", "GET", "LIST") and verb in rates else "GET"
        seconds += count / rates[key]["per_s"]
    return 1.0 / seconds if seconds > 0 else float("inf")


# ----------------------------------------------------------------------------- Kafka
def kafka_passthrough(servers: Servers, *, messages: int, value_bytes: int, partitions: int = 4) -> dict[str, Any]:
    """Raw consume -> produce rate (records/s) between two fresh topics, acks=all."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    from worker.adapters.kafka import TopicSpec
    from worker.embedded.stack import create_topics

    bootstrap = servers.require_kafka()
    suffix = uuid.uuid4().hex[:8]
    src, dst = f"bench.limits.src.{suffix}", f"bench.limits.dst.{suffix}"
    create_topics(bootstrap, [TopicSpec(src, partitions), TopicSpec(dst, partitions)])
    value = os.urandom(value_bytes)
    prod_conf = {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                 "enable.idempotence": True, "queue.buffering.max.messages": 500_000}
    filler = Producer(prod_conf)
    t0 = time.monotonic()
    for i in range(messages):
        while True:
            try:
                filler.produce(src, key=f"k{i}".encode(), value=value)
                break
            except BufferError:
                filler.poll(0.05)
        if i % 1000 == 0:
            filler.poll(0)
    if filler.flush(120):
        raise RuntimeError("kafka limit: could not fill the source topic")
    produce_rate = messages / (time.monotonic() - t0)

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-pt-{suffix}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    producer = Producer(prod_conf)
    delivered = [0]

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is None:
            delivered[0] += 1

    consumer.assign([TopicPartition(src, p, OFFSET_BEGINNING) for p in range(partitions)])
    meter = CpuMeter({"bench client": [os.getpid()], **server_groups(servers)}).start()
    consumed = 0
    # Timed from the assignment (the first fetch's start-up is amortised over many records;
    # timing from the first record instead would mostly time librdkafka's prefetched queue).
    started = time.monotonic()
    deadline = started + 300
    while consumed < messages and time.monotonic() < deadline:
        for msg in consumer.consume(500, 0.2):
            if msg.error() is not None:
                continue
            consumed += 1
            while True:
                try:
                    producer.produce(dst, key=msg.key(), value=msg.value(), on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    wall = time.monotonic() - started
    cpu = meter.stop()
    consumer.close()
    rate = delivered[0] / wall
    log(f"limit Kafka passthrough: {rate:.0f} records/s ({delivered[0]} records)")
    return {"per_s": round(rate, 1), "records": delivered[0], "value_bytes": value_bytes,
            "fill_produce_per_s": round(produce_rate, 1), "cpu": cpu}


# ----------------------------------------------------------------------------- Postgres
def pg_round_trips(dsn: str, *, concurrency: int, seconds: float) -> dict[str, Any]:
    """Raw ``SELECT 1`` round trips per second over ``concurrency`` autocommit connections."""
    import psycopg

    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(concurrency)]
    counts = [0] * concurrency
    stop_at = [0.0]

    def loop(i: int) -> None:
        conn = conns[i]
        while time.monotonic() < stop_at[0]:
            conn.execute("SELECT 1").fetchone()
            counts[i] += 1

    try:
        for c in conns:
            c.execute("SELECT 1")
        t0 = time.monotonic()
        stop_at[0] = t0 + seconds
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(loop, range(concurrency)))
        wall = time.monotonic() - t0
    finally:
        for c in conns:
            c.close()
    rate = sum(counts) / wall
    log(f"limit Postgres: {rate:.0f} round trips/s at {concurrency} connections")
    return {"per_s": round(rate, 1), "concurrency": concurrency, "seconds": seconds}


def measure_all(servers: Servers, *, quick: bool, concurrency: int, pg_concurrency: int,
                intent_bytes: int) -> dict[str, Any]:
    """Every limit used by the scenarios (1- and 2-process S3 rates, Kafka, Postgres)."""
    secs = 0.75 if quick else 5.0
    random.seed(0)
    s3 = s3_rates(servers, concurrency=concurrency, seconds=secs, procs=(1, 2),
                  verbs=("PUT", "GET") if quick else ("PUT", "GET", "LIST"))
    out = {
        "s3_1proc": s3[1],
        "s3_2proc": s3[2],
        "kafka_passthrough": kafka_passthrough(servers, messages=2000 if quick else 100_000,
                                               value_bytes=intent_bytes),
        "pg_round_trips": pg_round_trips(servers.require_postgres(), concurrency=pg_concurrency,
                                         seconds=min(secs, 2.0)),
    }
    if not quick:
        # What-if ("before" the client change): the same raw rates with boto3 alone, 1 process.
        out["s3_1proc_boto3"] = s3_rates(servers, concurrency=concurrency, seconds=secs, procs=(1,),
                                         library="boto3")[1]
    return out
