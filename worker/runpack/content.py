"""What the content checks of a runpack share: the files read, and what the earlier checks learned.

The ledger check runs first and fills :attr:`RunContent.entries` and the typed
:attr:`RunContent.bodies`; the intent, plan and facts checks add the intent, plan and facts
views they could parse; the publication and ``run.json`` checks compare against all of it.
A check that needs something an earlier check could not establish skips that comparison:
the earlier check has already reported why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NamedTuple

from worker.core.facts import FactsView
from worker.core.ledger import LedgerEntry, LedgerKind, RunState
from worker.core.ledger_bodies import LedgerBody, ReadyBody, RevokedBody, SupersededBody
from worker.core.models import EventType, RunIntent
from worker.core.plan import Plan
from worker.errors import UnsafeKeyError
from worker.runpack.format import ArtifactKind, Manifest, artifact_kind
from worker.runpack.report import VerifyReport

__all__ = ["RECORDED_BY", "RecordedFact", "RunContent", "recorded_fact"]


class RecordedFact(NamedTuple):
    """The control fact one ledger entry records."""

    kind: LedgerKind
    facts_view_hash: str
    facts_view_uri: str


def recorded_fact(body: LedgerBody | None) -> RecordedFact | None:
    """The control fact a typed body records, or None.

    A READY body records its ``facts_view_hash``; a SUPERSEDED body announces its
    ``new_facts_view_hash``; a REVOKED body withdraws its ``facts_view_hash`` (contract §11).
    Every other body (and a body that did not parse) records none.
    """
    if isinstance(body, ReadyBody):
        return RecordedFact(LedgerKind.READY, body.facts_view_hash, body.facts_view_uri)
    if isinstance(body, SupersededBody):
        return RecordedFact(LedgerKind.SUPERSEDED, body.new_facts_view_hash, body.facts_view_uri)
    if isinstance(body, RevokedBody):
        return RecordedFact(LedgerKind.REVOKED, body.facts_view_hash, body.facts_view_uri)
    return None


#: The ledger kind that records each kind of control fact.
RECORDED_BY: Final[Mapping[EventType, LedgerKind]] = {
    EventType.READY: LedgerKind.READY,
    EventType.SUPERSEDE: LedgerKind.SUPERSEDED,
    EventType.REVOKED: LedgerKind.REVOKED,
}


class RunContent:
    """The content of one runpack as the checks learn it (see the module docstring).

    Args:
        manifest: the parsed, checked manifest.
        contents: path → bytes of every listed file that could be read.
        report: where every check adds its problems.
    """

    def __init__(self, manifest: Manifest, contents: Mapping[str, bytes], report: VerifyReport) -> None:
        self.manifest = manifest
        self.run_id = manifest.run_id
        self.contents = contents
        self.listed = {f.path for f in manifest.files}
        self.report = report
        #: The ledger entries that parsed, in seq order (gaps possible, each one reported).
        self.entries: list[LedgerEntry] = []
        #: seq → typed body, for every entry in :attr:`entries` whose body fits its kind.
        self.bodies: dict[int, LedgerBody] = {}
        #: True when every entry ``0..n-1`` is listed, readable, valid and chained.
        self.complete_ledger = False
        self.state: RunState | None = None
        self.intent: RunIntent | None = None
        self.plan: Plan | None = None
        self.plan_hash: str | None = None
        self.views: dict[str, FactsView] = {}

    def add(self, code: str, path: str | None, detail: str) -> None:
        """Record one problem in the report."""
        self.report.add(code, path, detail)

    def required(self, path: str) -> bytes | None:
        """The bytes of a required file, or None (reported if not even listed)."""
        if path not in self.listed:
            self.add("REQUIRED_ARTIFACT_MISSING", path, "the manifest does not list this required file")
            return None
        return self.contents.get(path)

    def listed_of(self, kind: ArtifactKind) -> list[str]:
        """The listed paths of one artifact kind, sorted (paths outside the layout are reported already)."""
        found = []
        for path in sorted(self.listed):
            try:
                if artifact_kind(path) is kind:
                    found.append(path)
            except UnsafeKeyError:
                continue
        return found

    def typed_bodies(self) -> list[LedgerBody]:
        """The typed bodies in ledger order (entries whose body did not fit are left out)."""
        return [self.bodies[e.seq] for e in self.entries if e.seq in self.bodies]

    def entry_recording(self, event_type: EventType, facts_view_hash: str) -> LedgerEntry | None:
        """The first ledger entry recording the ``event_type`` fact of ``facts_view_hash``, or None.

        A READY fact is recorded by a READY entry, a SUPERSEDE fact by a SUPERSEDED entry, a
        REVOKED fact by a REVOKED entry (contract §11).
        """
        kind = RECORDED_BY.get(event_type)
        if kind is None:
            return None
        for entry in self.entries:
            fact = recorded_fact(self.bodies.get(entry.seq))
            if fact is not None and fact.kind is kind and fact.facts_view_hash == facts_view_hash:
                return entry
        return None
