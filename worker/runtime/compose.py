"""The composition root: the one place that turns :class:`~worker.settings.Settings` into
adapters and application services, for the worker and for every CLI command.

What each caller gets:

* :func:`open_worker_services` (``sr run``; tests and bench as :func:`open_services`):
  applies the database migrations (unless ``migrate_db=False``), opens every client and
  builds the full :class:`~worker.app.processor.RunProcessor` under the gate policy.
* :func:`open_operator_services` (``sr reemit``, ``sr replay``, ``sr index rebuild``): never
  migrates and needs no policy file; the producer is opened only for commands that send, and
  the lease pool connects only if a lease is taken (operator commands take none).
* :func:`run_index`, :func:`object_store`, :func:`event_producer`, :func:`topic_admin`,
  :func:`partition_reader`, :func:`group_consumer`: one client for commands that need only that
  one (``sr runs``, ``sr status``, ``sr trigger``, ``sr runpack``, ``sr topics create``,
  ``sr replay``, ``sr engine simulate``);
  :func:`migrate_database` for ``sr db migrate``, the only migrating command besides ``sr run``.
* :func:`kafka_config`, :func:`s3_config`, :func:`pg_config`, :func:`make_codec`,
  :func:`load_policy_file`: settings → adapter configuration, no I/O.

:func:`build_processor` is the only call of the ``RunProcessor`` constructor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from worker.adapters.avro import AvroCodec, ConfluentSchemaRegistry, RegistryConfig
from worker.adapters.kafka import (
    EventProducer,
    IntakeConsumer,
    KafkaConfig,
    KafkaPartitionReader,
    RebalanceHook,
    TopicAdmin,
)
from worker.adapters.postgres import PgConfig, RoundTripCounter, RunIndex, migrate
from worker.adapters.postgres.leases import LeaseManager
from worker.adapters.s3 import ObjectStore, S3Config
from worker.app.authentication import InputAuthority
from worker.app.crashpoints import CrashPoints
from worker.app.ports import PartitionReader
from worker.app.processor import OutputTopics, RunProcessor
from worker.app.publisher import Publisher
from worker.app.truth import TruthStore
from worker.app.verifier import EvidenceVerifier
from worker.core.attempts import EngineBudget
from worker.core.policy import Policy, load_policy
from worker.core.signatures import KeyRing
from worker.errors import ConfigError
from worker.runtime.metrics import Metrics
from worker.settings import Settings
from worker.signing import load_key_ring

__all__ = [
    "Services",
    "build_processor",
    "event_producer",
    "group_consumer",
    "input_authority",
    "kafka_config",
    "load_policy_file",
    "make_codec",
    "migrate_database",
    "object_store",
    "open_operator_services",
    "open_services",
    "open_worker_services",
    "partition_reader",
    "pg_config",
    "run_index",
    "s3_config",
    "topic_admin",
]


# --------------------------------------------------------------------------- configuration
def load_policy_file(path: Path | None) -> Policy:
    """Read and parse the gate policy.

    Raises:
        ConfigError: no policy configured or unreadable.
        PolicyError: the policy is invalid.
    """
    if path is None:
        raise ConfigError("no policy configured: set SR_POLICY_FILE (see schemas/policy.example.toml)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc}") from exc
    return load_policy(data)


def default_client_id() -> str:
    """``sr-<hostname>``: which host a connection comes from, in the broker's logs and quotas."""
    import socket

    return f"sr-{socket.gethostname()}"[:200]


def kafka_config(settings: Settings) -> KafkaConfig:
    """The Kafka client settings derived from SR's settings."""
    return KafkaConfig(
        bootstrap=settings.kafka_bootstrap,
        client_id=settings.client_id or default_client_id(),
        group_instance_id=settings.group_instance_id,
        client_extra=settings.kafka_client_config(),
        session_timeout=settings.session_timeout,
        max_message_bytes=max(settings.max_message_bytes * 4, 16 * 1024 * 1024),
    )


def s3_config(settings: Settings) -> S3Config:
    """The object-store settings derived from SR's settings.

    Static keys travel with their session token; without keys (and without a region) the
    adapter resolves them from the SDK's default chain when the store opens.
    """
    return S3Config(
        endpoint_url=settings.s3_endpoint,
        region=settings.s3_region,
        access_key_id=settings.aws_access_key_id,
        secret_access_key=settings.aws_secret_access_key,
        session_token=settings.aws_session_token,
        max_pool_connections=settings.s3_max_pool_connections,
        client_library=settings.s3_client_library,
        sse=settings.s3_sse,
        sse_kms_key_id=settings.s3_sse_kms_key_id,
    )


