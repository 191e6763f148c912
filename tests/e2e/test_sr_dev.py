"""``sr dev`` as a user runs it: a subprocess that comes up, and stops cleanly on a signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.harness.servers import unavailable
from worker.embedded.stack import find_pg_bin_dir, find_tansu, find_weed
from worker.errors import BinaryMissingError

pytestmark = pytest.mark.e2e

SR = [str(Path(sys.executable).parent / "sr")]


def _require_embedded() -> None:
    try:
        find_weed()
        find_tansu()
        find_pg_bin_dir()
    except BinaryMissingError as exc:
        unavailable(str(exc))


def _start_dev(tmp_path: Path) -> tuple[subprocess.Popen[str], float, list[str]]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([*SR, "dev", "--state-dir", str(tmp_path / "state")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    started = time.monotonic()
    lines: list[str] = []
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if "sr dev ready" in line:
            break
    return proc, time.monotonic() - started, lines


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sr_dev_comes_up_fast_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    _require_embedded()
    proc, elapsed, lines = _start_dev(tmp_path)
    try:
        assert any("sr dev ready" in ln for ln in lines), "\n".join(lines)
        assert elapsed < 30, f"sr dev took {elapsed:.1f}s to come up"
        out = "\n".join(lines)
        for var in ("SR_KAFKA_BOOTSTRAP", "SR_PG_DSN", "SR_S3_ENDPOINT"):
            assert f"export {var}=" in out
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # postgres, weed, tansu (postgres also has backends)
        proc.send_signal(sig)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert alive == [], f"orphans after {sig.name}: {[p.pid for p in alive]}"


def test_sr_dev_port_in_use_is_one_line_nonzero(tmp_path: Path) -> None:
    _require_embedded()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run([*SR, "dev", "--state-dir", str(tmp_path / "s"), "--pg-port", str(port)],
                             capture_output=True, text=True, timeout=60)
    assert res.returncode == 1  # PORT_IN_USE: a failure of the stack, not of the command line
    assert res.stderr.strip().count("\n") == 0
    assert res.stderr.startswith("sr: error: port") and "Traceback" not in res.stderr + res.stdout


def test_sr_dev_missing_weed_is_one_line_nonzero(tmp_path: Path) -> None:
    res = subprocess.run([*SR, "dev", "--state-dir", str(tmp_path / "s"), "--weed-bin", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1  # BINARY_MISSING
    assert res.stderr.strip().count("\n") == 0
    assert "weed" in res.stderr and "embedded" in res.stderr and "Traceback" not in res.stderr


def test_sr_dev_refuses_a_directory_it_did_not_create_and_deletes_nothing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not sr dev's")
    res = subprocess.run([*SR, "dev", "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.startswith("sr: error: --state-dir") and "not created by sr dev" in res.stderr
    assert res.stderr.count("\n") == 1 and (tmp_path / "notes.txt").read_text() == "not sr dev's"
