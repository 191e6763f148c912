"""Audit runpacks: deterministic export of one run's whole story, offline verification, retention.

Format (pure):

* :mod:`worker.runpack.format` — the v1 layout, byte caps, manifest and root hash;
* :mod:`worker.runpack.artifacts` — derived artifacts (receipts, publications, run summary).

Export (:mod:`worker.runpack.export`, :func:`export_run`):

* :mod:`worker.runpack.collect` — assemble a run's runpack in memory from S3 truth + the outbox;
* :mod:`worker.runpack.targets` — the export target protocol, S3 targets, :func:`open_target`;
* :mod:`worker.runpack.directory_target` — write-once, symlink-safe export into a directory.

Verification (:mod:`worker.runpack.verify`, :func:`verify_runpack`), offline:

* :mod:`worker.runpack.sources` — read a runpack directory or S3 prefix safely;
* :mod:`worker.runpack.manifest_checks` — manifest, listed files, location;
* :mod:`worker.runpack.content` — what the content checks share;
* :mod:`worker.runpack.ledger_checks` — ledger (typed bodies), intent, plan, facts views, lineage
  (supersedes / revocations), run.json;
* :mod:`worker.runpack.publication_checks` — publications against the ledger;
* :mod:`worker.runpack.report` — problems and the report.

Retention: :mod:`worker.runpack.retention` — S3 Object Lock on export, pruning of index working data.
"""

from worker.runpack.export import DirectoryTarget, ExportResult, Runpack, S3Target, collect_runpack, export_run
from worker.runpack.format import FORMAT_VERSION, MANIFEST_NAME, Manifest
from worker.runpack.retention import LockMode, PruneResult, Retention, prune_index
from worker.runpack.verify import DirectorySource, Problem, S3Source, VerifyReport, open_source, verify_runpack

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "DirectorySource",
    "DirectoryTarget",
    "ExportResult",
    "LockMode",
    "Manifest",
    "Problem",
    "PruneResult",
    "Retention",
    "Runpack",
    "S3Source",
    "S3Target",
    "VerifyReport",
    "collect_runpack",
    "export_run",
    "open_source",
    "prune_index",
    "verify_runpack",
]
