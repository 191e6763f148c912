"""Integration tests run on the real servers; their fixtures are in ``tests/conftest.py``.

The names below moved to :mod:`tests.harness.evidence`; they stay importable from here while
test modules still use the old path.
"""

from __future__ import annotations

from tests.harness.evidence import GATE_3A_MEMBERS, GATE_6B_MEMBERS, EvidenceWriter

__all__ = ["GATE_3A_MEMBERS", "GATE_6B_MEMBERS", "EvidenceWriter"]
