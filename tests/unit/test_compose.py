"""The composition root: what each command gets, without servers.

The adapters that would connect (run index, object store, lease pool) are replaced by
recorders in ``worker.runtime.compose``; ``migrate`` is a spy. The producer is the real one,
left unopened, so "this command never sends" is checked against the real refusal.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace, TracebackType
from typing import Any, ClassVar

import pytest

from tests.unit.conftest import make_intent
from worker.adapters.avro import SINGLE_OBJECT_MAGIC, AvroCodec
from worker.app import operators
from worker.app.operators import RebuildSummary, ReplaySummary
from worker.cli.main import main
from worker.core.models import RunTrigger, TriggerKind
from worker.core.policy import Policy
from worker.errors import DecodeError, KafkaFatalError, MessageTooLargeError
from worker.runtime import compose
from worker.settings import Settings


class _Client:
    """Records how a client was used: constructed, entered, closed."""

    instances: ClassVar[list[_Client]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs
        self.entered = self.closed = False
        type(self).instances.append(self)

    def __enter__(self) -> _Client:
        self.entered = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True


class _Store(_Client):
    instances: ClassVar[list[_Client]] = []
    counter = SimpleNamespace(snapshot=dict)


class _Index(_Client):
    instances: ClassVar[list[_Client]] = []


class _Leases(_Client):
    instances: ClassVar[list[_Client]] = []


@pytest.fixture
def migrations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``migrate`` call the composition root makes (nothing is applied)."""
    calls: list[str] = []

    def migrate(dsn: str, **_: Any) -> list[str]:
        calls.append(dsn)
        return []

    monkeypatch.setattr(compose, "migrate", migrate)
    return calls


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, migrations: list[str]) -> SimpleNamespace:
    """Clients that never connect, and the RunProcessor constructor's arguments."""
    for fake in (_Store, _Index, _Leases):
        fake.instances = []
    monkeypatch.setattr(compose, "ObjectStore", _Store)
    monkeypatch.setattr(compose, "RunIndex", _Index)
    monkeypatch.setattr(compose, "LeaseManager", _Leases)
    built: list[dict[str, Any]] = []

    def processor(**kwargs: Any) -> SimpleNamespace:
        built.append(kwargs)
        return SimpleNamespace(**kwargs)

    monkeypatch.setattr(compose, "RunProcessor", processor)
    return SimpleNamespace(built=built, migrations=migrations)


