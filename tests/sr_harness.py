"""Helpers for whole-flow tests: an isolated SR environment, workers, topic readers, intents."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.servers import Servers, make_topics
from worker.adapters.avro import AvroCodec
from worker.adapters.kafka import EventProducer, KafkaConfig, TopicReader
from worker.app.ports import Record
from worker.core.identity import run_id_of
from worker.core.models import Pins, RunIntent, Strategy
from worker.core.policy import Policy, load_policy
from worker.runtime.worker import Worker, kafka_config
from worker.settings import Settings, Topics, load_settings

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_POLICY = REPO / "schemas" / "policy.example.toml"


@dataclass
class SREnv:
    """One test's isolated SR world: unique topics, database, key prefix and tenant."""

    servers: Servers
    settings: Settings
    tenant: str
    policy_path: Path
    codec: AvroCodec = field(default_factory=AvroCodec)

    @property
    def bucket(self) -> str:
        return self.settings.s3_bucket

    @property
    def policy(self) -> Policy:
        return load_policy(self.policy_path.read_bytes())

    def evidence_root(self, name: str) -> str:
        """A fresh evidence root inside the tenant's default allowed prefix."""
        return f"s3://{self.bucket}/evidence/{self.tenant}/{name}"

    def evidence_prefix(self, name: str) -> str:
        """The key prefix (no bucket) of :meth:`evidence_root`."""
        return f"evidence/{self.tenant}/{name}"

    def env(self) -> dict[str, str]:
        """Environment for an ``sr`` subprocess pointing at this world."""
        t = self.settings.topics
        env = dict(os.environ)
        env.update(self.servers.env())
        env.update({
            "SR_S3_PREFIX": self.settings.s3_prefix,
            "SR_PG_DSN": self.settings.pg_dsn.get_secret_value(),
            "SR_POLICY_FILE": str(self.policy_path),
            "SR_GROUP_ID": self.settings.group_id,
            "SR_TOPICS__INTENTS": t.intents,
            "SR_TOPICS__TRIGGERS": t.triggers,
            "SR_TOPICS__READY": t.ready,
            "SR_TOPICS__STATUS": t.status,
            "SR_TOPICS__DLQ": t.dlq,
            "SR_SESSION_TIMEOUT": "6",
            "PYTHONUNBUFFERED": "1",
        })
        return env


def build_env(servers: Servers, pg_dsn: str, tmp_path: Path, *, partitions: int = 4, **overrides: Any) -> SREnv:
    """Create unique topics and settings for one test."""
    if not (servers.kafka_bootstrap and servers.s3_endpoint):
        raise RuntimeError("servers missing")
    mapping = make_topics(servers.kafka_bootstrap, partitions=partitions)
    suffix = uuid.uuid4().hex[:10]
    policy_path = tmp_path / "policy.toml"
    policy_path.write_bytes(EXAMPLE_POLICY.read_bytes())
    environ = {
        "SR_KAFKA_BOOTSTRAP": servers.kafka_bootstrap,
    }
    settings = load_settings(
        None,
        environ,
        kafka_bootstrap=servers.kafka_bootstrap,
        pg_dsn=pg_dsn,
        s3_endpoint=servers.s3_endpoint,
        s3_bucket=servers.s3_bucket,
        s3_prefix=f"sr-{suffix}",
        s3_region=servers.s3_region,
        aws_access_key_id=servers.s3_access_key,
        aws_secret_access_key=servers.s3_secret_key,
        policy_file=policy_path,
        group_id=f"sr-worker-{suffix}",
        session_timeout=6.0,
        poll_timeout=0.2,
        topics=Topics(
            intents=mapping["sr.run-intents"],
            triggers=mapping["sr.triggers"],
            ready=mapping["sr.ready"],
            status=mapping["sr.run-status"],
            dlq=mapping["sr.dlq"],
        ),
        **overrides,
    )
    return SREnv(servers=servers, settings=settings, tenant=f"tenant{suffix[:6]}", policy_path=policy_path)


