"""The Kafka adapter without a broker: topic creation (exact NewTopic arguments, idempotency,
refusals as one line), the SASL/TLS pass-through reaching every client's configuration, the
partition reader's end-of-slice rules, and ``sr topics create`` on an injected admin client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

import worker.adapters.kafka.admin as admin_module
from worker.adapters.kafka import (
    KafkaConfig,
    KafkaPartitionReader,
    TopicAdmin,
    TopicReader,
    TopicRefusedError,
    TopicSpec,
)
from worker.adapters.kafka.errors import GROUP_MOVED_ON, TRANSIENT_CODES, translate
from worker.cli.main import main
from worker.errors import InputError, KafkaFatalError, KafkaUnavailableError, PermanentError
from worker.runtime.compose import kafka_config
from worker.settings import Settings, load_settings

SASL_ENV = {
    "SR_KAFKA_BOOTSTRAP": "broker-1.example:9093",
    "SR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "SR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "SR_KAFKA_SASL_USERNAME": "sr-admin",
    "SR_KAFKA_SASL_PASSWORD": "sasl-password-value",
    "SR_KAFKA_SSL_CA_LOCATION": "/etc/ssl/certs/ca-certificates.crt",
}
SASL_PROPS = {
    "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "sr-admin",
    "sasl.password": "sasl-password-value", "ssl.ca.location": "/etc/ssl/certs/ca-certificates.crt",
}


@pytest.fixture
def sasl_env(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings read from an environment naming a SASL_SSL cluster (as ``sr`` reads them)."""
    for name, value in SASL_ENV.items():
        monkeypatch.setenv(name, value)
    return load_settings(None, SASL_ENV)


# ----------------------------------------------------------------------------- a fake AdminClient
@dataclass
class _Partition:
    replicas: list[int]


@dataclass
class _Topic:
    partitions: dict[int, _Partition]
    error: KafkaError | None = None


@dataclass
class _Cluster:
    topics: dict[str, _Topic]


def _topic(partitions: int, replication_factor: int) -> _Topic:
    return _Topic({p: _Partition(list(range(1, replication_factor + 1))) for p in range(partitions)})


@dataclass
class FakeAdmin:
    """Answers like a broker: ``answers`` scripts CreateTopics replies per round and topic
    (a KafkaError, or None = create it); ``unreachable`` fails every metadata request."""

    conf: dict[str, Any]
    topics: dict[str, _Topic] = field(default_factory=dict)
    answers: list[dict[str, KafkaError | None]] = field(default_factory=list)
    unreachable: KafkaError | None = None
    client_errors: list[KafkaError] = field(default_factory=list)
    requests: list[list[Any]] = field(default_factory=list)
    create_kwargs: list[dict[str, Any]] = field(default_factory=list)

    def list_topics(self, *args: Any, **kwargs: Any) -> _Cluster:
        if self.unreachable is not None:
            raise KafkaException(self.unreachable)
        return _Cluster(dict(self.topics))

    def create_topics(self, new_topics: list[Any], **kwargs: Any) -> dict[str, Future[Any]]:
        self.requests.append(list(new_topics))
        self.create_kwargs.append(kwargs)
        script = self.answers.pop(0) if self.answers else {}
        futures: dict[str, Future[Any]] = {}
        for nt in new_topics:
            fut: Future[Any] = Future()
            answer = script.get(nt.topic)
            if answer is None:
                if nt.topic in self.topics:
                    fut.set_exception(KafkaException(KafkaError(KafkaError.TOPIC_ALREADY_EXISTS,
                                                                "Topic already exists.")))
                else:
                    self.topics[nt.topic] = _topic(nt.num_partitions, nt.replication_factor)
                    fut.set_result(None)
            else:
                if answer.code() == KafkaError.TOPIC_ALREADY_EXISTS:  # another admin was quicker
                    self.topics[nt.topic] = _topic(nt.num_partitions, nt.replication_factor)
                fut.set_exception(KafkaException(answer))
            futures[nt.topic] = fut
        return futures

    def poll(self, timeout: float = -1) -> int:
        error_cb: Callable[[KafkaError], None] = self.conf["error_cb"]
        for err in self.client_errors:
            error_cb(err)
        self.client_errors = []
        return 0


