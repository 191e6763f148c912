"""Every ``sr`` error path ends in one ``sr: error:`` line and its documented exit code, never a
traceback (contract §7). The table below covers every command the parser has: a new command
without a row fails :func:`test_the_error_table_covers_every_command`.

Servers are "unreachable" through a loopback port nothing listens on (connection refused at
once); Kafka's delivery timeout is cut to one second so those rows stay fast.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import signal
import socket
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.harness.paths import EXAMPLE_POLICY
from worker.cli.main import COMMAND_GROUPS, ERROR_EXIT_CODES, ExitCode, build_parser, exit_code_for, main
from worker.cli.options import leaf_parsers
from worker.errors import (
    AuthorizationError,
    ConfigError,
    IntentInvalidError,
    KafkaFatalError,
    KafkaUnavailableError,
    ObjectNotFoundError,
    PostgresUnavailableError,
    RunNotFoundError,
    S3UnavailableError,
    SRError,
    UnauthenticatedError,
)

from .conftest import intent_dict

RUN_ID = "0" * 32
USAGE, CONFIG, TEMPFAIL, FAILURE = ExitCode.USAGE, ExitCode.CONFIG, ExitCode.TEMPFAIL, ExitCode.FAILURE


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, closed_port: int, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A clean environment pointing every server at ``closed_port``; signal handlers and the
    root logger are restored afterwards (``sr run`` / ``sr follow`` install their own)."""
    import os

    for name in list(os.environ):
        if name.startswith(("SR_", "AWS_", "PG")):
            monkeypatch.delenv(name)
    env = {
        "SR_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed_port}",
        "SR_KAFKA_DELIVERY_TIMEOUT_MS": "1000",
        "SR_PG_DSN": f"postgresql://sr@127.0.0.1:{closed_port}/sr?connect_timeout=2",
        "SR_S3_ENDPOINT": f"http://127.0.0.1:{closed_port}",
        "AWS_ACCESS_KEY_ID": "test-key-id",
        "AWS_SECRET_ACCESS_KEY": "test-secret-key",
        "SR_OPERATORS": "ops",
        "SR_OPERATOR": "ops",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield env
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    root.handlers[:], root.level = saved


def _intent_file(tmp_path: Path) -> str:
    path = tmp_path / "intent.json"
    path.write_text(json.dumps(intent_dict()))
    return str(path)


def _occupied_dir(tmp_path: Path) -> str:
    path = tmp_path / "not-sr-dev"
    path.mkdir()
    (path / "precious.txt").write_text("keep me")
    return str(path)


#: One valid command line per command (for the configuration-error row of each).
VALID: dict[tuple[str, ...], list[str]] = {
    ("dev",): ["dev"],
    ("run",): ["run"],
    ("submit",): ["submit", "intent.json"],
    ("status",): ["status", RUN_ID],
    ("trigger",): ["trigger", RUN_ID, "--kind", "REEMIT"],
    ("runs",): ["runs"],
    ("reemit",): ["reemit", RUN_ID],
    ("replay",): ["replay", "--topic", "sr.ready", "--partition", "0"],
    ("index", "rebuild"): ["index", "rebuild"],
    ("index", "prune"): ["index", "prune", "--older-than", "30"],
    ("topics", "create"): ["topics", "create"],
    ("db", "migrate"): ["db", "migrate"],
    ("runpack", "export"): ["runpack", "export", RUN_ID, "--to", "out"],
    ("runpack", "verify"): ["runpack", "verify", "out"],
    ("engine", "simulate"): ["engine", "simulate"],
    ("keys", "generate"): ["keys", "generate", "--principal", "tenant-a", "--out", "a.key"],
    ("keys", "public"): ["keys", "public"],
    ("schemas",): ["schemas"],
    ("follow",): ["follow", "ready", "--until-end"],
    ("config", "show"): ["config", "show"],
}

# (argv, extra environment, expected exit code, a fragment of the error line). "{tmp}" in an
# argument is the test's directory; "{intent}" a valid intent file; "{occupied}" a non-empty
# directory sr dev did not create.
CASES: list[tuple[list[str], dict[str, str], int, str]] = [
    (["dev", "--state-dir", "{occupied}"], {}, USAGE, "was not created by sr dev"),
    (["dev", "--start-timeout", "soon"], {}, USAGE, "--start-timeout: not a duration"),
    (["run"], {}, CONFIG, "no policy configured"),
    (["run"], {"SR_POLICY_FILE": "/nonexistent/policy.toml"}, CONFIG, "/nonexistent/policy.toml"),
    (["run", "--no-migrate", "--bogus"], {}, USAGE, "unrecognized arguments: --bogus"),
    (["submit", "/nonexistent/intent.json"], {}, USAGE, "cannot read intent file /nonexistent/intent.json"),
    (["submit", "{tmp}"], {}, USAGE, "cannot read intent file"),  # a directory
    (["submit", "{intent}"], {}, TEMPFAIL, "delivery to sr.run-intents failed"),
    (["submit", "{intent}", "--key", "/nonexistent/key.json"], {}, CONFIG, "cannot read signing key"),
    (["status", RUN_ID], {}, TEMPFAIL, "cannot connect to Postgres"),
    (["status"], {}, USAGE, "the following arguments are required: run_id"),
    (["trigger", "not-a-run-id", "--kind", "REEMIT"], {}, USAGE, "invalid RunTrigger: run_id"),
    (["trigger", "not-a-run-id", "--kind", "RETRY", "--operator", "ops"], {}, USAGE, "invalid RunTrigger: run_id"),
    (["trigger", RUN_ID, "--kind", "REEMIT", "--key", "/nonexistent/key.json"], {}, CONFIG,
     "cannot read signing key"),
    (["trigger", RUN_ID, "--kind", "NOPE"], {}, USAGE, "--kind: invalid choice: 'NOPE'"),
    (["trigger", RUN_ID, "--kind", "REEMIT"], {}, TEMPFAIL, "delivery to sr.triggers failed"),
    (["runs", "--since", "yesterday-ish"], {}, USAGE, "--since: not a time: 'yesterday-ish'"),
    (["runs", "--limit", "0"], {}, USAGE, "--limit: must be at least 1"),
    (["runs"], {}, TEMPFAIL, "cannot connect to Postgres"),
    (["reemit", RUN_ID, "--dry-run"], {}, TEMPFAIL, "cannot connect to Postgres"),
    (["replay", "--topic", "sr.ready", "--partition", "0", "--from-time", "yesterday-ish"], {}, USAGE,
     "--from-time: not a time: 'yesterday-ish'"),
    (["replay", "--topic", "sr.ready", "--partition", "0", "--idle-timeout", "-1"], {}, USAGE,
     "--idle-timeout: not a duration"),
    (["replay", "--topic", "sr.ready", "--partition", "0", "--dry-run"], {}, TEMPFAIL, "cannot connect to Postgres"),
    (["index", "rebuild"], {}, TEMPFAIL, "cannot connect to Postgres"),
    (["index", "prune", "--older-than", "a while"], {}, USAGE, "--older-than: not a duration"),
    (["index", "prune", "--older-than", "30", "--dry-run"], {}, TEMPFAIL, "cannot connect to Postgres"),
    (["topics", "create", "--config", "retention.ms"], {}, USAGE, "--config expects key=value"),
    (["topics", "create", "--timeout", "1"], {}, TEMPFAIL, "cannot reach Kafka"),
    (["db", "migrate"], {}, TEMPFAIL, "cannot connect to Postgres"),
    (["runpack", "export", RUN_ID, "--to", "out", "--retain-until", "someday"], {}, USAGE,
     "--retain-until: not a time"),
    (["runpack", "export", RUN_ID, "--to", "out", "--retain-until", "30d"], {}, USAGE, "is a time in the past"),
    (["runpack", "export", RUN_ID, "--to", "out"], {}, TEMPFAIL, "cannot connect to Postgres"),
    (["runpack", "verify", "/nonexistent/runpack"], {}, FAILURE, ""),  # the check fails: exit 1, a report
    (["engine", "simulate"], {}, CONFIG, "no policy configured"),
    (["engine", "simulate", "--max-requests", "0"], {}, USAGE, "--max-requests: must be at least 1"),
    (["engine", "simulate", "--key", "/nonexistent/key.json"], {"SR_POLICY_FILE": str(EXAMPLE_POLICY)}, CONFIG,
     "cannot read signing key"),
    (["keys", "generate", "--principal", "tenant-a", "--out", "/nonexistent/dir/a.key"], {}, USAGE,
     "cannot write /nonexistent/dir/a.key"),
    (["keys", "generate", "--principal", "../tenant-a", "--out", "/nonexistent/dir/a.key"], {}, USAGE,
     "is not a valid identifier"),
    (["keys", "generate", "--principal", "tenant-a", "--out", "-"], {}, USAGE, "--out must be a file"),
    (["keys", "public", "--key", "/nonexistent/key.json"], {}, CONFIG, "cannot read signing key"),
    (["keys", "public"], {}, USAGE, "no key file: give --key FILE or set SR_SIGNING_KEY"),
    (["schemas", "--record", "NoSuchRecord"], {}, USAGE, "no record named"),
    (["follow", "ready", "--from", "yesterday-ish"], {}, USAGE, "--from: not beginning, end or a time"),
    (["follow", "status", "--verify"], {}, USAGE, "--verify applies to sr follow ready only"),
    (["follow", "ready", "-o", "json"], {}, USAGE, "-o json prints one JSON array at the end"),
    (["config", "show", "--config", "/nonexistent/sr.toml"], {}, CONFIG, "cannot read config file"),
    (["config", "show"], {"SR_CONFIG": "/nonexistent/sr.toml"}, CONFIG, "cannot read config file"),
    (["-o", "yaml", "config", "show"], {}, USAGE, "--output: invalid choice: 'yaml'"),
]


def _command_of(argv: list[str]) -> tuple[str, ...]:
    words = [a for a in argv if not a.startswith("-")]
    for path in VALID:
        if tuple(words[: len(path)]) == path:
            return path
    # Global options before the command ("-o yaml config show"): skip the option's value.
    return _command_of(argv[2:])


def _run(argv: list[str], env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    subst = {"{tmp}": str(tmp_path), "{intent}": _intent_file(tmp_path), "{occupied}": _occupied_dir(tmp_path)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = [subst.get(a, a).replace("{tmp}", str(tmp_path)) for a in argv]
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def test_the_error_table_covers_every_command() -> None:
    commands = [path for path, _ in leaf_parsers(build_parser())]
    assert set(commands) == set(VALID), "every command needs a VALID row (and CASES rows)"
    covered = {_command_of(argv) for argv, *_ in CASES}
    assert covered == set(VALID), sorted(set(VALID) - covered)
    assert [path[0] for path in commands] == [g for g in COMMAND_GROUPS for _ in range(
        sum(1 for p in commands if p[0] == g))]


@pytest.mark.parametrize(("argv", "env", "code", "fragment"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_every_error_path_has_its_code_and_one_line(
        *, argv: list[str], env: dict[str, str], code: int, fragment: str, cli_env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    got, err = _run(argv, env, tmp_path, monkeypatch, capsys)
    assert "Traceback" not in err
    assert got == code, err
    error_lines = [line for line in err.splitlines() if line.startswith("sr: error: ")]
    if fragment:
        assert len(error_lines) == 1 and fragment in error_lines[0], err


@pytest.mark.parametrize("path", sorted(set(VALID) - {("dev",)}), ids=" ".join)
def test_every_command_reports_a_configuration_error_with_code_3(
        path: tuple[str, ...], cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SR_BATCH_SIZE", "0")  # fails validation (>= 1): nothing is contacted
    got, err = _run(VALID[path], {}, tmp_path, monkeypatch, capsys)
    assert (got, err.count("\n")) == (CONFIG, 1), err
    assert err.startswith("sr: error: invalid configuration: batch_size") and "Traceback" not in err


def test_sr_dev_reads_no_configuration(cli_env: dict[str, str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A broken configuration does not stop sr dev, which brings its own servers: it gets as far
    # as the state directory, which it refuses (not empty, not its own).
    monkeypatch.setenv("SR_BATCH_SIZE", "0")
    got, err = _run(["dev", "--state-dir", "{occupied}"], {}, tmp_path, monkeypatch, capsys)
    assert got == USAGE and "was not created by sr dev" in err


# ----------------------------------------------------------------------------- the exit-code table
@pytest.mark.parametrize(("exc", "code"), [
    (ConfigError("x"), ExitCode.CONFIG),
    (AuthorizationError("x"), ExitCode.FORBIDDEN),
    (UnauthenticatedError("x"), ExitCode.FORBIDDEN),  # an InputError, but not a usage error
    (ObjectNotFoundError("x"), ExitCode.NOT_FOUND),
    (RunNotFoundError("x"), ExitCode.NOT_FOUND),
    (KafkaUnavailableError("x"), ExitCode.TEMPFAIL),
    (PostgresUnavailableError("x"), ExitCode.TEMPFAIL),
    (S3UnavailableError("x"), ExitCode.TEMPFAIL),
    (IntentInvalidError("x"), ExitCode.USAGE),
    (KafkaFatalError("x"), ExitCode.FAILURE),
    (SRError("x"), ExitCode.FAILURE),
    (FileNotFoundError(2, "No such file or directory"), ExitCode.USAGE),
    (PermissionError(13, "Permission denied"), ExitCode.USAGE),
    (OSError(28, "No space left on device"), ExitCode.FAILURE),
    (ConnectionRefusedError(111, "Connection refused"), ExitCode.TEMPFAIL),
    (ValueError("bad"), ExitCode.USAGE),
    (RuntimeError("bug"), ExitCode.FAILURE),
])
def test_exit_code_for_each_kind_of_error(exc: BaseException, code: ExitCode) -> None:
    assert exit_code_for(exc) == code


def test_every_error_class_maps_to_a_documented_code() -> None:
    import inspect

    from worker import errors

    documented = Path(__file__).parents[2].joinpath("docs", "contract.md").read_text()
    for cls in (c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, SRError)):
        code = exit_code_for(cls("x"))
        assert f"| {int(code)} |" in documented, (cls, code)
    assert ERROR_EXIT_CODES[-1] == (SRError, ExitCode.FAILURE)  # the catch-all comes last


@pytest.mark.parametrize(("raised", "code", "words"), [
    (RuntimeError("boom"), ExitCode.FAILURE, "unexpected RuntimeError: boom (a bug; run with SR_DEBUG=1"),
    (ValueError("not a number: 'x'"), ExitCode.USAGE, "sr: error: not a number: 'x'"),
    (FileNotFoundError(2, "No such file or directory", "/x"), ExitCode.USAGE, "No such file or directory"),
    (KeyboardInterrupt(), ExitCode.INTERRUPTED, ""),
])
def test_a_handler_failure_is_one_line_and_a_traceback_only_with_sr_debug(
        *, raised: BaseException, code: ExitCode, words: str, cli_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise raised

    monkeypatch.setattr("worker.cli.schemas.cmd_schemas", fail)
    assert main(["schemas"]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and words in err and err.count("\n") == (1 if words else 0)
    monkeypatch.setenv("SR_DEBUG", "1")
    assert main(["schemas"]) == code
    debug_err = capsys.readouterr().err
    assert ("Traceback" in debug_err) is bool(words)


def test_a_closed_stdout_is_a_quiet_exit(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def gone(args: argparse.Namespace) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("worker.cli.schemas.cmd_schemas", gone)

    class Stdout(io.StringIO):
        def fileno(self) -> int:
            return 99

    dup2: list[tuple[int, int]] = []
    monkeypatch.setattr("os.dup2", lambda a, b: dup2.append((a, b)))
    monkeypatch.setattr("sys.stdout", Stdout())
    assert main(["schemas"]) == ExitCode.BROKEN_PIPE
    assert [b for _, b in dup2] == [99] and "Traceback" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- partial success
class _HalfAcknowledged:
    """A producer that acknowledges every other message and times the rest out."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, topic: str, *, key: bytes, value: bytes, headers: Any = None) -> Future[Any]:
        self.sent += 1
        fut: Future[Any] = Future()
        if self.sent % 2:
            fut.set_result(SimpleNamespace(topic=topic, partition=0, offset=self.sent))
        else:
            fut.set_exception(KafkaUnavailableError(f"delivery to {topic} failed: Local: Message timed out"))
        return fut


@contextmanager
def _producer(stub: _HalfAcknowledged) -> Iterator[_HalfAcknowledged]:
    yield stub


def test_sr_submit_with_some_intents_unacknowledged_is_partial(
        cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    stub = _HalfAcknowledged()
    monkeypatch.setattr("worker.runtime.compose.event_producer", lambda settings: _producer(stub))
    intents = tmp_path / "intents.jsonl"
    intents.write_text("\n".join(json.dumps(intent_dict(request_id=f"r-{n}")) for n in range(3)) + "\n")
    assert main(["submit", str(intents)]) == ExitCode.PARTIAL
    out, err = capsys.readouterr()
    assert [json.loads(line)["offset"] for line in out.splitlines()] == [1, 3]  # the acknowledged ones
    assert err.startswith("sr: error: 1 of 3 intent(s) not acknowledged") and err.count("\n") == 1


def test_sr_replay_with_runs_left_over_is_partial_and_no_ready_fact_is_not(
        cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from worker.app import operators
    from worker.app.operators import ReplaySummary
    from worker.runtime import compose

    summaries: list[ReplaySummary] = []

    @contextmanager
    def services(settings: Any, **kwargs: Any) -> Iterator[SimpleNamespace]:
        yield SimpleNamespace(index=SimpleNamespace(record_operator_action=lambda *a, **k: None),
                              processor=object(), truth=object())

    monkeypatch.setattr(compose, "open_operator_services", services)
    monkeypatch.setattr(compose, "partition_reader", lambda s: SimpleNamespace(read_slice=lambda *a, **k: iter(())))
    monkeypatch.setattr(operators, "authorize", lambda *a, **k: None)
    monkeypatch.setattr(operators, "replay", lambda records, **k: summaries[-1])
    argv = ["replay", "--topic", "sr.ready", "--partition", "0", "-o", "json"]

    summaries.append(ReplaySummary(records=3, runs=3, reemitted=2))
    summaries[-1].skipped["no READY fact (status WAITING)"] += 1
    assert main(argv) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["failed"] == 0

    summaries.append(ReplaySummary(records=3, runs=3, reemitted=1))
    summaries[-1].skipped["run stayed leased by a worker (replay it again)"] += 2
    assert main(argv) == ExitCode.PARTIAL
    out, err = capsys.readouterr()
    assert json.loads(out)["failed"] == 2  # the progress bar precedes the error line on stderr
    assert err.splitlines()[-1].startswith("sr: error: 2 record(s) or run(s)")
