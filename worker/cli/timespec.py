"""The one time and duration grammar of every ``sr`` argument that takes a time or a duration.

A **time** (``--from-time``, ``--since``, ``--from`` of ``sr follow``, ``--retain-until``) is

* an ISO-8601 date or date-time, with or without a zone (``2026-12-01``,
  ``2026-12-01T08:30``, ``2026-12-01T08:30:00Z``, ``2026-12-01T08:30:00+02:00``); a value
  without a zone is UTC, a plain date is its midnight UTC; or
* a relative duration ``<number><unit>`` meaning *that long ago*: ``30s``, ``15m``, ``2h``,
  ``7d`` (``1.5h`` works too).

A **duration** (``--idle-timeout``, ``--timeout``, ``--start-timeout``, ``--delay``,
``--older-than``) is ``<number><unit>`` with the same units, or a plain number in the
argument's own unit (seconds for every timeout; days for ``sr index prune --older-than``,
as it always was).

The ``*_arg`` functions are argparse ``type=`` callables: a bad value is a usage error, one
``sr: error:`` line with exit code 2, before any configuration is read or server contacted.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["DURATION_HELP", "TIME_HELP", "UNITS", "duration_arg", "is_relative", "parse_duration", "parse_time",
           "time_arg"]

#: Seconds per duration unit.
UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

#: What help texts say about the grammar (one wording everywhere).
TIME_HELP: Final = "an ISO-8601 time (no zone = UTC) or a duration ago: 30s, 15m, 2h, 7d"
DURATION_HELP: Final = "seconds, or a duration: 30s, 15m, 2h, 7d"

_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>[smhd])")
_PLAIN_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _duration_seconds(text: str) -> float | None:
    match = _DURATION.fullmatch(text)
    if match is None:
        return None
    return float(match["number"]) * UNITS[match["unit"]]


def is_relative(text: str) -> bool:
    """Whether ``text`` is a relative time (a duration ago, like ``2h``) rather than an ISO one."""
    return _duration_seconds(text.strip()) is not None


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """``text`` as an aware UTC-or-zoned datetime (see the module docstring for the grammar).

    ``now`` (aware; default the current time) is what a relative duration counts back from.

    Raises:
        ValueError: ``text`` is neither an ISO-8601 date/date-time nor a duration like ``2h``;
            the message quotes the input and shows the accepted forms.
    """
    value = text.strip()
    ago = _duration_seconds(value)
    if ago is not None:
        return (now or datetime.now(UTC)) - timedelta(seconds=ago)
    try:
        # Python 3.11's fromisoformat reads "Z" and every ISO-8601 offset form.
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (expected {TIME_HELP})") from None
    if _PLAIN_DATE.fullmatch(value) or parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed


def parse_duration(text: str, *, bare_unit: float = 1.0) -> float:
    """``text`` as a number of seconds: ``30s``/``15m``/``2h``/``7d``, or a plain number
    counted in ``bare_unit`` seconds (1 = seconds; 86400 = days).

    Raises:
        ValueError: not a duration, negative, or not finite.
    """
    value = text.strip()
    seconds = _duration_seconds(value)
    if seconds is None and _PLAIN_NUMBER.fullmatch(value):
        seconds = float(value) * bare_unit
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"not a duration: {text!r} (expected {DURATION_HELP})")
    return seconds


def time_arg(text: str) -> datetime:
    """argparse ``type=`` for a time argument (see :func:`parse_time`).

    Raises:
        argparse.ArgumentTypeError: not a time (argparse turns it into a usage error).
    """
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration_arg(*, bare_unit: float = 1.0, minimum: float = 0.0) -> Callable[[str], float]:
    """An argparse ``type=`` for a duration argument whose plain numbers count ``bare_unit``
    seconds and whose value must be at least ``minimum`` seconds; the callable returns seconds.
    """
    def parse(text: str) -> float:
        try:
            seconds = parse_duration(text, bare_unit=bare_unit)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if seconds < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g} s, got {text!r}")
        return seconds

    return parse