@pytest.fixture
def fake() -> Iterator[Callable[..., tuple[TopicAdmin, list[FakeAdmin]]]]:
    def _make(config: KafkaConfig | None = None, **state: Any) -> tuple[TopicAdmin, list[FakeAdmin]]:
        made: list[FakeAdmin] = []

        def factory(conf: dict[str, Any]) -> FakeAdmin:
            made.append(FakeAdmin(conf, **state))
            return made[-1]

        return TopicAdmin(config or KafkaConfig(bootstrap="b:9092"), client_factory=factory,
                          retry_interval=0.001), made

    yield _make


# ----------------------------------------------------------------------------- creation
def test_missing_topics_are_created_with_the_exact_partitions_replicas_and_configs(fake: Any) -> None:
    configs = {"cleanup.policy": "delete", "retention.ms": "604800000", "min.insync.replicas": "2"}
    admin, made = fake()
    results = admin.ensure([TopicSpec("sr.ready", 4, 3, configs), TopicSpec("sr.dlq", 1, 3, configs)])
    (request,) = made[0].requests
    assert [(nt.topic, nt.num_partitions, nt.replication_factor, nt.config) for nt in request] == [
        ("sr.ready", 4, 3, configs), ("sr.dlq", 1, 3, configs)]
    assert [(r.name, r.created, r.partitions, r.replication_factor) for r in results] == [
        ("sr.ready", True, 4, 3), ("sr.dlq", True, 1, 3)]
    assert results[0].describe() == "topic sr.ready created (4 partitions, replication factor 3)"
    assert made[0].create_kwargs[0] == {"operation_timeout": 10.0, "request_timeout": 10.0}


def test_existing_topics_are_left_alone_and_reported_as_the_broker_has_them(fake: Any) -> None:
    admin, made = fake(topics={"sr.ready": _topic(8, 1)})
    results = admin.ensure([TopicSpec("sr.ready", 4, 3), TopicSpec("sr.triggers", 4, 3)])
    assert [nt.topic for nt in made[0].requests[0]] == ["sr.triggers"]
    assert results[0].describe() == "topic sr.ready already existed (8 partitions, replication factor 1)"
    assert results[1].created
    # Re-running changes nothing and creates nothing.
    again, made_again = fake(topics=made[0].topics)
    assert [r.created for r in again.ensure([TopicSpec("sr.ready", 4), TopicSpec("sr.triggers", 4)])] == [
        False, False]
    assert made_again[0].requests == []


def test_a_topic_created_meanwhile_counts_as_existing(fake: Any) -> None:
    admin, made = fake(answers=[{"t": KafkaError(KafkaError.TOPIC_ALREADY_EXISTS, "Topic already exists.")}])
    (result,) = admin.ensure([TopicSpec("t", 2)])
    assert not result.created and result.partitions == 2
    assert len(made[0].requests) == 1


@pytest.mark.parametrize(("code", "reason"), [
    (KafkaError.INVALID_REPLICATION_FACTOR, "Replication factor: 3 larger than available brokers: 1."),
    (KafkaError.POLICY_VIOLATION, "Topic replication factor must be 3\nper cluster policy"),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, "Authorization failed."),
    (KafkaError.INVALID_CONFIG, "Invalid value bogus for configuration cleanup.policy"),
])
def test_a_broker_refusal_is_one_line_naming_the_topics_and_the_reason(fake: Any, code: int, reason: str) -> None:
    refusal = KafkaError(code, reason)
    admin, made = fake(topics={"sr.dlq": _topic(1, 1)}, answers=[{"sr.ready": refusal, "sr.triggers": refusal}])
    with pytest.raises(TopicRefusedError) as caught:
        admin.ensure([TopicSpec("sr.ready", 4, 3), TopicSpec("sr.triggers", 4, 3), TopicSpec("sr.dlq", 1, 3)])
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("Kafka refused to create topics sr.ready, sr.triggers: ")
    assert " ".join(reason.split()) in message and refusal.name() in message
    assert caught.value.refusals.keys() == {"sr.ready", "sr.triggers"}
    assert caught.value.existed == ["sr.dlq"] and caught.value.created == []
    assert isinstance(caught.value, KafkaFatalError) and isinstance(caught.value, PermanentError)
    assert caught.value.code == "TOPIC_REFUSED"
    assert len(made[0].requests) == 1  # a refusal is not retried


