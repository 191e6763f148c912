"""One test's isolated SR world on the shared servers: topics, database, key prefix, tenant, intents."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.harness.paths import EXAMPLE_POLICY
from tests.harness.servers import Servers
from worker.adapters.avro import AvroCodec
from worker.adapters.kafka import TopicSpec
from worker.core.models import Pins, RunIntent, Strategy
from worker.core.policy import Policy, load_policy
from worker.embedded.stack import DEFAULT_TOPICS, create_topics
from worker.settings import Settings, Topics, load_settings

__all__ = [
    "SREnv",
    "build_env",
    "dsn_for_db",
    "make_intent",
    "make_topics",
    "replace_intent",
    "worker_environ",
]

def dsn_for_db(server_dsn: str, dbname: str) -> str:
    """``server_dsn`` with its database replaced by ``dbname``."""
    import psycopg.conninfo

    params = psycopg.conninfo.conninfo_to_dict(server_dsn)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo("", **{k: str(v) for k, v in params.items() if v is not None})


def make_topics(bootstrap: str, partitions: int = 4, names: tuple[str, ...] | None = None) -> dict[str, str]:
    """Create a unique set of SR topics (the DLQ with one partition); logical name -> unique name."""
    suffix = uuid.uuid4().hex[:10]
    logical = names or tuple(t.name for t in DEFAULT_TOPICS)
    mapping = {name: f"{name}.{suffix}" for name in logical}
    create_topics(bootstrap, [TopicSpec(real, 1 if name == "sr.dlq" else partitions)
                              for name, real in mapping.items()])
    return mapping


def worker_environ(servers: Servers, *, pg_dsn: str, s3_prefix: str, policy_path: Path, group_id: str,
                   topics: Topics) -> dict[str, str]:
    """The ``SR_*`` variables of an ``sr run`` on one isolated world (the caller adds the base)."""
    env = servers.env()
    env.update({
        "SR_S3_PREFIX": s3_prefix,
        "SR_PG_DSN": pg_dsn,
        "SR_POLICY_FILE": str(policy_path),
        "SR_GROUP_ID": group_id,
        "SR_TOPICS__INTENTS": topics.intents,
        "SR_TOPICS__TRIGGERS": topics.triggers,
        "SR_TOPICS__READY": topics.ready,
        "SR_TOPICS__STATUS": topics.status,
        "SR_TOPICS__DLQ": topics.dlq,
        "SR_TOPICS__ENGINE_REQUESTS": topics.engine_requests,
        "SR_TOPICS__ENGINE_RESULTS": topics.engine_results,
        "SR_SESSION_TIMEOUT": "6",
        "PYTHONUNBUFFERED": "1",
    })
    return env


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
        """The bucket SR writes truth (and the tests evidence) to."""
        return self.settings.s3_bucket

    @property
    def policy(self) -> Policy:
        """The world's policy (a copy of the example policy)."""
        return load_policy(self.policy_path.read_bytes())

    def evidence_root(self, name: str) -> str:
        """A fresh evidence root inside the tenant's default allowed prefix."""
        return f"s3://{self.bucket}/evidence/{self.tenant}/{name}"

    def evidence_prefix(self, name: str) -> str:
        """The key prefix (no bucket) of :meth:`evidence_root`."""
        return f"evidence/{self.tenant}/{name}"

    def env(self) -> dict[str, str]:
        """Environment for an ``sr`` subprocess pointing at this world (on top of ``os.environ``)."""
        env = dict(os.environ)
        env.update(worker_environ(self.servers, pg_dsn=self.settings.pg_conninfo().get_secret_value(),
                                  s3_prefix=self.settings.s3_prefix, policy_path=self.policy_path,
                                  group_id=self.settings.group_id, topics=self.settings.topics))
        return env


def build_env(servers: Servers, pg_dsn: str, tmp_path: Path, *, partitions: int = 4, policy: bytes | None = None,
              **overrides: Any) -> SREnv:
    """Create unique topics and settings for one test (``overrides`` go to the settings).

    ``policy`` is the gate policy's TOML (default: the example policy, whose gate_6B is scoped;
    :func:`~tests.harness.paths.shared_evidence_policy` for runs that share one evidence root).

    Raises:
        ServerUnavailable: Kafka or S3 is missing.
    """
    bootstrap = servers.require_kafka()
    s3_endpoint = servers.require_s3()
    mapping = make_topics(bootstrap, partitions=partitions)
    suffix = uuid.uuid4().hex[:10]
    policy_path = tmp_path / "policy.toml"
    policy_path.write_bytes(policy if policy is not None else EXAMPLE_POLICY.read_bytes())
    settings = load_settings(
        None,
        {"SR_KAFKA_BOOTSTRAP": bootstrap},
        kafka_bootstrap=bootstrap,
        pg_dsn=pg_dsn,
        s3_endpoint=s3_endpoint,
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
            engine_requests=mapping["sr.engine-requests"],
            engine_results=mapping["sr.engine-results"],
        ),
        **overrides,
    )
    return SREnv(servers=servers, settings=settings, tenant=f"tenant{suffix[:6]}", policy_path=policy_path)


_BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def make_intent(env: SREnv, name: str, *, outputs: tuple[str, ...] = ("transactions",), seed: int = 1,
                evidence_root: str | None = None, deadline: datetime | None = None,
                tenant: str | None = None, **changes: Any) -> RunIntent:
    """A valid intent whose evidence lives under ``env.evidence_root(name)``.

    Strategy REUSE (verify what exists, never request engine work) unless ``strategy=`` says
    otherwise: most tests are about verification; the engine-path tests ask for AUTO / INVOKE.
    """
    intent = RunIntent(
        request_id=f"req-{name}",
        tenant_id=tenant or env.tenant,
        namespace="payments",
        scenario_id=f"scn-{name}",
        pins=Pins(manifest_fingerprint="a" * 64, parameter_hash="b" * 64, seed=seed),
        window_start=_BASE_TIME,
        window_end=_BASE_TIME + timedelta(days=1),
        output_ids=outputs,
        strategy=Strategy.REUSE,
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
