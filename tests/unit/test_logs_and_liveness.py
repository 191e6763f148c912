"""JSON/text log lines, librdkafka's lines routed through logging, and the loop heartbeat
behind /healthz (worker.logs, worker.runtime.heartbeat, worker.runtime.health)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from worker.logs import JsonFormatter, LibrdkafkaFilter, TextFormatter, configure_logging, run_logger
from worker.runtime.health import HealthServer
from worker.runtime.heartbeat import Heartbeat
from worker.runtime.metrics import Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _record(msg: str, *args: object, name: str = "sr.test", **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args or None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


# ----------------------------------------------------------------------------- formats
def test_a_json_line_has_message_and_the_run_context(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("INFO", out)
    run_logger("sr.test", run_id="r-1", tenant_id="t").info("step %s", "done", extra={"epoch": 3})
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["message"] == "step done" and "msg" not in line
    assert (line["run_id"], line["tenant_id"], line["epoch"], line["level"]) == ("r-1", "t", 3, "INFO")


def test_text_format_is_one_human_line(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("WARNING", out, fmt="text")
    logging.getLogger("sr.test").info("hidden")
    run_logger("sr.test", run_id="r-2").warning("lease lost")
    text = out.getvalue()
    assert "hidden" not in text
    assert text.count("\n") == 1 and "WARNING sr.test: lease lost run_id=r-2" in text
    assert TextFormatter().format(_record("x")).endswith("sr.test: x")


# ----------------------------------------------------------------------------- librdkafka
def test_librdkafka_records_become_message_facility_and_client() -> None:
    flt = LibrdkafkaFilter(window=30.0, clock=FakeClock())
    record = _record("%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connect to 127.0.0.1:1 failed", name="sr.librdkafka")
    assert flt.filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "Connect to 127.0.0.1:1 failed"
    assert (line["facility"], line["kafka_client"]) == ("FAIL", "rdkafka#consumer-1")


def test_a_repeating_librdkafka_line_is_shown_once_per_window_with_a_count() -> None:
    clock = FakeClock()
    flt = LibrdkafkaFilter(window=30.0, clock=clock)

    def shown() -> list[logging.LogRecord]:
        out = []
        for _ in range(50):
            record = _record("%s [%s] %s", "FAIL", "rdkafka#producer-1", "broker down", name="sr.librdkafka")
            if flt.filter(record):
                out.append(record)
            clock.now += 0.5
        return out

    first = shown()  # 25 s: one line
    assert len(first) == 1 and not hasattr(first[0], "repeated")
    second = shown()  # the next window opens after 30 s: one line counting the 59 dropped between
    assert len(second) == 1 and getattr(second[0], "repeated", None) == 59
    other = _record("%s [%s] %s", "FAIL", "rdkafka#producer-1", "another line", name="sr.librdkafka")
    assert flt.filter(other)  # a different line is never held back


def test_a_real_client_logs_json_lines_not_percent_lines() -> None:
    # A consumer against a closed port: librdkafka complains on every reconnect. Through SR's
    # KafkaConfig those complaints are JSON lines on stderr, not librdkafka's "%3|..." lines.
    code = r"""
import time
from worker.adapters.kafka import KafkaConfig
from worker.logs import configure_logging
from confluent_kafka import Consumer
configure_logging("INFO")
conf = KafkaConfig(bootstrap="127.0.0.1:1", client_id="sr-logtest").client_conf(
    {"group.id": "g", "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 100})
consumer = Consumer(conf)
consumer.subscribe(["t"])
end = time.monotonic() + 2.5
while time.monotonic() < end:
    consumer.poll(0.2)
consumer.close()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, "librdkafka reported nothing about an unreachable broker"
    assert not [line for line in lines if line.startswith("%")]
    records = [json.loads(line) for line in lines]
    kafka = [r for r in records if r["logger"] == "sr.librdkafka"]
    assert kafka and all(r["kafka_client"].startswith("sr-logtest#consumer") for r in kafka)
    # ~25 reconnect failures in 2.5 s are shown once, not 25 times.
    assert len({r["message"] for r in kafka}) == len(kafka)


# ----------------------------------------------------------------------------- heartbeat
def test_a_heartbeat_is_overdue_only_while_armed() -> None:
    clock = FakeClock()
    beat = Heartbeat(10.0, clock=clock)
    clock.now += 100
    assert beat.alive() and beat.age() == 0.0  # not armed: start-up takes what it takes
    beat.arm()
    clock.now += 9
    assert beat.alive()
    clock.now += 2
    assert not beat.alive() and beat.age() == pytest.approx(11.0)
    beat.beat()
    assert beat.alive()
    clock.now += 50
    beat.disarm()
    assert beat.alive()
    with pytest.raises(ValueError):
        Heartbeat(0)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback test server)
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_healthz_turns_503_when_the_loop_stalls_and_200_when_it_turns_again() -> None:
    clock = FakeClock()
    beat = Heartbeat(5.0, clock=clock)
    with HealthServer("127.0.0.1", 0, metrics=Metrics(), checks={}, heartbeat=beat) as server:
        url = f"http://127.0.0.1:{server.port}/healthz"
        assert _get(url) == (200, b"ok\n")
        beat.arm()
        clock.now += 6.0
        status, body = _get(url)
        assert status == 503 and json.loads(body) == {"alive": False, "loop_stalled_seconds": 6.0}
        beat.beat()
        assert _get(url) == (200, b"ok\n")
