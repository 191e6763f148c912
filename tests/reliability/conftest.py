"""Fixtures and knobs of the reliability and security suite (``tests/reliability``).

``make test`` runs every test here once (one kill-matrix round per crash point, a few
hundred hypothesis examples per property). ``make soak`` sets ``SR_SOAK=1``: three rounds per
crash point and the hypothesis profile ``soak`` (at least 10,000 examples per property).

Hypothesis profiles are applied per test through :data:`HOSTILE` rather than
``settings.load_profile`` (another suite's conftest loads its own profile globally, and the
last one loaded would win).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.evidence_fixtures import upload_bundle_gate, upload_member_concat_gate
from tests.integration.conftest import GATE_3A_MEMBERS, GATE_6B_MEMBERS
from tests.sr_harness import SREnv

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


def report(line: str) -> None:
    """Add one line to the reliability summary printed at the end of the session."""
    REPORT.append(line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print what the reliability tests measured (crash points, re-sends, recoveries)."""
    if REPORT:
        terminalreporter.section("reliability summary")
        for line in REPORT:
            terminalreporter.write_line(line)


EvidenceWriter = Callable[..., None]


@pytest.fixture
def write_evidence(sr_env: SREnv, s3_client: Any) -> EvidenceWriter:
    """``write_evidence(name, tamper=None, extra_6b=None)`` seeds the example policy's two gates.

    ``tamper="6B"`` changes a 6B member after its flag was written (→ QUARANTINED);
    ``extra_6b`` adds members to the 6B bundle (a slow-to-verify run).
    """

    def _write(name: str, *, tamper: str | None = None, extra_6b: dict[str, bytes] | None = None) -> None:
        root = sr_env.evidence_prefix(name)
        upload_member_concat_gate(s3_client, sr_env.bucket, root, "gates/3A", GATE_3A_MEMBERS)
        upload_bundle_gate(
            s3_client, sr_env.bucket, root, "gates/6B", {**GATE_6B_MEMBERS, **(extra_6b or {})},
            tamper_after_flag={"transactions/part-0000.csv": b"tx_id,account_id,amount\n1,1,1000\n"}
            if tamper == "6B" else None,
        )

    return _write
