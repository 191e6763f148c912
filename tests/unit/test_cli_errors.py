"""Bad CLI input ends in one ``sr: error:`` line and exit code 2, never a traceback (no server needed)."""

from __future__ import annotations

import argparse

import pytest

from worker.cli.main import COMMAND_GROUPS, build_parser, main


@pytest.mark.parametrize(("argv", "message"), [
    (["submit", "/nonexistent/intent.json"], "cannot read intent file /nonexistent/intent.json"),
    (["trigger", "not-a-run-id", "--kind", "REEMIT"], "invalid RunTrigger: run_id"),
    (["replay", "--topic", "sr.ready", "--partition", "0", "--from-time", "yesterday-ish"],
     "--from-time: not an ISO-8601 time"),
])
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SR_KAFKA_BOOTSTRAP", "127.0.0.1:9")  # nothing listens: no command may get that far
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sr: error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_every_command_module_registers_its_own_command() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMAND_GROUPS)
