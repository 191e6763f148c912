"""B3 — evidence verification throughput on a large bundle vs the raw streamed GET + sha256.

One set of members (full: 64 x 16 MiB = 1 GiB) is laid out so that both gate methods verify
exactly the same member bytes::

    <root>/_passed.flag                  sha256_bundle_digest over everything below
    <root>/mc/_passed.flag               sha256_member_digest_concat
    <root>/mc/index.json
    <root>/mc/part-0000.bin ...          the members

The worker's own :class:`~worker.app.verifier.EvidenceVerifier` (default caps and
``verify_concurrency``) verifies each gate in-process; the limit is the raw streamed GET +
sha256 of the same member objects with the same boto3 client configuration and the same
concurrency (measured before and after, the mean is the limit).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import InProcessScenario, MiB, figure, log, s3_config
from bench.cpu import CpuMeter, bottleneck, server_groups
from bench.limits import library_for

CHUNK = 1 * MiB


def _members(n: int, size: int) -> list[bytes]:
    block = os.urandom(size)
    return [i.to_bytes(8, "big") + block[8:] for i in range(n)]


def _raw(client: Any, bucket: str, keys: list[str], concurrency: int, *, obstore_store: Any = None
         ) -> tuple[float, int]:
    """Streamed GET + sha256 of every key with ``concurrency`` threads; (seconds, bytes).

    With ``obstore_store`` the GETs go through obstore (the library SR's adapter streams with by
    default), otherwise through the boto3 ``client``.
    """

    def one(key: str) -> int:
        h = hashlib.sha256()
        n = 0
        if obstore_store is not None:
            import obstore

            for chunk in obstore.get(obstore_store, key).stream(min_chunk_size=CHUNK):
                h.update(chunk)
                n += len(chunk)
            return n
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            while chunk := body.read(CHUNK):
                h.update(chunk)
                n += len(chunk)
        finally:
            body.close()
        return n

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        total = sum(pool.map(one, keys))
    return time.monotonic() - t0, total


def measure(ctx: Any) -> dict[str, Any]:
    from worker.adapters.s3 import ObjectStore, raw_boto3_client, raw_obstore_store
    from worker.app.verifier import EvidenceVerifier
    from worker.core.plan import PlanGate
    from worker.core.policy import GateMethod
    from worker.settings import Settings

    n, size = ctx.sizes["b3_members"], ctx.sizes["b3_member_mib"] * MiB
    defaults = Settings()
    conc = defaults.verify_concurrency
    servers, bucket = ctx.servers, ctx.servers.s3_bucket
    root = f"evidence/benchb3/{uuid.uuid4().hex[:8]}"
    members = _members(n, size)
    rels = [f"mc/part-{i:04d}.bin" for i in range(n)]
    digests = [hashlib.sha256(m).hexdigest() for m in members]
    index = json.dumps([{"path": r[3:], "sha256_hex": d} for r, d in zip(rels, digests, strict=True)]).encode()
    mc_flag = f"sha256_hex={hashlib.sha256(''.join(digests).encode()).hexdigest()}\n".encode()
    bundle_objects = {"mc/_passed.flag": mc_flag, "mc/index.json": index, **dict(zip(rels, members, strict=True))}
    h = hashlib.sha256()
    for rel in sorted(bundle_objects, key=lambda k: k.encode()):
        h.update(bundle_objects[rel])
    top_flag = f"sha256_hex={h.hexdigest()}\n".encode()

    config = s3_config(servers, pool=defaults.s3_max_pool_connections)
    with ObjectStore(config) as store:
        client = raw_boto3_client(config)
        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=f"{root}/{kv[0]}", Body=kv[1]),
                          list(bundle_objects.items())))
        client.put_object(Bucket=bucket, Key=f"{root}/_passed.flag", Body=top_flag)
        upload_s = time.monotonic() - t0
        del members
        total_bytes = n * size
        log(f"B3: uploaded {total_bytes / MiB:.0f} MiB in {upload_s:.1f}s")
        keys = [f"{root}/{r}" for r in rels]
        groups = {"bench (client/verifier)": [ctx.pid], **server_groups(servers)}
        # The raw read uses the library SR's adapter streams GETs with, configured like it.
        library = library_for("GET", "sr")
        obs = raw_obstore_store(config, bucket) if library == "obstore" else None
        _raw(client, bucket, keys[: min(len(keys), conc)], conc, obstore_store=obs)  # warm connections, page cache

        def measure_raw() -> tuple[float, dict[str, Any]]:
            meter = CpuMeter(groups, self_only=("bench (client/verifier)",)).start()
            secs, got = _raw(client, bucket, keys, conc, obstore_store=obs)
            if got != total_bytes:
                raise RuntimeError(f"raw read {got} bytes, expected {total_bytes}")
            return total_bytes / MiB / secs, meter.stop()

        rounds = ctx.sizes.get("b3_rounds", 3)
        verifier = EvidenceVerifier(store, max_meta_bytes=defaults.max_meta_bytes,
                                    max_member_bytes=defaults.max_member_bytes, concurrency=conc)
        gates = {
            "member_concat": PlanGate(gate_id="gate_member_concat", method=GateMethod.SHA256_MEMBER_DIGEST_CONCAT,
                                      bundle_uri=f"s3://{bucket}/{root}/mc", depends_on=()),
            "bundle_digest": PlanGate(gate_id="gate_bundle_digest", method=GateMethod.SHA256_BUNDLE_DIGEST,
                                      bundle_uri=f"s3://{bucket}/{root}", depends_on=()),
        }
        # Interleaved rounds: raw, verify x2, raw, verify x2, ..., raw. Each verification is
        # compared with the mean of the raw reads right before and after it; the figure is the
        # median over rounds (the machine is shared: a single pair is at the mercy of noise).
        raws, raw_cpu = [], None
        samples: dict[str, list[dict[str, Any]]] = {label: [] for label in gates}
        try:
            rate, raw_cpu = measure_raw()
            raws.append(rate)
            for _ in range(rounds):
                done: dict[str, dict[str, Any]] = {}
                for label, gate in gates.items():
                    store.counter.reset()
                    meter = CpuMeter(groups, self_only=("bench (client/verifier)",)).start()
                    t0 = time.monotonic()
                    result = verifier.verify_gate(gate)
                    secs = time.monotonic() - t0
                    cpu = meter.stop()
                    if result.outcome.value != "PASS":
                        raise RuntimeError(f"{label}: verification did not PASS: {result.outcome} {result.detail}")
                    done[label] = {"mib_per_s": total_bytes / MiB / secs, "seconds": round(secs, 2),
                                   "s3_requests": store.counter.snapshot(), "cpu": cpu}
                rate, _cpu = measure_raw()
                raws.append(rate)
                adjacent = (raws[-2] + raws[-1]) / 2
                for label, d in done.items():
                    d["raw_adjacent_mib_per_s"] = round(adjacent, 1)
                    d["ratio"] = d["mib_per_s"] / adjacent
                    samples[label].append(d)
        finally:
            verifier.close()
    results: dict[str, Any] = {}
    for label, runs in samples.items():
        best = sorted(runs, key=lambda d: d["ratio"])[len(runs) // 2]  # the median round
        results[label] = {
            "mib_per_s": round(statistics.median(d["mib_per_s"] for d in runs), 1),
            "ratio": round(statistics.median(d["ratio"] for d in runs), 3),
            "rounds_mib_per_s": [round(d["mib_per_s"], 1) for d in runs],
            "rounds_ratio": [round(d["ratio"], 3) for d in runs],
            "seconds": best["seconds"], "s3_requests": best["s3_requests"], "cpu": best["cpu"],
        }
        log(f"B3 {label}: {results[label]['mib_per_s']:.0f} MiB/s, ratio {results[label]['ratio']} "
            f"(rounds {results[label]['rounds_ratio']})")
    raw = statistics.median(raws)
    log(f"B3 raw GET+sha256: {[round(r) for r in raws]} MiB/s at {conc} in flight")
    return {"members": n, "member_mib": size // MiB, "total_mib": total_bytes // MiB, "concurrency": conc,
            "rounds": rounds, "upload_s": round(upload_s, 1), "raw_mib_per_s": round(raw, 1), "raw_library": library,
            "raw_runs_mib_per_s": [round(r, 1) for r in raws], "raw_cpu": raw_cpu, **results}


class Scenario(InProcessScenario):
    """B3: in-process, nothing to start ahead."""

    name = "B3"
    measure = staticmethod(measure)


def figures(res: dict[str, Any], limits: dict[str, Any]) -> list[dict[str, Any]]:
    figs = []
    for label, title in (("member_concat", "sha256_member_digest_concat"), ("bundle_digest", "sha256_bundle_digest")):
        r = res[label]
        ratio = r["ratio"]
        figs.append(figure(f"B3 verify {res['total_mib']} MiB bundle, {title}", r["mib_per_s"], "MiB/s",
                           limit=res["raw_mib_per_s"],
                           limit_name=f"raw streamed GET+sha256 ({res.get('raw_library', 'boto3')}), "
                                      f"{res['concurrency']} in flight (median; ratio = "
                                      f"median over {res.get('rounds', 1)} interleaved rounds)",
                           ratio=ratio, target=">= 0.8", met=ratio >= 0.8,
                           note=f"per-round ratios {r.get('rounds_ratio')}; {bottleneck(r['cpu'])}"))
    return figs
