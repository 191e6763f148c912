"""Fixtures and knobs of the reliability and security suite (``tests/reliability``).

``make test`` runs every test here once (one kill-matrix round per crash point, a few
hundred hypothesis examples per property). ``make soak`` sets ``SR_SOAK=1``: three rounds per
crash point and the hypothesis profile ``soak`` (at least 10,000 examples per property).

Hypothesis profiles are applied per test through :data:`HOSTILE` rather than
``settings.load_profile`` (another suite's conftest loads its own profile globally, and the
last one loaded would win). The ``write_evidence`` fixture is the one in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

SOAK = os.environ.get("SR_SOAK", "").strip().lower() in {"1", "true", "yes"}
#: Kill-matrix rounds per crash point.
ROUNDS = 3 if SOAK else 1

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("reliability", max_examples=300, deadline=None, suppress_health_check=_SUPPRESS)
settings.register_profile("soak", max_examples=10_000, deadline=None, suppress_health_check=_SUPPRESS)
HOSTILE_PROFILE = "soak" if SOAK else "reliability"
#: Decorator: ``@HOSTILE`` on a ``@given`` test applies the active reliability profile.
HOSTILE = settings(settings.get_profile(HOSTILE_PROFILE))

#: Lines collected by the tests and printed in the terminal summary (timings, re-send counts).
REPORT: list[str] = []
_REPORT_START = pytest.StashKey[int]()


def report(line: str) -> None:
    """Add one line to the reliability summary printed at the end of the session."""
    REPORT.append(line)


#: ``user_properties`` key of a summary line: reports carry them to the process that prints
#: the terminal summary (with pytest-xdist, not the one that ran the test).
REPORT_PROPERTY = "sr_reliability_summary"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Remember where this test's summary lines start."""
    item.stash[_REPORT_START] = len(REPORT)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Attach the summary lines a test added to its teardown report (printed by tests/conftest.py)."""
    rep = yield
    if rep.when == "teardown":
        start = item.stash.get(_REPORT_START, len(REPORT))
        rep.user_properties.extend((REPORT_PROPERTY, line) for line in REPORT[start:])
    return rep
