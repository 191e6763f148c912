"""The one time/duration grammar of the ``sr`` command line (worker.cli.timespec)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone

import pytest

from worker.cli.main import build_parser
from worker.cli.timespec import duration_arg, is_relative, parse_duration, parse_time, time_arg

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-01T08:30:00Z", datetime(2026, 12, 1, 8, 30, tzinfo=UTC)),
    ("2026-12-01T08:30:00+02:00", datetime(2026, 12, 1, 8, 30, tzinfo=timezone(timedelta(hours=2)))),
    ("2026-12-01T08:30:00", datetime(2026, 12, 1, 8, 30, tzinfo=UTC)),  # no zone: UTC
    ("2026-12-01T08:30", datetime(2026, 12, 1, 8, 30, tzinfo=UTC)),
    ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),  # a date: its midnight UTC
    (" 2026-12-01 ", datetime(2026, 12, 1, tzinfo=UTC)),
    ("30s", NOW - timedelta(seconds=30)),
    ("15m", NOW - timedelta(minutes=15)),
    ("2h", NOW - timedelta(hours=2)),
    ("7d", NOW - timedelta(days=7)),
    ("1.5h", NOW - timedelta(minutes=90)),
    ("0s", NOW),
])
def test_a_time_is_iso_8601_or_a_duration_ago(text: str, expected: datetime) -> None:
    parsed = parse_time(text, now=NOW)
    assert parsed == expected and parsed.tzinfo is not None


@pytest.mark.parametrize("text", ["", "yesterday", "2h ago", "-2h", "2 h", "2w", "h", "12", "2026-13-01",
                                  "2026-12-01T25:00", "1e3s", "nan", "inf"])
def test_anything_else_is_not_a_time(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a time: .* \(expected an ISO-8601 time"):
        parse_time(text, now=NOW)


@pytest.mark.parametrize(("text", "bare_unit", "seconds"), [
    ("30", 1.0, 30.0), ("2.5", 1.0, 2.5), ("30s", 1.0, 30.0), ("15m", 1.0, 900.0), ("2h", 1.0, 7200.0),
    ("7d", 1.0, 604800.0), ("0", 1.0, 0.0), ("30", 86400.0, 2592000.0), ("12h", 86400.0, 43200.0),
])
def test_a_duration_is_a_number_with_a_unit_or_a_plain_number_of_the_arguments_unit(
        text: str, bare_unit: float, seconds: float) -> None:
    assert parse_duration(text, bare_unit=bare_unit) == seconds


@pytest.mark.parametrize("text", ["", "-1", "-1s", "soon", "1e309", "inf", "nan", "1.s", "2w", "s"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_the_argparse_types_turn_bad_values_into_usage_errors() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a time: 'someday'"):
        time_arg("someday")
    with pytest.raises(argparse.ArgumentTypeError, match="must be at least 1 s"):
        duration_arg(minimum=1.0)("0.5")
    assert duration_arg(bare_unit=60.0)("2") == 120.0
    assert is_relative("2h") and is_relative(" 30s ") and not is_relative("2026-12-01")


@pytest.mark.parametrize(("argv", "dest"), [
    (["runs", "--since", "{t}"], "since"),
    (["replay", "--topic", "sr.ready", "--partition", "0", "--from-time", "{t}"], "from_time"),
])
def test_every_time_argument_uses_the_one_grammar(argv: list[str], dest: str) -> None:
    parser = build_parser()
    for text, expected in (("2026-12-01T08:30:00Z", datetime(2026, 12, 1, 8, 30, tzinfo=UTC)),
                           ("2026-12-01T08:30:00", datetime(2026, 12, 1, 8, 30, tzinfo=UTC))):
        assert getattr(parser.parse_args([a.replace("{t}", text) for a in argv]), dest) == expected
    before = datetime.now(UTC)
    ago = getattr(parser.parse_args([a.replace("{t}", "2h") for a in argv]), dest)
    assert before - timedelta(hours=2, seconds=5) <= ago <= datetime.now(UTC) - timedelta(hours=2)


def test_follow_from_takes_beginning_end_or_a_time_as_milliseconds() -> None:
    parser = build_parser()
    assert parser.parse_args(["follow", "ready"]).start == "beginning"
    assert parser.parse_args(["follow", "ready", "--from", "end"]).start == "end"
    at = parser.parse_args(["follow", "ready", "--from", "2026-12-01T00:00:00"]).start
    assert at == int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000)
    ago = parser.parse_args(["follow", "ready", "--from", "15m"]).start
    assert abs(ago - (datetime.now(UTC) - timedelta(minutes=15)).timestamp() * 1000) < 5000


@pytest.mark.parametrize(("argv", "dest", "seconds"), [
    (["replay", "--topic", "t", "--partition", "0", "--idle-timeout", "500ms"], None, None),
    (["replay", "--topic", "t", "--partition", "0", "--idle-timeout", "2m"], "idle_timeout", 120.0),
    (["replay", "--topic", "t", "--partition", "0", "--idle-timeout", "4"], "idle_timeout", 4.0),
    (["topics", "create", "--timeout", "1m"], "timeout", 60.0),
    (["dev", "--start-timeout", "2m"], "start_timeout", 120.0),
    (["engine", "simulate", "--delay", "1.5s"], "delay", 1.5),
    (["index", "prune", "--older-than", "7"], "older_than", 7 * 86400.0),  # plain number: days, as always
    (["index", "prune", "--older-than", "36h"], "older_than", 36 * 3600.0),
])
def test_every_duration_argument_uses_the_one_grammar(argv: list[str], dest: str | None,
                                                      seconds: float | None) -> None:
    parser = build_parser()
    if dest is None:
        with pytest.raises(SystemExit) as stopped:
            parser.parse_args(argv)
        assert stopped.value.code == 2
        return
    assert getattr(parser.parse_args(argv), dest) == seconds
