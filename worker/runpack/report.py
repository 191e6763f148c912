"""What runpack verification reports: one :class:`Problem` per finding, gathered in a :class:`VerifyReport`.

Every check of :func:`worker.runpack.verify.verify_runpack` adds its findings here instead
of raising, so one run of the verifier names *every* problem of a runpack, in the order the
checks found them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError

__all__ = ["Problem", "VerifyReport", "problem_codes", "summarize", "validation_summary"]

#: Longest problem detail kept (characters); longer details are cut and end in "...".
MAX_DETAIL_CHARS: Final = 2000


@dataclass(frozen=True, slots=True)
class Problem:
    """One verification finding: a stable ``code``, the file it concerns, and why."""

    code: str
    path: str | None
    detail: str

    def to_dict(self) -> dict[str, str | None]:
        """JSON shape of the problem."""
        return {"code": self.code, "path": self.path, "detail": self.detail}


@dataclass
class VerifyReport:
    """Result of :func:`~worker.runpack.verify.verify_runpack`. ``ok`` only when there is no problem at all."""

    location: str
    problems: list[Problem] = field(default_factory=list)
    run_id: str | None = None
    root_hash: str | None = None
    format_version: int | None = None
    files_checked: int = 0

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.problems

    def add(self, code: str, path: str | None, detail: str) -> None:
        """Record one problem (the detail folded onto one line, at most 2000 characters)."""
        line = " ".join(detail.split())
        if len(line) > MAX_DETAIL_CHARS:
            line = line[:MAX_DETAIL_CHARS - 3] + "..."
        self.problems.append(Problem(code, path, line))

    def codes(self) -> list[str]:
        """The problem codes, in the order found."""
        return [p.code for p in self.problems]

    def to_dict(self) -> dict[str, Any]:
        """JSON shape of the report."""
        return {
            "ok": self.ok,
            "location": self.location,
            "run_id": self.run_id,
            "root_hash": self.root_hash,
            "format_version": self.format_version,
            "files_checked": self.files_checked,
            "problems": [p.to_dict() for p in self.problems],
        }


def validation_summary(exc: ValidationError) -> str:
    """The first five field errors of a pydantic failure on one line (no input values echoed)."""
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
             for e in exc.errors(include_url=False, include_input=False)[:5]]
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def problem_codes(problems: Iterable[Problem]) -> list[str]:
    """Codes of ``problems`` (a convenience for callers and tests)."""
    return [p.code for p in problems]


def summarize(report: VerifyReport) -> Sequence[str]:
    """Human-readable lines of a report."""
    return [f"{p.code}: {p.path + ': ' if p.path else ''}{p.detail}" for p in report.problems]
