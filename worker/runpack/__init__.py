"""Audit runpacks: deterministic export of one run's whole story, offline verification, retention.

* :mod:`worker.runpack.format` — the v1 layout, byte caps, manifest and root hash (pure);
* :mod:`worker.runpack.artifacts` — derived artifacts (receipts, publications, run summary);
* :mod:`worker.runpack.export` — collect a run from S3 truth + the outbox, write it out;
* :mod:`worker.runpack.verify` — verify a runpack directory or S3 prefix, offline;
* :mod:`worker.runpack.retention` — S3 Object Lock on export, pruning of index working data.
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