def test_different_refusals_share_the_line(fake: Any) -> None:
    admin, _ = fake(answers=[{"a": KafkaError(KafkaError.INVALID_PARTITIONS, "bad partitions"),
                              "b": KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied")}])
    expected = (r"^Kafka refused to create topic a: bad partitions \(INVALID_PARTITIONS\); "
                r"topic b: denied \(TOPIC_AUTHORIZATION_FAILED\)$")
    with pytest.raises(TopicRefusedError, match=expected):
        admin.ensure([TopicSpec("a", 1), TopicSpec("b", 1)])


def test_a_transient_create_error_is_retried(fake: Any) -> None:
    admin, made = fake(answers=[{"t": KafkaError(KafkaError.REQUEST_TIMED_OUT, "timed out", retriable=True)}])
    (result,) = admin.ensure([TopicSpec("t", 2, 1)])
    assert result.created and len(made[0].requests) == 2


def test_a_cluster_that_stays_unreachable_is_one_unavailable_line(fake: Any) -> None:
    transport = KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport failure")
    admin, made = fake(unreachable=transport, client_errors=[
        KafkaError(KafkaError._TRANSPORT, "b:9092/bootstrap: Connect to ipv4#10.0.0.1:9092 failed:\nrefused"),
        KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")])
    with pytest.raises(KafkaUnavailableError) as caught:
        admin.ensure([TopicSpec("t", 1)], timeout=0.05)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("cannot reach Kafka at b:9092 within 0s: b:9092/bootstrap: Connect to")
    assert made[0].requests == []


def test_a_refused_sasl_handshake_fails_at_once_without_the_password(fake: Any, sasl_env: Settings) -> None:
    settings = sasl_env
    auth = KafkaError(KafkaError._AUTHENTICATION,
                      "sasl_ssl://broker-1.example:9093/bootstrap: SASL authentication error: "
                      "Authentication failed (user sr-admin, password sasl-password-value)")
    admin, _ = fake(kafka_config(settings), unreachable=KafkaError(KafkaError._TRANSPORT, "down"),
                    client_errors=[auth])
    with pytest.raises(KafkaFatalError) as caught:
        admin.ensure([TopicSpec("t", 1)], timeout=60)
    message = str(caught.value)
    assert message.startswith("Kafka at broker-1.example:9093 refused the connection: sasl_ssl://")
    assert "(_AUTHENTICATION)" in message and "\n" not in message
    assert "sasl-password-value" not in message and "***" in message


@pytest.mark.parametrize("spec", [TopicSpec("", 1), TopicSpec("t", 0), TopicSpec("t", 1, 0)])
def test_invalid_specs_are_refused_before_any_request(fake: Any, spec: TopicSpec) -> None:
    admin, made = fake()
    with pytest.raises(InputError):
        admin.ensure([spec])
    assert made == []


def test_one_name_with_two_settings_is_refused(fake: Any) -> None:
    admin, _ = fake()
    with pytest.raises(InputError, match="twice"):
        admin.ensure([TopicSpec("t", 1), TopicSpec("t", 2)])
    assert [r.name for r in admin.ensure([TopicSpec("t", 1), TopicSpec("t", 1)])] == ["t"]


# ----------------------------------------------------------------------------- SASL/TLS pass-through
def test_sasl_and_tls_settings_reach_the_admin_client(fake: Any, monkeypatch: pytest.MonkeyPatch,
                                                      sasl_env: Settings) -> None:
    monkeypatch.setenv("SR_KAFKA_SOCKET_TIMEOUT_MS", "20000")
    settings = load_settings(None, {**SASL_ENV, "SR_KAFKA_SOCKET_TIMEOUT_MS": "20000"})
    admin, made = fake(kafka_config(settings))
    admin.ensure([TopicSpec("t", 1)])
    conf = made[0].conf
    assert {k: v for k, v in conf.items() if k in SASL_PROPS} == SASL_PROPS
    assert conf["bootstrap.servers"] == "broker-1.example:9093"
    assert conf["socket.timeout.ms"] == "20000"  # the operator's value beats the admin's default


def test_sasl_and_tls_settings_reach_both_readers(sasl_env: Settings) -> None:
    cfg = kafka_config(sasl_env)
    seen: list[dict[str, Any]] = []

    class Capture:
        def __init__(self, conf: dict[str, Any]) -> None:
            seen.append(dict(conf))

        def list_topics(self, *args: Any, **kwargs: Any) -> _Cluster:
            return _Cluster({"t": _topic(2, 1)})

        def assign(self, partitions: list[Any]) -> None:
            return None

        def close(self) -> None:
            return None

    with TopicReader(cfg, ["t"], consumer_factory=Capture):  # type: ignore[arg-type]
        pass
    with pytest.raises(InputError):
        next(KafkaPartitionReader(cfg, consumer_factory=Capture).read_slice("t", 5))  # type: ignore[arg-type]
    assert len(seen) == 2
    for conf in seen:
        assert {k: v for k, v in conf.items() if k in SASL_PROPS} == SASL_PROPS


# ----------------------------------------------------------------------------- the partition reader
class _Msg:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def error(self) -> None:
        return None

    def headers(self) -> list[tuple[str, bytes]]:
        return []

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000 + self._offset)

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v%d" % self._offset


@dataclass
class _Position:
    offset: int


class SliceConsumer:
    """A partition holding ``batches`` of records; reports a fixed (possibly wrong) high watermark."""

    def __init__(self, batches: list[list[int]], high: int) -> None:
        self.batches = list(batches)
        self.high = high
        self.position_at = 0
        self.assigned: list[Any] = []
        self.idle_polls = 0
        self.buffered: list[int] = []

    def __call__(self, conf: dict[str, Any]) -> SliceConsumer:
        return self

    def list_topics(self, *args: Any, **kwargs: Any) -> _Cluster:
        return _Cluster({"t": _topic(1, 1)})

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = partitions

    def _take(self, offsets: list[int]) -> list[_Msg]:
        if offsets:
            self.position_at = offsets[-1] + 1
        return [_Msg(o) for o in offsets]

    def poll(self, timeout: float) -> _Msg | None:
        """A fetch delivers one batch; poll hands out its first record and buffers the rest."""
        if not self.buffered and self.batches:
            self.buffered = self.batches.pop(0)
        if not self.buffered:
            self.idle_polls += 1
            return None
        return self._take([self.buffered.pop(0)])[0]

    def consume(self, num: int, timeout: float) -> list[_Msg]:
        """With timeout 0 (how the reader calls it): only what is buffered."""
        taken, self.buffered = self.buffered[:num], self.buffered[num:]
        return self._take(taken)

    def get_watermark_offsets(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return (0, self.high)

    def position(self, partitions: list[Any]) -> list[_Position]:
        return [_Position(self.position_at)]

    def close(self) -> None:
        return None


def _read(consumer: SliceConsumer, **kwargs: Any) -> list[int]:
    reader = KafkaPartitionReader(KafkaConfig(bootstrap="b"), consumer_factory=consumer)  # type: ignore[arg-type]
    return [r.offset for r in reader.read_slice("t", 0, idle_timeout=0.01, **kwargs)]


def test_the_reader_stops_when_idle_at_the_watermark_even_a_wrong_one() -> None:
    # Tansu reports hwm = 1 after a 10-record batch: the reader must still read everything there.
    consumer = SliceConsumer([list(range(10)), list(range(10, 12))], high=1)
    assert _read(consumer) == list(range(12))
    assert consumer.idle_polls == 1


def test_the_reader_gives_up_after_idle_rounds_when_the_watermark_is_ahead() -> None:
    consumer = SliceConsumer([[0, 1]], high=50)
    assert _read(consumer) == [0, 1]
    assert consumer.idle_polls == 3


def test_the_reader_stops_before_to_offset() -> None:
    assert _read(SliceConsumer([list(range(10))], high=10), to_offset=4) == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- errors
def test_translation_of_transient_and_fatal_codes() -> None:
    assert isinstance(translate(KafkaError(KafkaError._TRANSPORT, "x"), "w"), KafkaUnavailableError)
    assert isinstance(translate(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "x"), "w"), KafkaFatalError)
    assert isinstance(translate(KafkaError(KafkaError.UNKNOWN, "x", retriable=True), "w"), KafkaUnavailableError)
    assert KafkaError.NOT_ENOUGH_REPLICAS in TRANSIENT_CODES and KafkaError.ILLEGAL_GENERATION in GROUP_MOVED_ON


# ----------------------------------------------------------------------------- sr topics create
@pytest.fixture
def cli_admin(monkeypatch: pytest.MonkeyPatch, sasl_env: Settings) -> list[FakeAdmin]:
    made: list[FakeAdmin] = []
    answers: list[dict[str, KafkaError | None]] = []

    def factory(conf: dict[str, Any]) -> FakeAdmin:
        made.append(FakeAdmin(conf, answers=answers))
        return made[-1]

    monkeypatch.setattr(admin_module, "_real_admin_client", factory)
    return made


def test_sr_topics_create_honours_replication_factor_configs_and_sasl(
        cli_admin: list[FakeAdmin], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["topics", "create", "--partitions", "6", "--replication-factor", "3",
                 "--config", "retention.ms=604800000", "min.insync.replicas=2", "--config", "cleanup.policy=delete"])
    out = capsys.readouterr()
    assert code == 0, out.err
    (client,) = cli_admin
    assert {k: v for k, v in client.conf.items() if k in SASL_PROPS} == SASL_PROPS
    want = {"retention.ms": "604800000", "min.insync.replicas": "2", "cleanup.policy": "delete"}
    assert [(nt.topic, nt.num_partitions, nt.replication_factor, nt.config) for nt in client.requests[0]] == [
        ("sr.run-intents", 6, 3, want), ("sr.triggers", 6, 3, want), ("sr.ready", 6, 3, want),
        ("sr.run-status", 6, 3, want), ("sr.engine-requests", 6, 3, want), ("sr.engine-results", 6, 3, want),
        ("sr.dlq", 1, 3, want)]
    assert out.out.splitlines() == [
        "topic sr.run-intents created (6 partitions, replication factor 3)",
        "topic sr.triggers created (6 partitions, replication factor 3)",
        "topic sr.ready created (6 partitions, replication factor 3)",
        "topic sr.run-status created (6 partitions, replication factor 3)",
        "topic sr.engine-requests created (6 partitions, replication factor 3)",
        "topic sr.engine-results created (6 partitions, replication factor 3)",
        "topic sr.dlq created (1 partitions, replication factor 3)",
    ]


def test_sr_topics_create_reports_a_refusal_in_one_line(
        cli_admin: list[FakeAdmin], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    refusal = KafkaError(KafkaError.INVALID_REPLICATION_FACTOR,
                         "Replication factor: 3 larger than available brokers: 1.")

    def refusing(conf: dict[str, Any]) -> FakeAdmin:
        cli_admin.append(FakeAdmin(conf, answers=[{name: refusal for name in (
            "sr.run-intents", "sr.triggers", "sr.ready", "sr.run-status", "sr.dlq")}]))
        return cli_admin[-1]

    monkeypatch.setattr(admin_module, "_real_admin_client", refusing)
    code = main(["topics", "create", "--replication-factor", "3"])
    out = capsys.readouterr()
    assert code == 1  # a permanent refusal (KAFKA_FATAL), not a usage error
    assert out.err == ("sr: error: Kafka refused to create topics sr.run-intents, sr.triggers, sr.ready, "
                       "sr.run-status, sr.dlq: Replication factor: 3 larger than available brokers: 1. "
                       "(INVALID_REPLICATION_FACTOR)\n")


def test_sr_topics_create_refuses_a_malformed_config(cli_admin: list[FakeAdmin],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "create", "--config", "retention.ms"]) == 2
    assert capsys.readouterr().err == "sr: error: --config expects key=value, got 'retention.ms'\n"
    assert cli_admin == []
