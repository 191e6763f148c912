"""Topic administration: create SR's topics with their partitions, replicas and topic configs.

:class:`TopicAdmin` is what ``sr topics create`` and the embedded dev stack use. It builds its
client from the same :class:`~worker.adapters.kafka.config.KafkaConfig` as the worker, so the
``SR_KAFKA_*`` SASL/TLS settings apply to it too. Creation is idempotent: a topic that already
exists is left as it is and reported as such (with the partition count and replication factor
the broker reports for it).

Failures come back as one line each:

* a broker refusal (replication factor larger than the cluster, a policy violation, missing
  authorization, an invalid topic config) → :class:`~worker.adapters.kafka.errors.TopicRefusedError`
  naming each refused topic and the broker's reason;
* a rejected SASL handshake or authentication → :class:`~worker.errors.KafkaFatalError` with
  the client's reason, at once (retrying cannot fix credentials);
* an unreachable or slow cluster → :class:`~worker.errors.KafkaUnavailableError` once the
  overall timeout has passed.

librdkafka's own log lines go to the ``sr.librdkafka`` logger (every SR client's, see
:mod:`worker.adapters.kafka.config`) instead of stderr; one-shot commands keep it quiet, so
a command's output is its result lines plus at most one error line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from worker.adapters.kafka.config import KafkaConfig, to_ms
from worker.adapters.kafka.errors import TopicRefusedError, describe, is_transient, translate_exception
from worker.errors import InputError, KafkaFatalError, KafkaUnavailableError

__all__ = [
    "AdminClientFactory",
    "AdminClientLike",
    "TopicAdmin",
    "TopicResult",
    "TopicSpec",
]


#: Client errors that mean "these credentials/this handshake will not be accepted": not retried.
_AUTH_FAILURES = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL})


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: ``partitions`` ≥ 1, ``replication_factor`` ≥ 1 (replicas per
    partition) and topic-level ``config`` (e.g. ``cleanup.policy``, ``retention.ms``,
    ``min.insync.replicas``) passed to the broker as given."""

    name: str
    partitions: int
    replication_factor: int = 1
    config: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class TopicResult:
    """What :meth:`TopicAdmin.ensure` did for one topic, with the broker's view of it."""

    name: str
    created: bool
    partitions: int
    replication_factor: int

    def describe(self) -> str:
        """One line for operators, e.g. ``topic sr.ready created (4 partitions, replication factor 3)``."""
        verb = "created" if self.created else "already existed"
        return (f"topic {self.name} {verb} ({self.partitions} partitions, "
                f"replication factor {self.replication_factor})")


class _PartitionMetadata(Protocol):
    @property
    def replicas(self) -> Sequence[int]: ...


class _TopicMetadata(Protocol):
    @property
    def error(self) -> KafkaError | None: ...

    @property
    def partitions(self) -> Mapping[int, _PartitionMetadata]: ...


class _ClusterMetadata(Protocol):
    @property
    def topics(self) -> Mapping[str, _TopicMetadata]: ...


class AdminClientLike(Protocol):
    """The part of :class:`confluent_kafka.admin.AdminClient` the topic admin uses (fakes implement it)."""

    def list_topics(self, *args: Any, **kwargs: Any) -> _ClusterMetadata: ...

    def create_topics(self, new_topics: list[NewTopic], **kwargs: Any) -> dict[str, Future[Any]]: ...

    def poll(self, timeout: float = -1) -> int: ...


#: Builds an admin client from a librdkafka property dict (``AdminClient`` unless a test injects one).
AdminClientFactory = Callable[[dict[str, Any]], AdminClientLike]


def _real_admin_client(conf: dict[str, Any]) -> AdminClientLike:
    """An :class:`AdminClient`.

    Raises:
        KafkaFatalError: librdkafka refused the configuration (unknown or invalid property).
    """
    try:
        client: AdminClientLike = AdminClient(conf)
    except KafkaException as exc:
        raise translate_exception(exc, "cannot create the Kafka admin client") from exc
    except (TypeError, ValueError) as exc:
        raise KafkaFatalError(f"cannot create the Kafka admin client: {exc}") from exc
    return client


