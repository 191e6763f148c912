"""Kill matrix: SIGKILL a worker at every named crash point, restart, drain, check the whole output.

Modelled on Kafka's own transaction system tests (hard kills, then verify everything that
came out). For each crash point (one round in ``make test``, three in ``make soak``):

1. two ``sr run`` processes share the consumer group; worker A is armed with
   ``SR_TEST_CRASH_POINT=<point>`` and ``SR_TEST_CRASH_AFTER=<n>`` (it SIGKILLs itself on the
   n-th hit), worker B is not;
2. 300 intents are fed: complete, waiting, tampered and duplicate copies, on random keys so
   copies of one run race on different partitions and workers;
3. A dies at the point (exit by SIGKILL is asserted — the point really fired), the S3 objects
   that exist at that moment are snapshotted, A is restarted unarmed, the pair drains;
4. the whole output is checked: every run's terminal state (index *and* ledger), the READY
   set, byte-identical re-sends only, every truth object consistent and never rewritten, no
   dead letters, every offset committed, an empty outbox.
"""

from __future__ import annotations

import hashlib
import random
import signal
import socket
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.harness.evidence import EvidenceWriter
from tests.harness.http_capture import OneRequestCapture
from tests.harness.kafka import committed_total, group_by_idempotency_key, produce_raw, read_topic
from tests.harness.parallel import HEAVY
from tests.harness.probes import list_objects, status_counts, unpublished_count
from tests.harness.probes import wait_for as poll
from tests.harness.sr_env import SREnv, make_intent
from tests.harness.workers import WorkerProc, stop_all, unclean_exits, wait_group_split
from tests.reliability.conftest import ROUNDS, report
from worker.adapters.postgres import RoundTripCounter, RunIndex
from worker.adapters.s3 import Boto3Transport, ObjectStore, raw_boto3_client
from worker.app.crashpoints import CrashPoint
from worker.app.truth import TruthStore
from worker.core.identity import run_id_of
from worker.core.keys import run_keys
from worker.core.ledger import LedgerKind, derive_state
from worker.core.models import RunIntent, RunStatus
from worker.runtime.compose import pg_config, s3_config

# HEAVY (tests/harness/parallel.py): several worker processes under load, run one at a time.
pytestmark = [pytest.mark.integration, pytest.mark.slow, HEAVY]

N_COMPLETE, N_WAITING, N_TAMPERED, N_DUPLICATES = 150, 50, 50, 50
N_MESSAGES = N_COMPLETE + N_WAITING + N_TAMPERED + N_DUPLICATES  # 300
PARTITIONS = 4

#: (crash point, which hit kills the process). Early hits: the process dies with work in
#: flight on its other threads, and the round stays short.
CRASH_AFTER: dict[CrashPoint, int] = {
    CrashPoint.AFTER_PLAN_WRITE: 25,
    CrashPoint.AFTER_FACTS_WRITE: 15,
    CrashPoint.AFTER_LEDGER_READY: 15,
    CrashPoint.AFTER_PRODUCE_BEFORE_MARK: 25,
    CrashPoint.BEFORE_OFFSET_COMMIT: 2,
}
EXPECTED_STATUS = {"complete": RunStatus.READY, "waiting": RunStatus.WAITING, "tampered": RunStatus.QUARANTINED}
EXPECTED_REASON = {"waiting": "EVIDENCE_MISSING", "tampered": "DIGEST_MISMATCH"}


def _workload(env: SREnv, rng: random.Random) -> tuple[list[RunIntent], dict[str, str]]:
    """300 messages in a shuffled order, and run_id → kind for the 250 distinct runs."""
    roots = {kind: env.evidence_root(kind) for kind in EXPECTED_STATUS}
    originals: list[tuple[str, RunIntent]] = []
    seed = 0
    for kind, count in (("complete", N_COMPLETE), ("waiting", N_WAITING), ("tampered", N_TAMPERED)):
        for _ in range(count):
            seed += 1
            originals.append((kind, make_intent(env, f"{kind[0]}{seed}", evidence_root=roots[kind], seed=seed)))
    completes = [i for k, i in originals if k == "complete"]
    duplicates = [i.model_copy(update={"request_id": f"dup-{n}", "submitted_by": f"producer{n % 5}"})
                  for n, i in enumerate(rng.sample(completes, N_DUPLICATES))]
    messages = [i for _, i in originals] + duplicates
    rng.shuffle(messages)
    return messages, {run_id_of(i): k for k, i in originals}