@pytest.fixture
def no_policy_file(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("SR_POLICY_FILE", raising=False)
    settings = Settings()
    assert settings.policy_file is None
    return settings


def test_operator_services_never_migrate_need_no_policy_and_open_no_producer(
        offline: SimpleNamespace, no_policy_file: Settings) -> None:
    with compose.open_operator_services(no_policy_file, need_producer=False) as services:
        assert offline.migrations == []
        assert len(offline.built) == 1 and offline.built[0]["policy"] is None
        assert services.processor is not None and services.truth.store is services.store
        with pytest.raises(KafkaFatalError, match="not open"):  # a dry run cannot send by mistake
            services.producer.send_and_wait("sr.ready", key=b"k", value=b"v")
        (leases,) = _Leases.instances
        assert not leases.entered  # no lease connection unless a lease is taken
        assert all(c.entered for c in (*_Store.instances, *_Index.instances))
    assert leases.closed and all(c.closed for c in (*_Store.instances, *_Index.instances))
    assert offline.migrations == []


def test_operator_services_pass_a_policy_through_when_given(offline: SimpleNamespace, no_policy_file: Settings,
                                                            policy: Policy) -> None:
    with compose.open_operator_services(no_policy_file, policy=policy, need_producer=False):
        pass
    assert offline.built[0]["policy"] is policy
    assert offline.migrations == []


def test_worker_services_migrate_unless_told_not_to(offline: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
                                                   policy: Policy) -> None:
    monkeypatch.setattr(compose, "EventProducer", _Client)
    settings = Settings(pg_dsn="postgresql://sr@db.invalid/sr")
    with compose.open_worker_services(settings, policy) as services:
        assert offline.migrations == ["postgresql://sr@db.invalid/sr"]
        assert offline.built[0]["policy"] is policy
        producer, leases = services.producer, services.leases
        assert isinstance(producer, _Client) and isinstance(leases, _Client)
        assert producer.entered and leases.entered
    with compose.open_services(settings, policy, migrate_db=False):
        pass
    assert len(offline.migrations) == 1


def test_the_codec_is_the_one_message_size_cap() -> None:
    """The worker loop has no size check of its own: the codec from the composition root
    raises MessageTooLargeError (dead-lettered as MESSAGE_TOO_LARGE) above the setting."""
    codec = compose.make_codec(Settings(max_message_bytes=1024))
    assert codec.max_message_bytes == 1024
    oversized = SINGLE_OBJECT_MAGIC + b"x" * 1023
    with pytest.raises(MessageTooLargeError):
        codec.decode_intent(oversized)
    with pytest.raises(MessageTooLargeError):
        codec.decode_trigger(oversized)
    with pytest.raises(DecodeError) as at_cap:  # exactly at the cap: decoded (and found invalid)
        codec.decode_intent(oversized[:1024])
    assert not isinstance(at_cap.value, MessageTooLargeError)
    valid = AvroCodec().encode_intent(make_intent())
    assert compose.make_codec(Settings(max_message_bytes=len(valid))).decode_intent(valid) == make_intent()
    trigger = RunTrigger(run_id="0" * 32, kind=TriggerKind.REEVALUATE, reason="", requested_by="ops",
                         requested_at=make_intent().submitted_at)
    assert compose.make_codec(Settings()).decode_trigger(AvroCodec().encode_trigger(trigger)) == trigger


# ----------------------------------------------------------------------------- CLI wiring
@pytest.fixture
def operator_cli(monkeypatch: pytest.MonkeyPatch, migrations: list[str]) -> list[dict[str, Any]]:
    """Run operator commands through ``sr``'s main() with the application services stubbed;
    returns the keyword arguments of every ``open_operator_services`` call."""
    monkeypatch.delenv("SR_POLICY_FILE", raising=False)
    monkeypatch.setenv("SR_OPERATORS", "ops")
    opened: list[dict[str, Any]] = []
    index = SimpleNamespace(record_operator_action=lambda *a, **k: None)
    services = SimpleNamespace(index=index, processor=object(), truth=object())

    @contextmanager
    def open_operator_services(settings: Settings, **kwargs: Any) -> Iterator[SimpleNamespace]:
        assert settings.policy_file is None
        opened.append(kwargs)
        yield services

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an operator command opened the worker's services")

    monkeypatch.setattr(compose, "open_operator_services", open_operator_services)
    monkeypatch.setattr(compose, "open_worker_services", refuse)
    monkeypatch.setattr(compose, "open_services", refuse)
    monkeypatch.setattr(operators, "authorize", lambda *a, **k: None)
    monkeypatch.setattr(operators, "reemit_run", lambda run_id, **k: "f" * 64)
    no_records = SimpleNamespace(read_slice=lambda *a, **k: iter(()))
    monkeypatch.setattr(compose, "partition_reader", lambda settings: no_records)
    monkeypatch.setattr(operators, "replay", lambda records, **k: ReplaySummary())
    monkeypatch.setattr(operators, "rebuild_index", lambda **k: RebuildSummary())
    return opened


@pytest.mark.parametrize(("argv", "need_producer"), [
    (["reemit", "0" * 32, "--dry-run", "--operator", "ops"], False),
    (["reemit", "0" * 32, "--operator", "ops"], True),
    (["replay", "--topic", "sr.ready", "--partition", "0", "--dry-run", "--json", "--operator", "ops"], False),
    (["replay", "--topic", "sr.ready", "--partition", "0", "--json", "--operator", "ops"], True),
    (["index", "rebuild", "--json", "--operator", "ops"], False),
], ids=["reemit-dry-run", "reemit", "replay-dry-run", "replay", "index-rebuild"])
def test_operator_commands_need_no_policy_file_and_never_migrate(
        operator_cli: list[dict[str, Any]], migrations: list[str], argv: list[str], need_producer: bool,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0, capsys.readouterr().err
    assert operator_cli == [{"need_producer": need_producer}]
    assert migrations == []
