"""The shape of the ``sr`` command line: help on every argument, examples on every command,
``--version``, ``--config`` / ``-o`` anywhere, the deprecated aliases, ``sr dev``'s state
directory and ``sr config show``'s redaction."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from worker.cli.dev import STATE_MARKER, prepare_state_dir
from worker.cli.main import COMMAND_GROUPS, ExitCode, build_parser, main, package_version
from worker.cli.options import leaf_parsers
from worker.errors import InputError

RUN_ID = "0" * 32


def _every_parser(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found.extend(_every_parser(child))
    return found


def test_every_argument_and_every_command_has_help() -> None:
    missing = []
    for prog, parser in _every_parser(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if a.help}
                missing += [f"{prog} {name}" for name in action.choices if name not in helped]
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_every_command_has_examples_in_its_epilog() -> None:
    for path, leaf in leaf_parsers(build_parser()):
        assert leaf.epilog and "examples:" in leaf.epilog, path
        examples = leaf.epilog.split("examples:", 1)[1].strip().splitlines()
        assert examples and all(f"sr {' '.join(path)}" in line or "sr --" in line for line in examples), path


def test_the_top_level_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code in ExitCode:
        if code is not ExitCode.OK:
            assert f"\n  {int(code):<4} " in out, code


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    dist = metadata.packages_distributions()["worker"][0]
    assert out == f"sr {metadata.version(dist)}\n" == f"sr {package_version()}\n"


def test_the_version_falls_back_to_the_package_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    import worker

    monkeypatch.setattr(metadata, "packages_distributions", lambda: {})
    assert package_version() == worker.__version__


def test_every_command_module_registers_its_own_command() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMAND_GROUPS)


@pytest.mark.parametrize("argv", [
    ["--config", "{f}", "config", "show", "-o", "json"],
    ["config", "show", "--config", "{f}", "-o", "json"],
    ["-o", "json", "config", "show", "--config", "{f}"],
    ["config", "show", "-o", "json"],  # SR_CONFIG
])
def test_config_is_read_from_before_or_after_the_command_or_sr_config(
        argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("SR_CONFIG", "SR_GROUP_ID", "SR_BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "sr.toml"
    config.write_text('group_id = "from-the-file"\nbatch_size = 7\n')
    if "{f}" not in argv:
        monkeypatch.setenv("SR_CONFIG", str(config))
    assert main([a.replace("{f}", str(config)) for a in argv]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["group_id"], doc["batch_size"]) == ("from-the-file", 7)


def test_an_explicit_config_wins_over_sr_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SR_GROUP_ID", raising=False)
    monkeypatch.setenv("SR_CONFIG", str(tmp_path / "missing.toml"))
    (tmp_path / "sr.toml").write_text('group_id = "explicit"\n')
    assert main(["config", "show", "-o", "json", "--config", str(tmp_path / "sr.toml")]) == 0
    assert json.loads(capsys.readouterr().out)["group_id"] == "explicit"


def test_topics_create_keeps_its_own_config_option() -> None:
    args = build_parser().parse_args(["--config", "sr.toml", "topics", "create", "--config", "retention.ms=1"])
    assert (args.config_file, args.topic_config) == ("sr.toml", ["retention.ms=1"])


@pytest.mark.parametrize(("argv", "output"), [
    (["runs"], "table"),
    (["runs", "-o", "json"], "json"),
    (["-o", "json", "runs"], "json"),
    (["-o", "json", "runs", "-o", "jsonl"], "jsonl"),  # after the command wins
    (["runs", "--json"], "jsonl"),  # deprecated: what --json always printed here (JSON lines)
    (["schemas", "--json"], "jsonl"),
    (["status", RUN_ID, "--json"], "json"),  # deprecated: one document, as always
    (["replay", "--topic", "t", "--partition", "0", "--json"], "json"),
    (["index", "rebuild", "--json"], "json"),
    (["index", "prune", "--older-than", "1", "--json"], "json"),
    (["runpack", "verify", "x", "--json"], "json"),
    (["keys", "public", "--json"], "json"),
    (["submit", "f.json"], "jsonl"),  # printed JSON lines before -o existed: still the default
    (["trigger", RUN_ID, "--kind", "REEMIT"], "jsonl"),
    (["follow", "ready", "-o", "jsonl"], "jsonl"),
])
def test_one_output_option_with_the_old_json_flags_as_aliases(argv: list[str], output: str) -> None:
    from worker.cli.options import resolve_output

    assert resolve_output(build_parser().parse_args(argv)) == output


def test_deprecated_spellings_say_so_in_their_help() -> None:
    for path, leaf in leaf_parsers(build_parser()):
        for action in leaf._actions:
            if "--json" in action.option_strings or "--requested-by" in action.option_strings:
                assert action.help and "deprecated" in action.help, path


@pytest.mark.parametrize("spelling", ["--operator", "--requested-by"])
def test_trigger_takes_operator_and_the_old_requested_by(spelling: str) -> None:
    args = build_parser().parse_args(["trigger", RUN_ID, "--kind", "RETRY", spelling, "alice"])
    assert args.operator == "alice"


def test_every_command_where_an_operator_acts_takes_operator() -> None:
    acting = {("trigger",), ("reemit",), ("replay",), ("index", "rebuild"), ("index", "prune")}
    for path, leaf in leaf_parsers(build_parser()):
        if path in acting:
            assert "--operator" in leaf._option_string_actions, path


def test_a_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "--status", "SLEEPING"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("sr: error: --status: invalid choice: 'SLEEPING'") and "(see 'sr runs --help')" in err


# ----------------------------------------------------------------------------- sr dev's state directory
def test_sr_dev_creates_and_marks_a_new_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    prepare_state_dir(state)
    assert [p.name for p in state.iterdir()] == [STATE_MARKER]


def test_sr_dev_wipes_a_state_dir_it_marked(tmp_path: Path) -> None:
    state = tmp_path / "state"
    prepare_state_dir(state)
    (state / "pg").mkdir()
    (state / "pg" / "data").write_text("old")
    prepare_state_dir(state)
    assert [p.name for p in state.iterdir()] == [STATE_MARKER]


def test_sr_dev_uses_an_empty_existing_dir(tmp_path: Path) -> None:
    prepare_state_dir(tmp_path)
    assert (tmp_path / STATE_MARKER).is_file()


@pytest.mark.parametrize("kind", ["unmarked", "file", "symlink", "marker-symlink"])
def test_sr_dev_refuses_and_keeps_what_it_did_not_create(kind: str, tmp_path: Path) -> None:
    precious = tmp_path / "home" / "thesis.tex"
    precious.parent.mkdir()
    precious.write_text("years of work")
    target = precious.parent
    if kind == "file":
        target = precious
    elif kind == "symlink":
        target = tmp_path / "link"
        target.symlink_to(precious.parent)
        (precious.parent / STATE_MARKER).write_text("")
    elif kind == "marker-symlink":
        (precious.parent / STATE_MARKER).symlink_to(precious)
    with pytest.raises(InputError, match="sr dev"):
        prepare_state_dir(target)
    assert precious.read_text() == "years of work"


def test_sr_dev_refusal_is_one_line_with_the_usage_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep").write_text("x")
    assert main(["dev", "--state-dir", str(tmp_path)]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.startswith("sr: error: --state-dir") and err.count("\n") == 1 and (tmp_path / "keep").exists()


# ----------------------------------------------------------------------------- sr config show
def test_config_show_redacts_every_secret(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    secrets = {"SR_PG_DSN": "postgresql://sr:pg-hunter2@db/sr", "AWS_SECRET_ACCESS_KEY": "aws-hunter2",
               "AWS_ACCESS_KEY_ID": "AKIAHUNTER2", "SR_KAFKA_SASL_PASSWORD": "sasl-hunter2",
               "SR_KAFKA_SSL_CA_LOCATION": "/etc/ca-hunter2.pem"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SR_KAFKA_BOOTSTRAP", "broker-1:9092")
    for output in ("json", "table"):
        assert main(["config", "show", "-o", output]) == 0
        out = capsys.readouterr().out
        assert not [v for v in secrets.values() if v in out], output
        assert "broker-1:9092" in out and "**********" in out
    assert main(["config", "show", "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pg_dsn"] == doc["aws_secret_access_key"] == "**********"
    assert doc["kafka_extra"] == {"sasl.password": "**********", "ssl.ca.location": "**********"}
    assert doc["topics"]["ready"] == "sr.ready" and doc["kafka_bootstrap"] == "broker-1:9092"


def test_config_show_redacts_secrets_of_every_setting_model() -> None:
    from pydantic import BaseModel, SecretStr

    from worker.cli.config import REDACTED, _redact

    class Nested(BaseModel):
        token: SecretStr
        names: list[str]

    assert _redact({"a": Nested(token=SecretStr("t0ken"), names=["x"])}) == {"a": {"token": REDACTED, "names": ["x"]}}
    assert _redact({"k": "v", "n": None}, secret=True) == {"k": REDACTED, "n": REDACTED}
    assert _redact(None) is None and _redact(Path("/p")) == "/p"


# ----------------------------------------------------------------------------- commands' own output
def test_sr_schemas_lists_what_the_codec_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.adapters.avro import RECORD_NAMES, AvroCodec

    assert main(["schemas", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["fingerprint"] for r in rows] == [f.hex for f in AvroCodec().fingerprints()]
    writes = {r["record"]: r["fingerprint"] for r in rows if r["writes"]}
    assert writes == {name: AvroCodec().fingerprint(name).hex() for name in RECORD_NAMES}
    assert main(["schemas", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == rows  # one array of the same objects


def test_sr_submit_reads_json_json_arrays_and_json_lines() -> None:
    from worker.cli.submit import parse_documents

    assert parse_documents('{"a": 1}') == [{"a": 1}]
    assert parse_documents('[{"a": 1}, {"a": 2}]') == [{"a": 1}, {"a": 2}]
    assert parse_documents('{"a": 1}\n\n{"a": 2}\n') == [{"a": 1}, {"a": 2}]
    with pytest.raises(InputError, match="line 2"):
        parse_documents('{"a": 1}\n{"a": \n')
    with pytest.raises(InputError, match="not JSON"):
        parse_documents("{nope")


def test_every_help_page_renders() -> None:
    # argparse formats help lazily: a stray "%" in a help text would only fail when asked.
    for _prog, parser in _every_parser(build_parser()):
        assert parser.format_help().startswith("usage: ")


def test_follow_prints_one_array_for_json_and_one_line_per_row_for_jsonl(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli.follow_render import Printer

    rows = [{"_kind": "status", "run_id": "a", "status": "READY"}, {"_kind": "status", "run_id": "b"}]
    printer = Printer("json")
    for row in rows:
        printer.emit(row)
    assert capsys.readouterr().out == ""  # nothing until the end
    printer.close()
    assert json.loads(capsys.readouterr().out) == [{"run_id": "a", "status": "READY"}, {"run_id": "b"}]
    printer = Printer("jsonl")
    for row in rows:
        printer.emit(row)
    printer.close()
    assert [json.loads(line)["run_id"] for line in capsys.readouterr().out.splitlines()] == ["a", "b"]
