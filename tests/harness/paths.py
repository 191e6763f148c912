"""Paths in the repository the harness reads."""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["EXAMPLE_POLICY", "REPO", "shared_evidence_policy"]

#: The repository root.
REPO: Final = Path(__file__).resolve().parents[2]
#: The example policy every test and benchmark world starts from.
EXAMPLE_POLICY: Final = REPO / "schemas" / "policy.example.toml"


def shared_evidence_policy() -> bytes:
    """The example policy with gate_6B unscoped: for tests and benchmarks that let many runs
    (different seeds or scenarios) share one evidence root on purpose, to save writes. Under
    the example policy itself those runs would be QUARANTINED ``INSTANCE_MISMATCH``: gate_6B's
    receipt names one run (contract §4)."""
    lines = EXAMPLE_POLICY.read_bytes().splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(b"scope")]
    if len(kept) != len(lines) - 1:
        raise RuntimeError("the example policy no longer has exactly one scoped gate: update the harness")
    return b"".join(kept)