def pg_config(settings: Settings) -> PgConfig:
    """The Postgres settings derived from SR's settings."""
    return PgConfig(dsn=settings.pg_conninfo(), pool_size=settings.pg_pool_size)


def make_codec(settings: Settings) -> AvroCodec:
    """The Avro codec: single-object encoding, or the Confluent wire format with a registry.

    Its ``max_message_bytes`` is ``settings.max_message_bytes``: the one size cap on consumed
    intents and triggers (decoding a larger value raises ``MessageTooLargeError``, which the
    worker dead-letters).

    With ``SR_SCHEMA_REGISTRY_URL`` set the registry is confluent-kafka's client, built here from
    the ``SR_SCHEMA_REGISTRY_*`` settings; it sends nothing until a frame needs it.

    Raises:
        ConfigError: contradictory registry settings or unloadable TLS files.
    """
    registry = None
    if settings.schema_registry_url:
        registry = ConfluentSchemaRegistry(RegistryConfig(
            url=settings.schema_registry_url,
            basic_auth_user_info=settings.schema_registry_basic_auth_user_info,
            bearer_token=settings.schema_registry_bearer_token,
            bearer_logical_cluster=settings.schema_registry_bearer_logical_cluster,
            ca_location=settings.schema_registry_ca_location,
            certificate_location=settings.schema_registry_certificate_location,
            key_location=settings.schema_registry_key_location,
            key_password=settings.schema_registry_key_password,
            timeout=settings.schema_registry_timeout,
            auto_register=settings.schema_registry_auto_register,
        ))
    return AvroCodec(registry=registry, max_message_bytes=settings.max_message_bytes)


# --------------------------------------------------------------------------- single clients
def run_index(settings: Settings, counter: RoundTripCounter | None = None) -> RunIndex:
    """An unopened run index (``with run_index(s) as index``); never migrates."""
    return RunIndex(pg_config(settings), counter if counter is not None else RoundTripCounter())


def object_store(settings: Settings, *, on_request: Callable[[str, float, bool], None] | None = None) -> ObjectStore:
    """An unopened object store (``with object_store(s) as store``)."""
    return ObjectStore(s3_config(settings), on_request=on_request)


def event_producer(settings: Settings) -> EventProducer:
    """An unopened producer (``with event_producer(s) as producer``); it refuses to send unopened."""
    return EventProducer(kafka_config(settings))


def migrate_database(settings: Settings) -> list[str]:
    """Apply pending SQL migrations (``sr db migrate``, the worker at start); returns those applied.

    Raises:
        PostgresUnavailableError / MigrationError: as :func:`worker.adapters.postgres.migrate`.
    """
    return migrate(settings.pg_conninfo().get_secret_value())


def topic_admin(settings: Settings) -> TopicAdmin:
    """Topic administration with the worker's Kafka settings (``SR_KAFKA_*`` SASL/TLS included)."""
    return TopicAdmin(kafka_config(settings))


def partition_reader(settings: Settings) -> PartitionReader:
    """A reader of partition slices (``sr replay``); it joins no consumer group."""
    return KafkaPartitionReader(kafka_config(settings))


def group_consumer(settings: Settings, *, group_id: str, topics: Sequence[str],
                   on_revoke: RebalanceHook | None = None, on_lost: RebalanceHook | None = None) -> IntakeConsumer:
    """An unentered group consumer over ``topics`` (``with group_consumer(...) as consumer``).

    Manual offset storage and explicit commits, like the worker's; ``sr engine simulate`` reads
    the engine requests with it.
    """
    return IntakeConsumer(kafka_config(settings), group_id=group_id, topics=topics,
                          on_revoke=on_revoke, on_lost=on_lost)


# --------------------------------------------------------------------------- services
@dataclass
class Services:
    """The open clients and the processor a command runs on."""

    settings: Settings
    codec: AvroCodec
    store: ObjectStore
    index: RunIndex
    leases: LeaseManager
    producer: EventProducer
    processor: RunProcessor
    pg_counter: RoundTripCounter
    crash: CrashPoints
    truth: TruthStore




