"""Bad CLI input ends in one ``sr: error:`` line and exit code 2, never a traceback (no server needed)."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from worker.cli.main import COMMAND_GROUPS, build_parser, main


@pytest.mark.parametrize(("argv", "message"), [
    (["submit", "/nonexistent/intent.json"], "cannot read intent file /nonexistent/intent.json"),
    (["trigger", "not-a-run-id", "--kind", "REEMIT"], "invalid RunTrigger: run_id"),
    (["replay", "--topic", "sr.ready", "--partition", "0", "--from-time", "yesterday-ish"],
     "--from-time: not an ISO-8601 time"),
    (["trigger", "not-a-run-id", "--kind", "RETRY"], "invalid RunTrigger: run_id"),
    (["submit", "/nonexistent/intent.json", "--key", "/nonexistent/key.json"],
     "cannot read signing key /nonexistent/key.json"),
    (["trigger", "0" * 32, "--kind", "REEMIT", "--key", "/nonexistent/key.json"], "cannot read signing key"),
    (["keys", "public", "--key", "/nonexistent/key.json"], "cannot read signing key"),
    (["keys", "public"], "no key file: give --key FILE or set SR_SIGNING_KEY"),
    (["keys", "generate", "--principal", "tenant-a", "--out", "/nonexistent/dir/a.key"],
     "cannot write /nonexistent/dir/a.key"),
    (["keys", "generate", "--principal", "../tenant-a", "--out", "/nonexistent/dir/a.key"],
     "is not a valid identifier"),
])
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SR_KAFKA_BOOTSTRAP", "127.0.0.1:9")  # nothing listens: no command may get that far
    monkeypatch.delenv("SR_SIGNING_KEY", raising=False)  # a developer's own key must not change the outcome
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sr: error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_every_command_module_registers_its_own_command() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMAND_GROUPS)


def test_sr_schemas_lists_what_the_codec_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.adapters.avro import RECORD_NAMES, AvroCodec

    assert main(["schemas", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["fingerprint"] for r in rows] == [f.hex for f in AvroCodec().fingerprints()]
    writes = {r["record"]: r["fingerprint"] for r in rows if r["writes"]}
    assert writes == {name: AvroCodec().fingerprint(name).hex() for name in RECORD_NAMES}
    assert main(["schemas", "--record", "NoSuchRecord"]) == 2
    assert "no record named" in capsys.readouterr().err


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
    assert main(["schemas"]) == 141
    assert [b for _, b in dup2] == [99] and "Traceback" not in capsys.readouterr().err


def test_sr_submit_reads_json_json_arrays_and_json_lines() -> None:
    from worker.cli.submit import parse_documents
    from worker.errors import InputError

    assert parse_documents('{"a": 1}') == [{"a": 1}]
    assert parse_documents('[{"a": 1}, {"a": 2}]') == [{"a": 1}, {"a": 2}]
    assert parse_documents('{"a": 1}\n\n{"a": 2}\n') == [{"a": 1}, {"a": 2}]
    with pytest.raises(InputError, match="line 2"):
        parse_documents('{"a": 1}\n{"a": \n')
    with pytest.raises(InputError, match="not JSON"):
        parse_documents("{nope")
