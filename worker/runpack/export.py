"""Export a run's runpack from S3 truth (and the Postgres outbox) to a directory or S3.

Export is deterministic: the runpack is assembled by :func:`~worker.runpack.collect.collect_runpack`
from the exact bytes of S3 truth objects and canonical JSON derived from them, and the only
time in it is the commit time of the newest ledger entry. Exporting the same run twice
gives byte-identical runpacks.

Write order: every artifact first (in path order), ``manifest.json`` last, so an interrupted
export leaves a runpack without manifest, which never verifies. Every write is write-once:
an identical existing file is accepted (re-export is idempotent), a different one is a
:class:`~worker.errors.RunpackConflictError`. All checks that can refuse an export (unsafe
ids, unsafe target, size caps, conflicts, missing Object Lock) run before the first write.
Targets are in :mod:`worker.runpack.targets` (S3) and :mod:`worker.runpack.directory_target`;
both, and the collection step, are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.app.ports import RunIndex
from worker.app.truth import TruthStore
from worker.errors import RunpackError
from worker.runpack.collect import Runpack, check_run_id, collect_runpack
from worker.runpack.format import Progress
from worker.runpack.targets import DirectoryTarget, ExportTarget, S3Target, open_target

__all__ = [
    "DirectoryTarget",
    "ExportResult",
    "ExportTarget",
    "Progress",
    "Runpack",
    "S3Target",
    "collect_runpack",
    "export_run",
    "open_target",
]


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote."""

    location: str
    run_id: str
    root_hash: str
    files: int
    bytes: int


def export_run(
    run_id: str,
    target: ExportTarget,
    *,
    truth: TruthStore,
    index: RunIndex | None,
    tenant_id: str | None = None,
    namespace: str | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Export one run's runpack to ``target``; manifest last.

    The run's tenant and namespace come from the index row; ``tenant_id``/``namespace``
    override them when the index has no row (e.g. after a rebuild) and must agree with it
    otherwise. Publications come from the index (none without a row).

    Raises:
        UnsafeKeyError: a malformed run id or an unsafe tenant/namespace/scenario.
        RunpackError: the run is unknown, or its runpack cannot be built (see
            :func:`collect_runpack`); RunpackTargetError / RunpackConflictError from the target.
        IntegrityError / ObjectNotFoundError: S3 truth fails verification.
        ObjectLockUnsupportedError: retention asked for on a bucket without Object Lock.
        PostgresUnavailableError / S3UnavailableError / S3AccessError / PostgresError.
    """
    check_run_id(run_id)
    row = index.get(run_id) if index is not None else None
    if row is not None:
        for given, stored, what in ((tenant_id, row.tenant_id, "tenant"), (namespace, row.namespace, "namespace")):
            if given is not None and given != stored:
                raise RunpackError(f"run {run_id} belongs to {what} {stored!r}, not {given!r}")
        tenant_id, namespace = row.tenant_id, row.namespace
    if tenant_id is None or namespace is None:
        raise RunpackError(f"run {run_id} is not in the index; give --tenant and --namespace to export it from S3")
    publications = index.publications(run_id) if index is not None and row is not None else []
    runpack = collect_runpack(truth, run_id, tenant_id=tenant_id, namespace=namespace, publications=publications,
                              fallback_intent=row.intent if row is not None else None)
    rel_root = runpack.relative_root()
    files = runpack.files_in_write_order()
    target.preflight(rel_root, files)
    total = len(files)
    for done, (path, data) in enumerate(files, start=1):
        target.write(rel_root, path, data)
        if progress is not None:
            progress(path, done, total)
    target.finish(rel_root)
    return ExportResult(
        location=target.location(rel_root),
        run_id=run_id,
        root_hash=runpack.manifest.root_hash,
        files=total,
        bytes=sum(len(data) for _, data in files),
    )