# 250 runs on three evidence roots (one per kind) to save writes: gate_6B unscoped (contract §4).
@pytest.mark.shared_evidence
@pytest.mark.parametrize("round_no", range(1, ROUNDS + 1), ids=lambda r: f"round{r}")
@pytest.mark.parametrize("point", list(CRASH_AFTER), ids=lambda p: p.value)
def test_kill_at_crash_point_then_restart_loses_and_duplicates_nothing(
    *, point: CrashPoint, round_no: int, sr_env: SREnv, write_evidence: EvidenceWriter, s3_client: Any,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    rng = random.Random(f"{point.value}-{round_no}")
    write_evidence("complete")
    write_evidence("tampered", tamper="6B")
    messages, kind_of = _workload(sr_env, rng)
    assert len(messages) == N_MESSAGES and len(kind_of) == N_COMPLETE + N_WAITING + N_TAMPERED
    expect = {kind: {r for r, k in kind_of.items() if k == kind} for kind in EXPECTED_STATUS}
    dsn = sr_env.settings.pg_conninfo().get_secret_value()
    topics = sr_env.settings.topics
    bootstrap = sr_env.settings.kafka_bootstrap

    armed = {"SR_TEST_CRASH_POINT": point.value, "SR_TEST_CRASH_AFTER": str(CRASH_AFTER[point])}
    victim = WorkerProc(sr_env, tmp_path / "a.log", extra_env=armed)
    survivor = WorkerProc(sr_env, tmp_path / "b.log")
    restarted = WorkerProc(sr_env, tmp_path / "a2.log")
    workers = [victim, survivor, restarted]
    try:
        victim.start()
        survivor.start()
        wait_group_split([victim.log, survivor.log], topics.intents, PARTITIONS)
        produce_raw(sr_env, topics.intents, [(rng.randbytes(8), sr_env.codec.encode_intent(i)) for i in messages])

        code = victim.wait_exit(120)
        assert code == -signal.SIGKILL, f"worker A did not die at {point.value} (exit {code})"
        killed_at = time.monotonic() - started
        before_restart = list_objects(s3_client, sr_env.bucket, sr_env.settings.s3_prefix + "/")
        restarted.start()
        # The survivor may drain everything before the restarted worker is up; stopping it
        # mid-start would be a different test (see worker/cli/run.py's early signal handlers).
        restarted.wait_started()

        def drained() -> bool:
            counts = status_counts(dsn)
            want = {EXPECTED_STATUS[k].value: len(v) for k, v in expect.items()}
            return (counts == want and unpublished_count(dsn) == 0
                    and committed_total(sr_env, topics.intents) == N_MESSAGES)

        assert poll(drained, timeout=240, interval=1.0), (
            f"not drained: index {status_counts(dsn)}, unpublished {unpublished_count(dsn)}, "
            f"committed {committed_total(sr_env, topics.intents)}/{N_MESSAGES}, dead letters "
            f"{[dict(r.headers) for r in read_topic(bootstrap, topics.dlq, timeout=1.5)][:3]}")
        not_ready = expect["waiting"] | expect["tampered"]
        with ThreadPoolExecutor(3) as readers:  # the settle windows overlap
            ready_f = readers.submit(
                read_topic, bootstrap, topics.ready,
                until=lambda rs: {r.key for r in rs} >= {r.encode() for r in expect["complete"]}, timeout=60,
                settle=1.0)
            statuses_f = readers.submit(
                read_topic, bootstrap, topics.status,
                until=lambda rs: {r.key for r in rs} >= {r.encode() for r in not_ready}, timeout=60, settle=1.0)
            dead_f = readers.submit(read_topic, bootstrap, topics.dlq, timeout=1.5)
            ready, statuses, dead = ready_f.result(), statuses_f.result(), dead_f.result()
    finally:
        codes = stop_all(workers)
    assert codes[1:] == [0, 0], (f"survivor/restarted worker exit codes {codes[1:]}\n"
                                 f"{unclean_exits(workers[1:], codes[1:])}")
    assert dead == [], f"{len(dead)} message(s) dead-lettered: {[r.headers for r in dead][:3]}"

    # --- the output topics: the READY set, one fact per run, only byte-identical re-sends
    ready_facts = group_by_idempotency_key(ready)
    assert all(len(v) == 1 for v in ready_facts.values()), "two READY records for one fact differ in bytes"
    fact_of: dict[str, str] = {}
    for record in ready:
        event = sr_env.codec.decode_ready(record.value or b"")
        assert record.key == event.run_id.encode()
        assert fact_of.setdefault(event.run_id, event.facts_view_hash) == event.facts_view_hash, (
            f"run {event.run_id} got READY for two different facts views")
    assert set(fact_of) == expect["complete"], "the READY set differs from the expected set"
    status_facts = group_by_idempotency_key(statuses)
    assert all(len(v) == 1 for v in status_facts.values()), "two status records for one transition differ"
    announced: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for record in statuses:
        status_event = sr_env.codec.decode_status(record.value or b"")
        announced[status_event.run_id].add((status_event.status.value, status_event.reason_code))
    assert set(announced) == not_ready
    for run_id in not_ready:
        kind = kind_of[run_id]
        assert announced[run_id] == {(EXPECTED_STATUS[kind].value, EXPECTED_REASON[kind])}, run_id

    # --- the index and the truth in S3, run by run
    with RunIndex(pg_config(sr_env.settings), RoundTripCounter()) as index:
        rows = {row.run_id: row for row in index.list_runs(limit=1000)}
    assert set(rows) == set(kind_of)
    after = list_objects(s3_client, sr_env.bucket, sr_env.settings.s3_prefix + "/")
    rewritten = sorted(k for k, etag in before_restart.items() if after.get(k) != etag)
    assert rewritten == [], f"truth objects changed or vanished after the restart: {rewritten[:5]}"
    per_run: dict[str, set[str]] = defaultdict(set)
    for key in after:
        per_run[key.split("/run/", 1)[1].split("/", 1)[0]].add(key.split("/run/", 1)[1].split("/", 1)[1])
    assert set(per_run) == set(kind_of), "S3 holds objects of unknown runs, or a run has none"

    def check_run(run_id: str) -> str | None:
        row = rows[run_id]
        kind = kind_of[run_id]
        if row.status is not EXPECTED_STATUS[kind]:
            return f"{run_id}: index says {row.status}, expected {EXPECTED_STATUS[kind]}"
        expected_objects = {"plan.json", "record/000000000000.json"}
        if kind == "complete":
            expected_objects.add(f"facts/{fact_of[run_id]}.json")
        if per_run[run_id] != expected_objects:
            return f"{run_id}: objects {sorted(per_run[run_id])}, expected {sorted(expected_objects)}"
        keys = run_keys(sr_env.settings.s3_prefix, sr_env.tenant, "payments", run_id)
        entries = truth.read_ledger(keys)  # verifies the hash chain and canonical form
        state = derive_state(entries)
        if [e.kind for e in entries] != [LedgerKind(EXPECTED_STATUS[kind].value)] or state.status is not row.status:
            return f"{run_id}: ledger {[e.kind.value for e in entries]} vs index {row.status}"
        if row.plan_hash is None or truth.read_plan(keys, row.plan_hash).run_id != run_id:
            return f"{run_id}: plan does not verify"
        if kind == "complete":
            view = truth.read_facts_view(keys, fact_of[run_id])  # verifies sha256(bytes) == name
            if (state.facts_view_hash, row.facts_view_hash, view.run_id) != (fact_of[run_id],) * 2 + (run_id,):
                return f"{run_id}: published facts {fact_of[run_id]} vs ledger {state.facts_view_hash}"
        return None

    with ObjectStore(s3_config(sr_env.settings)) as store, ThreadPoolExecutor(8) as pool:
        truth = TruthStore(store, sr_env.bucket, sr_env.settings.s3_prefix)
        problems = [p for p in pool.map(check_run, sorted(kind_of)) if p]
    assert problems == [], problems[:5]

    ready_resends = len(ready) - len(ready_facts)
    status_resends = len(statuses) - len(status_facts)
    if point is CrashPoint.AFTER_PRODUCE_BEFORE_MARK:
        # The killed process had a broker ack for a record it never marked published: the
        # restart must have re-sent it, byte for byte.
        assert ready_resends + status_resends >= 1, "no re-send after a crash between produce and mark"
    digest = hashlib.sha256(b"".join(sorted(r.value or b"" for r in ready))).hexdigest()[:12]
    tally = Counter(kind_of.values())
    report(f"kill matrix {point.value} round {round_no}: killed at {killed_at:.1f}s; "
           f"{len(ready)} READY records for {len(ready_facts)} facts ({ready_resends} byte-identical re-sends), "
           f"{len(statuses)} status records for {len(status_facts)} transitions ({status_resends} re-sends); "
           f"runs {dict(tally)}; {len(before_restart)} truth objects before restart, {len(after)} after; "
           f"READY digest {digest}; {time.monotonic() - started:.1f}s")


def _torn_put(endpoint: str, url: str, headers: dict[str, str]) -> None:
    """Replay a PUT's request line and headers, then die before sending one byte of body:
    what a SIGKILL between the headers and the body looks like to the server. A captured
    ``Host`` header is replayed as it was (it is part of the SigV4 signature)."""
    target = urlsplit(endpoint)
    path = url[len(endpoint):] if url.startswith(endpoint) else url
    has_host = any(k.lower() == "host" for k in headers)
    head = [f"PUT {path or '/'} HTTP/1.1"] + ([] if has_host else [f"Host: {target.netloc}"])
    head += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((target.hostname or "127.0.0.1", target.port or 80), timeout=5) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        if any(k.lower() == "expect" for k in headers):
            assert sock.recv(64).startswith(b"HTTP/1.1 100")  # "100 Continue": the body would follow now
    time.sleep(0.5)


def _capture_boto3_put(store: ObjectStore, bucket: str, key: str, body: bytes) -> tuple[str, dict[str, str]]:
    """The URL and headers boto3 would send for ``store.create`` (the request is not sent)."""
    from botocore.awsrequest import AWSResponse

    captured: dict[str, Any] = {}

    def capture(request: Any, **_: Any) -> AWSResponse:
        captured.update(url=request.url, headers={k: v.decode() if isinstance(v, bytes) else str(v)
                                                   for k, v in request.headers.items()})
        # botocore-stubs want HTTPHeaders; AWSResponse takes any mapping (it copies it into a HeadersDict).
        return AWSResponse(request.url, 200, {}, _EmptyBody())  # type: ignore[arg-type]  # not sent: replayed torn

    client = raw_boto3_client(store.config)  # SR's own client configuration, with the hook attached
    # botocore-stubs type handlers as returning None; a before-send handler returning a response
    # is botocore's documented way to answer a request without sending it.
    client.meta.events.register("before-send.s3.PutObject", capture)  # type: ignore[arg-type]
    with ObjectStore(store.config, transport=Boto3Transport(store.config, client=client)) as hooked:
        assert hooked.create(bucket, key, body)
    return captured["url"], captured["headers"]


def _capture_obstore_put(sr_env: SREnv, bucket: str, key: str, body: bytes) -> tuple[str, dict[str, str]]:
    """The request target and headers obstore sends for ``ObjectStore.create``, recorded by a
    one-shot HTTP server standing in for S3."""
    with OneRequestCapture() as capture, ObjectStore(s3_config(sr_env.settings).model_copy(
            update={"endpoint_url": capture.endpoint, "max_attempts": 1})) as store:
        assert store.create(bucket, key, body)
    return capture.request_target, capture.headers


@pytest.mark.parametrize("library", ["obstore", "boto3"])
def test_a_write_once_put_torn_by_a_crash_leaves_no_object(sr_env: SREnv, s3_client: Any, library: str) -> None:
    """Found by ``make soak``: a worker SIGKILLed after sending a write-once PUT's headers but
    before its body left a 0-byte object at a ledger key on SeaweedFS. Write-once then made the
    empty object permanent truth: every later write got 412 and read b"" back, so the run's
    intent was dead-lettered (INTEGRITY / DRIFT) and the run stayed ADMITTED forever. A PUT
    carrying a body checksum (Content-MD5 with boto3, x-amz-checksum-sha256 with obstore) is
    refused by the server when the body never comes."""
    key = f"{sr_env.settings.s3_prefix}/torn-{library}/record/000000000000.json"
    body = b'{"entry":"the real bytes"}'
    if library == "boto3":
        config = s3_config(sr_env.settings).model_copy(update={"client_library": "boto3"})
        with ObjectStore(config) as store:
            url, headers = _capture_boto3_put(store, sr_env.bucket, key, body)
    else:
        url, headers = _capture_obstore_put(sr_env, sr_env.bucket, key, body)
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered.get("if-none-match") == "*"
    assert "content-md5" in lowered or "x-amz-checksum-sha256" in lowered, headers
    _torn_put(sr_env.servers.s3_endpoint or "", url, headers)
    leftover = list_objects(s3_client, sr_env.bucket, key)
    assert leftover == {}, f"a torn write-once PUT left an object behind: {leftover}"
    # The same key is still writable with the real bytes (nothing half-created blocks it).
    with ObjectStore(s3_config(sr_env.settings)) as store:
        assert store.create(sr_env.bucket, key, body)


class _EmptyBody:
    """The raw body of the stand-in response botocore gets instead of sending the PUT."""

    def stream(self, **_: Any) -> Any:
        return iter([b""])