def build_processor(settings: Settings, *, policy: Policy | None, codec: AvroCodec, index: RunIndex,
                    leases: LeaseManager, truth: TruthStore, verifier: EvidenceVerifier,
                    producer: EventProducer, crash: CrashPoints, metrics: Metrics | None) -> RunProcessor:
    """The one construction of a :class:`RunProcessor` from settings and open clients.

    Args:
        policy: the gate policy; ``None`` for commands that never plan (planning then raises
            ``ConfigError``).
        metrics: where transitions, publications, DLQ writes and verified bytes are counted.
    """
    return RunProcessor(
        policy=policy,
        codec=codec,
        index=index,
        leases=leases,
        truth=truth,
        verifier=verifier,
        publisher=Publisher(producer, index, dlq_topic=settings.topics.dlq, crash_points=crash,
                            on_fact_published=metrics.ready_published if metrics is not None else None,
                            on_ready_latency=metrics.ready_latency if metrics is not None else None),
        topics=OutputTopics(ready=settings.topics.ready, status=settings.topics.status,
                            engine_requests=settings.topics.engine_requests),
        engine=EngineBudget.from_seconds(attempt_timeout=settings.engine_attempt_timeout,
                                         retry_backoff=settings.engine_retry_backoff,
                                         max_attempts=settings.engine_max_attempts),
        s3_bucket=settings.s3_bucket,
        tenant_prefixes=settings.tenant_evidence_prefixes,
        recheck_interval=settings.recheck_interval,
        lease_wait=settings.lease_wait,
        crash_points=crash,
        observer=metrics,
        authority=input_authority(settings),
    )


def input_authority(settings: Settings) -> InputAuthority:
    """The key sets and RETRY allowlist of the settings (contract §10), parsed once.

    Raises:
        ConfigError: a key set is unreadable or invalid (named by its variable).
    """
    def ring(spec: str | None, name: str) -> KeyRing | None:
        return None if spec is None or not spec.strip() else load_key_ring(spec, name=name)

    return InputAuthority(
        tenants=ring(settings.signing_keys, "SR_SIGNING_KEYS"),
        operators=ring(settings.operator_keys, "SR_OPERATOR_KEYS"),
        engines=ring(settings.engine_keys, "SR_ENGINE_KEYS"),
        operator_allowlist=frozenset(settings.operators),
    )


def _open(stack: ExitStack, settings: Settings, *, policy: Policy | None, metrics: Metrics | None,
          open_producer: bool, open_leases: bool) -> Services:
    """Open the clients on ``stack`` in dependency order (closed in reverse) and build the processor."""
    codec = make_codec(settings)
    counter = RoundTripCounter(on_query=metrics.observe_pg if metrics is not None else None)
    crash = CrashPoints(settings.test_crash_point, settings.test_crash_after)
    store = stack.enter_context(object_store(settings,
                                             on_request=metrics.observe_s3 if metrics is not None else None))
    index = stack.enter_context(run_index(settings, counter))
    leases = LeaseManager(pg_config(settings), counter)
    if open_leases:
        stack.enter_context(leases)
    else:
        stack.callback(leases.close)  # connects lazily on a first lease; closed either way
    # An unopened producer refuses every send (KafkaFatalError): commands that promise not to
    # send cannot send by mistake.
    producer = stack.enter_context(event_producer(settings)) if open_producer else event_producer(settings)
    verifier = EvidenceVerifier(store, max_meta_bytes=settings.max_meta_bytes,
                                max_member_bytes=settings.max_member_bytes,
                                concurrency=settings.verify_concurrency)
    stack.callback(verifier.close)
    truth = TruthStore(store, settings.s3_bucket, settings.s3_prefix)
    processor = build_processor(settings, policy=policy, codec=codec, index=index, leases=leases, truth=truth,
                                verifier=verifier, producer=producer, crash=crash, metrics=metrics)
    return Services(settings, codec, store, index, leases, producer, processor, counter, crash, truth)


@contextmanager
def open_worker_services(settings: Settings, policy: Policy, *, migrate_db: bool = True,
                         metrics: Metrics | None = None) -> Iterator[Services]:
    """Everything the worker runs on: migrate, open every client, build the processor.

    With ``metrics``, S3 and Postgres latencies, transitions, publications, DLQ writes and
    verified evidence bytes are recorded there.

    Raises:
        MigrationError / PostgresError / PostgresUnavailableError: migrating failed.
        SRError: a client could not be opened.
    """
    if migrate_db:
        migrate_database(settings)
    with ExitStack() as stack:
        yield _open(stack, settings, policy=policy, metrics=metrics, open_producer=True, open_leases=True)


#: The worker's builder under its old name (tests and bench call it).
open_services = open_worker_services


@contextmanager
def open_operator_services(settings: Settings, *, policy: Policy | None = None,
                           need_producer: bool = True) -> Iterator[Services]:
    """What operator commands run on: never migrates, needs no policy file.

    Args:
        policy: only for a command that plans (none does today); without it planning raises
            ``ConfigError``.
        need_producer: False for commands that never send (``--dry-run``, ``index rebuild``):
            no Kafka client is opened and any send raises ``KafkaFatalError``.

    Raises:
        SRError: a client could not be opened (an unmigrated database fails at its first
            statement: run ``sr db migrate``).
    """
    with ExitStack() as stack:
        yield _open(stack, settings, policy=policy, metrics=None, open_producer=need_producer, open_leases=False)