class TopicAdmin:
    """Creates topics idempotently on the cluster ``config`` points at.

    No I/O in ``__init__``. ``request_timeout`` (seconds) bounds each broker request;
    ``client_factory`` replaces the real :class:`AdminClient` (tests).
    """

    def __init__(self, config: KafkaConfig, *, client_factory: AdminClientFactory | None = None,
                 request_timeout: float = 10.0, retry_interval: float = 0.2) -> None:
        self._config = config
        self._factory = client_factory or _real_admin_client
        self._request_timeout = request_timeout
        self._retry_interval = retry_interval

    def client_conf(self, errors: list[KafkaError]) -> dict[str, Any]:
        """The librdkafka properties of the admin client; client errors are appended to ``errors``."""
        return self._config.client_conf({
            "socket.timeout.ms": to_ms(self._request_timeout),
            "error_cb": errors.append,
        })

    def ensure(self, specs: Iterable[TopicSpec], *, timeout: float = 30.0) -> list[TopicResult]:
        """Create every topic of ``specs`` that does not exist yet; wait (up to ``timeout``
        seconds in all) until the cluster's metadata shows each of them.

        Returns one :class:`TopicResult` per spec, in order. Existing topics are not changed.

        Raises:
            InputError: a spec is invalid (empty name, partitions or replication factor < 1,
                one name asked for twice with different settings).
            TopicRefusedError: the broker refused to create at least one topic.
            KafkaFatalError: the client was refused at connection (SASL/TLS) or misconfigured.
            KafkaUnavailableError: the cluster did not answer, or not create them, in time.
        """
        wanted = _validated(specs)
        if not wanted:
            return []
        errors: list[KafkaError] = []
        client = self._factory(self.client_conf(errors))
        deadline = time.monotonic() + timeout
        existing = self._healthy_topics(client, errors, deadline, timeout)
        existed = [spec.name for spec in wanted if spec.name in existing]
        created: list[str] = []
        missing = [spec for spec in wanted if spec.name not in existing]
        while missing:
            outcome = self._create(client, missing)
            refusals: dict[str, str] = {}
            retry: list[TopicSpec] = []
            for spec in missing:
                err = outcome[spec.name]
                if err is None:
                    created.append(spec.name)
                elif err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    existed.append(spec.name)  # created meanwhile (another admin, or a retried request)
                elif is_transient(err):
                    retry.append(spec)
                else:
                    refusals[spec.name] = self._config.redact(describe(err))
            if refusals:
                raise TopicRefusedError(refusals, created=created, existed=existed)
            missing = retry
            if missing:
                if time.monotonic() >= deadline:
                    last = outcome[missing[-1].name]
                    reason = describe(last) if last is not None else "no answer"
                    raise KafkaUnavailableError(self._config.redact(
                        f"Kafka at {self._config.bootstrap} did not create {_names(missing)} "
                        f"within {timeout:.0f}s: {reason}"))
                time.sleep(self._retry_interval)
        visible = self._await_visible(client, errors, [spec.name for spec in wanted], deadline, timeout)
        results: list[TopicResult] = []
        for spec in wanted:
            meta = visible[spec.name]
            replicas = [len(p.replicas) for p in meta.partitions.values()]
            results.append(TopicResult(spec.name, spec.name in created, len(meta.partitions),
                                       max(replicas, default=0)))
        return results

    # ------------------------------------------------------------------ internals
    def _create(self, client: AdminClientLike, specs: Sequence[TopicSpec]) -> dict[str, KafkaError | None]:
        """One CreateTopics request; per topic None (created) or the broker's/client's error."""
        new_topics = [NewTopic(spec.name, num_partitions=spec.partitions,
                               replication_factor=spec.replication_factor, config=dict(spec.config))
                      for spec in specs]
        try:
            futures = client.create_topics(new_topics, operation_timeout=self._request_timeout,
                                           request_timeout=self._request_timeout)
        except KafkaException as exc:
            refused = translate_exception(exc, f"create {_names(specs)} refused by the client")
            raise type(refused)(self._config.redact(str(refused))) from exc
        outcome: dict[str, KafkaError | None] = {}
        for spec in specs:
            fut = futures.get(spec.name)
            if fut is None:
                outcome[spec.name] = KafkaError(KafkaError._TIMED_OUT, "no answer for this topic")
                continue
            try:
                fut.result(timeout=self._request_timeout + 5.0)
                outcome[spec.name] = None
            except KafkaException as exc:
                first = exc.args[0] if exc.args else None
                outcome[spec.name] = first if isinstance(first, KafkaError) else KafkaError(
                    KafkaError._FAIL, str(exc))
            except FutureTimeout:
                outcome[spec.name] = KafkaError(KafkaError._TIMED_OUT, "no answer to CreateTopics")
        return outcome

    def _healthy_topics(self, client: AdminClientLike, errors: list[KafkaError], deadline: float,
                        timeout: float) -> dict[str, _TopicMetadata]:
        """Every topic the cluster's metadata shows without an error, retried until ``deadline``."""
        while True:
            try:
                md = client.list_topics(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            except KafkaException as exc:
                client.poll(0)  # serves error_cb: the reason the metadata request failed
                self._raise_if_refused(errors)
                if time.monotonic() >= deadline:
                    raise KafkaUnavailableError(self._config.redact(
                        f"cannot reach Kafka at {self._config.bootstrap} within {timeout:.0f}s: "
                        f"{_reason(errors, exc)}")) from exc
                time.sleep(self._retry_interval)
                continue
            return {name: meta for name, meta in md.topics.items() if meta.error is None}

    def _await_visible(self, client: AdminClientLike, errors: list[KafkaError], names: Sequence[str],
                       deadline: float, timeout: float) -> dict[str, _TopicMetadata]:
        """Metadata of ``names`` once all of them show up healthy (created topics propagate)."""
        while True:
            healthy = self._healthy_topics(client, errors, deadline, timeout)
            absent = [name for name in names if name not in healthy]
            if not absent:
                return healthy
            if time.monotonic() >= deadline:
                raise KafkaUnavailableError(
                    f"Kafka at {self._config.bootstrap} created {', '.join(absent)} but its metadata "
                    f"did not show them within {timeout:.0f}s")
            time.sleep(self._retry_interval)

    def _raise_if_refused(self, errors: Sequence[KafkaError]) -> None:
        for err in errors:
            if err.code() in _AUTH_FAILURES:
                raise KafkaFatalError(self._config.redact(
                    f"Kafka at {self._config.bootstrap} refused the connection: {describe(err)}"))


def _validated(specs: Iterable[TopicSpec]) -> list[TopicSpec]:
    """``specs`` without repeats, each checked.

    Raises:
        InputError: see :meth:`TopicAdmin.ensure`.
    """
    seen: dict[str, TopicSpec] = {}
    for spec in specs:
        if not spec.name:
            raise InputError("a topic name must not be empty")
        if spec.partitions < 1:
            raise InputError(f"topic {spec.name}: partitions must be at least 1, got {spec.partitions}")
        if spec.replication_factor < 1:
            raise InputError(
                f"topic {spec.name}: replication factor must be at least 1, got {spec.replication_factor}")
        previous = seen.get(spec.name)
        if previous is not None and (previous.partitions, previous.replication_factor, dict(previous.config)) != (
                spec.partitions, spec.replication_factor, dict(spec.config)):
            raise InputError(f"topic {spec.name} is asked for twice with different settings")
        seen.setdefault(spec.name, spec)
    return list(seen.values())


def _names(specs: Sequence[TopicSpec]) -> str:
    return ("topic " if len(specs) == 1 else "topics ") + ", ".join(spec.name for spec in specs)


def _reason(errors: Sequence[KafkaError], exc: KafkaException) -> str:
    """The most specific reason known: the last client error that names a broker, else ``exc``."""
    for err in reversed(errors):
        if err.code() != KafkaError._ALL_BROKERS_DOWN:
            return describe(err)
    first = exc.args[0] if exc.args else None
    return describe(first) if isinstance(first, KafkaError) else str(exc)
