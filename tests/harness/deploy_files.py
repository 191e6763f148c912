"""Readers of deploy/ files for the tests that check them: the Dockerfile, the Grafana dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["DASHBOARD", "DOCKERFILE", "dashboard_panels", "dockerfile_instructions"]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DASHBOARD = DEPLOY / "dashboards" / "sr-overview.json"


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``(KEYWORD, rest)`` per instruction, continuation lines joined, comments dropped."""
    text = path.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def dashboard_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel of a Grafana dashboard, those inside collapsed rows included."""
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out
