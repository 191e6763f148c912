"""Liveness of a real worker: /healthz follows the poll loop's heartbeat (real servers)."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.harness.sr_env import SREnv
from tests.harness.workers import WorkerThread
from worker.adapters.kafka.consumer import IntakeConsumer


def _healthz(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:  # noqa: S310 (loopback)
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _wait_for(predicate: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_healthz_is_503_while_the_poll_loop_is_wedged(sr_env: SREnv, monkeypatch: pytest.MonkeyPatch) -> None:
    wedge, release, wedged = threading.Event(), threading.Event(), threading.Event()
    real_poll = IntakeConsumer.poll_batch

    def poll_batch(self: IntakeConsumer, max_messages: int, timeout: float) -> Any:
        if wedge.is_set() and not release.is_set():
            wedged.set()
            release.wait(30)  # a call that does not return: what a deadlock looks like from outside
        return real_poll(self, max_messages, timeout)

    monkeypatch.setattr(IntakeConsumer, "poll_batch", poll_batch)
    worker = WorkerThread(sr_env, liveness_timeout=2.0, revoke_drain_timeout=0.5, poll_timeout=0.2).start()
    try:
        health = worker.worker.health
        assert health is not None
        url = health.url
        assert _wait_for(lambda: _healthz(url) == 200, 10)
        time.sleep(2.5)  # longer than the liveness timeout: a turning loop stays alive
        assert _healthz(url) == 200
        wedge.set()
        assert wedged.wait(10)
        assert _wait_for(lambda: _healthz(url) == 503, 10), "a wedged loop must fail liveness"
        release.set()
        assert _wait_for(lambda: _healthz(url) == 200, 10), "liveness must recover once the loop turns"
    finally:
        release.set()
        worker.stop()
