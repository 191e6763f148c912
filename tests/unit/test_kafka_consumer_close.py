"""Leaving the group never turns a clean stop into an error (no broker needed)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from worker.adapters.kafka import IntakeConsumer, KafkaConfig
from worker.errors import KafkaUnavailableError


class _Client:
    """Stands in for a confluent Consumer: commit raises ``commit_error``; close runs the revoke."""

    def __init__(self, owner: IntakeConsumer, commit_error: BaseException | None) -> None:
        self.owner = owner
        self.commit_error = commit_error
        self.commits = 0
        self.closed = False

    def commit(self, asynchronous: bool = False) -> None:
        self.commits += 1
        if self.commit_error is not None:
            raise self.commit_error

    def close(self) -> None:
        self.owner._revoked(self, [])  # type: ignore[arg-type]  # librdkafka runs the final revoke in close()
        self.closed = True


def _consumer(commit_error: BaseException | None, revoked: list[Any]) -> tuple[IntakeConsumer, _Client]:
    consumer = IntakeConsumer(KafkaConfig(bootstrap="127.0.0.1:9"), group_id="g", topics=["t"],
                              on_revoke=revoked.append)
    client = _Client(consumer, commit_error)
    consumer._consumer = client  # type: ignore[assignment]
    return consumer, client


@pytest.mark.parametrize("code", [KafkaError._DESTROY, KafkaError._NO_OFFSET, KafkaError.ILLEGAL_GENERATION])
def test_a_final_commit_refused_while_closing_is_not_an_error(code: int) -> None:
    revoked: list[Any] = []
    consumer, client = _consumer(KafkaException(KafkaError(code)), revoked)
    consumer.close()
    assert client.closed and client.commits == 1 and revoked == [[]]


def test_an_sr_error_from_the_final_revoke_is_logged_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer, _client = _consumer(None, [])

    def failing_commit(c: Any) -> None:
        raise KafkaUnavailableError("commit timed out")

    monkeypatch.setattr(IntakeConsumer, "_commit", staticmethod(failing_commit))
    consumer.close()
    assert consumer._consumer is None


def test_a_commit_error_outside_close_still_raises() -> None:
    consumer, _client = _consumer(KafkaException(KafkaError(KafkaError._TRANSPORT)), [])
    with pytest.raises(KafkaUnavailableError):
        consumer.commit()


class _HangingClient(_Client):
    """A close that blocks (librdkafka waiting on a group join the broker holds)."""

    def __init__(self, owner: IntakeConsumer) -> None:
        super().__init__(owner, None)
        import threading
        self.release = threading.Event()

    def close(self) -> None:
        self.release.wait(30)
        self.closed = True


def test_a_close_that_hangs_is_given_up_after_close_timeout(caplog: pytest.LogCaptureFixture) -> None:
    import time
    consumer = IntakeConsumer(KafkaConfig(bootstrap="127.0.0.1:9"), group_id="g", topics=["t"], close_timeout=0.2)
    client = _HangingClient(consumer)
    consumer._consumer = client  # type: ignore[assignment]
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="sr.kafka"):
        consumer.close()
    took = time.monotonic() - started
    client.release.set()
    assert 0.2 <= took < 5.0, took
    assert consumer._consumer is None and not client.closed
    assert any("did not finish in time" in r.getMessage() for r in caplog.records)
