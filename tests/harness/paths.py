"""Paths in the repository the harness reads."""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["EXAMPLE_POLICY", "REPO"]

#: The repository root.
REPO: Final = Path(__file__).resolve().parents[2]
#: The example policy every test and benchmark world starts from.
EXAMPLE_POLICY: Final = REPO / "schemas" / "policy.example.toml"
