"""The embedded stack's own contract: actionable failures and no surviving processes."""

from __future__ import annotations

import socket
from pathlib import Path

import psutil
import pytest

from worker.embedded.stack import EmbeddedStack, StackConfig, find_tansu
from worker.errors import BinaryMissingError, PortInUseError, ServerUnhealthyError

pytestmark = pytest.mark.integration


def _have_tansu() -> bool:
    try:
        find_tansu()
    except BinaryMissingError:
        return False
    return True


needs_tansu = pytest.mark.skipif(not _have_tansu(), reason="tansu binary (embedded extra) not installed")


@needs_tansu
def test_stack_stops_every_process_it_started(tmp_path: Path) -> None:
    stack = EmbeddedStack(StackConfig(state_dir=tmp_path, postgres=False, s3=False, topics=()))
    with stack:
        assert stack.endpoints is not None
        assert stack.endpoints.kafka_bootstrap
        pids = stack.pids
        assert pids and all(psutil.pid_exists(p) for p in pids)
    assert not any(psutil.pid_exists(p) for p in pids)


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = EmbeddedStack(StackConfig(state_dir=tmp_path, postgres=False, s3=False, kafka_port=port))
        with pytest.raises(PortInUseError) as info:
            stack.start()
    message = str(info.value)
    assert str(port) in message and "\n" not in message
    assert stack.pids == []


def test_missing_binary_names_the_extra(tmp_path: Path) -> None:
    stack = EmbeddedStack(StackConfig(state_dir=tmp_path, kafka=False, postgres=False,
                                      weed_bin=tmp_path / "no-such-weed"))
    with pytest.raises(BinaryMissingError) as info:
        stack.start()
    assert "embedded" in str(info.value)
    assert stack.pids == []


@needs_tansu
def test_server_that_dies_at_startup_reports_its_log_tail(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'boom: cannot start broker' >&2\nexit 3\n")
    fake.chmod(0o755)
    stack = EmbeddedStack(StackConfig(state_dir=tmp_path, postgres=False, s3=False, tansu_bin=fake,
                                      start_timeout=10))
    with pytest.raises(ServerUnhealthyError) as info:
        stack.start()
    assert "boom: cannot start broker" in str(info.value)
    assert "\n" not in str(info.value)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in stack.pids)
