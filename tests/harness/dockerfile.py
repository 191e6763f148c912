"""The instructions of deploy/Dockerfile, for the tests that check the image build."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DOCKERFILE", "dockerfile_instructions"]

DOCKERFILE = Path(__file__).resolve().parents[2] / "deploy" / "Dockerfile"


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