class WorkerThread:
    """An in-process worker on a thread (stopped and joined by :meth:`stop`)."""

    def __init__(self, env: SREnv, **overrides: Any) -> None:
        settings = env.settings.model_copy(update=overrides) if overrides else env.settings
        self.outcomes: list[tuple[Record, Any]] = []
        self.worker = Worker(settings, env.policy, on_outcome=lambda r, o: self.outcomes.append((r, o)))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="sr-test-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self, timeout: float = 60.0) -> WorkerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.worker.ready.wait(0.1):
            if self.error is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {self.error!r}")
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError("worker thread did not stop")
        if self.error is not None:
            raise RuntimeError(f"worker failed: {self.error!r}") from self.error


def start_worker_process(env: SREnv, *, extra_env: dict[str, str] | None = None,
                         log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """``sr run`` as a subprocess on this environment."""
    sr = str(Path(sys.executable).parent / "sr")
    proc_env = env.env()
    proc_env.update(extra_env or {})
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    return subprocess.Popen([sr, "run"], env=proc_env, stdout=out, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def read_topic(bootstrap: str, topic: str, *, until: Callable[[list[Record]], bool] | None = None,
               timeout: float = 60.0, settle: float = 0.0) -> list[Record]:
    """Read a topic from the beginning of every partition (no group) until ``until`` holds.

    With ``until=None`` it reads until ``timeout``. After ``until`` holds it keeps reading for
    ``settle`` seconds, so tests can assert nothing *extra* arrived.
    """
    with TopicReader(KafkaConfig(bootstrap=bootstrap), [topic]) as reader:
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        satisfied_at: float | None = None
        while time.monotonic() < deadline:
            records.extend(reader.poll(500, 0.2))
            if until is not None and satisfied_at is None and until(records):
                satisfied_at = time.monotonic()
            if satisfied_at is not None and time.monotonic() - satisfied_at >= settle:
                break
        return records


def produce_raw(env: SREnv, topic: str, items: Iterable[tuple[bytes | None, bytes]]) -> None:
    """Produce raw (key, value) pairs and wait for all acks."""
    with EventProducer(kafka_config(env.settings)) as producer:
        futures = [producer.send(topic, key=k, value=v) for k, v in items]
        for fut in futures:
            fut.result(60)


def submit(env: SREnv, intents: Iterable[RunIntent], *, key: Callable[[RunIntent], bytes] | None = None) -> None:
    """Publish intents (Avro single-object encoding) to the env's intents topic."""
    produce_raw(env, env.settings.topics.intents,
                [((key(i) if key else run_id_of(i).encode()), env.codec.encode_intent(i)) for i in intents])


_BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def make_intent(env: SREnv, name: str, *, outputs: tuple[str, ...] = ("transactions",), seed: int = 1,
                evidence_root: str | None = None, deadline: datetime | None = None,
                tenant: str | None = None, **changes: Any) -> RunIntent:
    """A valid intent whose evidence lives under ``env.evidence_root(name)``."""
    intent = RunIntent(
        request_id=f"req-{name}",
        tenant_id=tenant or env.tenant,
        namespace="payments",
        scenario_id=f"scn-{name}",
        pins=Pins(manifest_fingerprint="a" * 64, parameter_hash="b" * 64, seed=seed),
        window_start=_BASE_TIME,
        window_end=_BASE_TIME + timedelta(days=1),
        output_ids=outputs,
        strategy=Strategy.AUTO,
        evidence_root=evidence_root or env.evidence_root(name),
        deadline=deadline,
        submitted_at=datetime.now(UTC),
        submitted_by="tests",
    )
    return replace_intent(intent, **changes) if changes else intent


def replace_intent(intent: RunIntent, **changes: Any) -> RunIntent:
    """A copy of ``intent`` with fields changed (re-validated)."""
    data = intent.model_dump()
    data.update(changes)
    return RunIntent.model_validate(data)


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()

