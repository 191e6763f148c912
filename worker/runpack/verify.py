"""Offline verification of a runpack (a directory, or an S3 prefix), fail closed.

Verification needs nothing but the runpack's own files: no Kafka, Postgres or SR state.
It collects *every* problem it finds instead of stopping at the first one; the runpack
verifies only when the list is empty. The checks, in the order they run:

1. **Manifest and files** (:mod:`worker.runpack.manifest_checks`): the manifest is present,
   canonical, of a known format and version, and its root hash recomputes; every listed
   file is present, within its cap, of the listed size and sha256; nothing unlisted.
2. **Ledger, intent, plan, facts views** (:mod:`worker.runpack.ledger_checks`): hash chain,
   typed bodies and derived state; the intent derives the run id; the plan and every
   referenced facts view (with its receipts) belong to this run; what each READY supersedes
   and what each REVOKED withdraws fit the ledger before them.
3. **Publications** (:mod:`worker.runpack.publication_checks`): each one decodes and is the
   event its ledger entry records.
4. **run.json** (:mod:`worker.runpack.ledger_checks`) against the ledger, and the runpack's
   location against its manifest (:mod:`worker.runpack.manifest_checks`).

Findings go to a :class:`~worker.runpack.report.VerifyReport`; files are read through a
:class:`~worker.runpack.sources.RunpackSource`. Both are re-exported here.
"""

from __future__ import annotations

from worker.runpack.content import RunContent
from worker.runpack.format import MANIFEST_NAME, Progress
from worker.runpack.ledger_checks import (
    check_facts,
    check_intent,
    check_ledger,
    check_lineage,
    check_plan,
    check_run_summary,
)
from worker.runpack.manifest_checks import check_files, check_location, read_manifest
from worker.runpack.publication_checks import check_publications
from worker.runpack.report import Problem, VerifyReport, problem_codes, summarize
from worker.runpack.sources import DirectorySource, RunpackSource, S3Source, open_source

__all__ = [
    "DirectorySource",
    "Problem",
    "Progress",
    "RunpackSource",
    "S3Source",
    "VerifyReport",
    "open_source",
    "problem_codes",
    "summarize",
    "verify_runpack",
]


def verify_runpack(source: RunpackSource, *, expect_root_hash: str | None = None,
                   progress: Progress | None = None) -> VerifyReport:
    """Verify a runpack offline; never raises for anything wrong *in* the runpack.

    Args:
        source: where the runpack's files are.
        expect_root_hash: a root hash recorded out of band at export time; a runpack whose
            manifest carries another one is reported (``ROOT_HASH_UNEXPECTED``).
        progress: ``progress(path, done, total)`` after each listed file.

    Returns:
        The report: ``ok`` only when no problem was found.

    Raises:
        S3UnavailableError / S3AccessError: the S3 listing itself failed (nothing could be
            checked; a failing *read* of one file is reported instead).
    """
    report = VerifyReport(location=source.location)
    present = source.list_files(report)
    manifest = read_manifest(source, present, report)
    if manifest is None:
        return report
    report.run_id = manifest.run_id
    report.root_hash = manifest.root_hash
    if expect_root_hash is not None and expect_root_hash != manifest.root_hash:
        report.add("ROOT_HASH_UNEXPECTED", MANIFEST_NAME,
                   f"manifest root hash {manifest.root_hash} is not the expected {expect_root_hash}")
    content = RunContent(manifest, check_files(source, manifest, present, report, progress), report)
    check_ledger(content)
    check_intent(content)
    check_plan(content)
    check_facts(content)
    check_lineage(content)
    check_publications(content)
    check_run_summary(content)
    check_location(source, manifest, report)
    return report
