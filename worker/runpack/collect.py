"""Collect one run's runpack in memory from S3 truth and the run's outbox rows, deterministically.

Every artifact is either the exact bytes of an S3 truth object (plan, ledger entries, facts
views — each verified on read) or canonical JSON derived from them and from the run's
publication rows (:mod:`worker.runpack.artifacts`), and the only time in the runpack is the
commit time of the newest ledger entry: collecting the same run twice gives the same bytes.
Every size cap is checked here, before anything is written anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from worker.app.truth import TruthStore
from worker.core.facts import facts_view_bytes
from worker.core.identity import run_id_of
from worker.core.ledger import derive_state, entry_bytes, entry_hash
from worker.core.ledger_bodies import LedgerBody, parse_body
from worker.core.models import RunIntent, parse_intent
from worker.core.plan import plan_bytes
from worker.errors import IntegrityError, IntentInvalidError, RunpackError, UnsafeKeyError
from worker.runpack.artifacts import (
    PublicationSource,
    facts_references,
    intent_bytes,
    plan_references,
    publications_bytes,
    receipts_bytes,
    run_summary,
    run_summary_bytes,
)
from worker.runpack.format import (
    MANIFEST_NAME,
    MAX_FILES,
    Manifest,
    artifact_cap,
    artifact_kind,
    build_manifest,
    facts_path,
    ledger_path,
    manifest_bytes,
    receipts_path,
    runpack_root,
)

__all__ = ["Runpack", "check_run_id", "collect_runpack"]

_RUN_ID_RE: Final = re.compile(r"[0-9a-f]{32}")


def check_run_id(run_id: str) -> str:
    """``run_id`` itself, once it is known to be 32 lowercase hex characters.

    Raises:
        UnsafeKeyError: it is not.
    """
    if not isinstance(run_id, str) or _RUN_ID_RE.fullmatch(run_id) is None:
        raise UnsafeKeyError(f"run_id must be 32 lowercase hex characters, got {str(run_id)[:40]!r}")
    return run_id


@dataclass(frozen=True)
class Runpack:
    """A complete runpack in memory: the artifacts (path → bytes) and the manifest."""

    manifest: Manifest
    artifacts: dict[str, bytes] = field(repr=False)

    @property
    def manifest_data(self) -> bytes:
        """Exact bytes of ``manifest.json``."""
        return manifest_bytes(self.manifest)

    def relative_root(self, prefix: str = "") -> str:
        """Where the runpack goes below an export target (see :func:`runpack_root`).

        Raises:
            UnsafeKeyError: an unsafe prefix or identifier.
        """
        m = self.manifest
        return runpack_root(prefix, tenant_id=m.tenant_id, namespace=m.namespace, scenario_id=m.scenario_id,
                            run_id=m.run_id, plan_hash=m.plan_hash)

    def files_in_write_order(self) -> list[tuple[str, bytes]]:
        """Every artifact in path order, then the manifest."""
        ordered = [(path, self.artifacts[path]) for path in sorted(self.artifacts)]
        ordered.append((MANIFEST_NAME, self.manifest_data))
        return ordered


def _intent_for(first: LedgerBody, fallback: dict[str, object] | None, run_id: str,
                tenant_id: str, namespace: str) -> tuple[dict[str, object], RunIntent]:
    """The intent document recorded in the first ledger entry (else ``fallback``), checked against the run.

    Raises:
        RunpackError: neither the ledger nor the index records an intent.
        IntegrityError: the intent is invalid, derives another run id, or names another
            tenant/namespace.
    """
    doc = first.intent if first.intent is not None else fallback
    if doc is None:
        raise RunpackError(f"run {run_id}: the ledger records no intent and the index has no row for it")
    try:
        intent = parse_intent(doc)
    except IntentInvalidError as exc:
        raise IntegrityError(f"run {run_id}: the recorded intent is invalid: {exc}") from exc
    if run_id_of(intent) != run_id:
        raise IntegrityError(f"run {run_id}: the recorded intent derives another run id")
    if (intent.tenant_id, intent.namespace) != (tenant_id, namespace):
        raise IntegrityError(f"run {run_id}: the recorded intent names another tenant/namespace")
    return dict(doc), intent


def collect_runpack(truth: TruthStore, run_id: str, *, tenant_id: str, namespace: str,
                    publications: Sequence[PublicationSource] = (),
                    fallback_intent: dict[str, object] | None = None) -> Runpack:
    """Read a run's truth from S3 (every read verified) and assemble its runpack in memory.

    Args:
        truth: the truth store (bucket + prefix of SR's S3 truth).
        run_id / tenant_id / namespace: the run; validated by the key functions.
        publications: the run's outbox rows (other runs' rows are ignored).
        fallback_intent: the index row's intent, used only if the first ledger entry
            carries none (ledgers written before it did).

    Raises:
        UnsafeKeyError: a malformed run id or an unsafe tenant/namespace.
        RunpackError: the run has no ledger in S3, records more than one plan, or an
            artifact exceeds its byte cap.
        IntegrityError: S3 truth fails verification (broken chain, hash mismatch, a ledger
            body that does not fit its kind, entries that do not fold into a state such as a
            REVOKED of facts that are not current...).
        ObjectNotFoundError: a plan or facts view the ledger references is missing.
        S3UnavailableError / S3AccessError.
    """
    keys = truth.keys_for(tenant_id, namespace, check_run_id(run_id))
    entries = truth.read_ledger(keys)
    if not entries:
        raise RunpackError(f"run {run_id} has no ledger under s3://{truth.bucket}/{keys.root}/")
    state = derive_state(entries)
    bodies = [parse_body(entry) for entry in entries]
    intent_doc, intent = _intent_for(bodies[0], fallback_intent, run_id, tenant_id, namespace)

    artifacts: dict[str, bytes] = {"intent.json": intent_bytes(intent_doc)}
    plans = plan_references(bodies)
    if len(plans) > 1:
        raise RunpackError(f"run {run_id}: the ledger records {len(plans)} different plans")
    plan_hash = plans[0] if plans else None
    if plan_hash is not None:
        artifacts["plan.json"] = plan_bytes(truth.read_plan(keys, plan_hash))
    for entry in entries:
        artifacts[ledger_path(entry.seq)] = entry_bytes(entry)
    for fv_hash in facts_references(bodies):
        view = truth.read_facts_view(keys, fv_hash)
        artifacts[facts_path(fv_hash)] = facts_view_bytes(view)
        artifacts[receipts_path(fv_hash)] = receipts_bytes(view, fv_hash)
    artifacts["publications.json"] = publications_bytes(run_id, [p for p in publications if p.run_id == run_id])
    head = entry_hash(entries[-1])
    summary = run_summary(state, entries, bodies, tenant_id=tenant_id, namespace=namespace,
                          scenario_id=intent.scenario_id, ledger_head_sha256=head,
                          source={"bucket": truth.bucket, "run_root": keys.root})
    artifacts["run.json"] = run_summary_bytes(summary)

    if len(artifacts) >= MAX_FILES:
        raise RunpackError(f"run {run_id}: {len(artifacts)} artifacts exceed the {MAX_FILES}-file cap")
    for path, data in artifacts.items():
        cap = artifact_cap(artifact_kind(path))
        if len(data) > cap:
            raise RunpackError(f"run {run_id}: artifact {path} is {len(data)} bytes, cap is {cap}")
    manifest = build_manifest(
        artifacts, run_id=run_id, tenant_id=tenant_id, namespace=namespace, scenario_id=intent.scenario_id,
        plan_hash=plan_hash, ledger_head_sha256=head, as_of_ms=entries[-1].at_ms,
    )
    data = manifest_bytes(manifest)
    if len(data) > artifact_cap(artifact_kind(MANIFEST_NAME)):
        raise RunpackError(f"run {run_id}: the manifest would exceed its byte cap")
    return Runpack(manifest=manifest, artifacts=artifacts)


