"""The truth store: plans, facts views and the run ledger in S3 (contract §5).

Every object is canonical JSON written once with ``If-None-Match: *``; every read verifies
the content address (plan, facts view) or the hash chain (ledger). The store never
read-modify-writes: a writer that loses a race gets the winner's bytes back and decides.

Cost discipline (S3 requests are the main cost): no HEAD before a PUT (the conditional PUT
*is* the existence check), no read-back after a successful write, and a 412 costs exactly
one extra GET.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from worker.app.ports import ObjectStore, WriteOutcome
from worker.core.canonical import sha256_hex
from worker.core.facts import MAX_FACTS_BYTES, FactsView, parse_facts_view
from worker.core.keys import RunKeys, parse_run_key, run_keys, validate_prefix, validate_segment
from worker.core.ledger import MAX_ENTRY_BYTES, LedgerEntry, entry_bytes, parse_entry, parse_ledger
from worker.core.plan import MAX_PLAN_BYTES, Plan, parse_plan
from worker.errors import IntegrityError, MessageTooLargeError, ObjectNotFoundError, UnsafeKeyError

__all__ = ["AppendOutcome", "AppendStatus", "TruthStore"]

_PLAN_NAME: Final = "plan.json"


class AppendStatus(StrEnum):
    """How a ledger append ended."""

    APPENDED = "APPENDED"  # this call created the entry
    APPENDED_IDENTICAL = "APPENDED_IDENTICAL"  # the same bytes were already there (adopted)
    CONFLICT = "CONFLICT"  # another writer holds this seq with different content


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """Result of :meth:`TruthStore.append`.

    ``entry`` is the entry now stored at the seq: ours for APPENDED/APPENDED_IDENTICAL, the
    other writer's for CONFLICT (the caller must re-read the ledger and re-evaluate).
    """

    status: AppendStatus
    entry: LedgerEntry

    @property
    def ok(self) -> bool:
        """True when our entry is (now) the stored one."""
        return self.status is not AppendStatus.CONFLICT


def _check_run(keys: RunKeys, run_id: str, what: str) -> None:
    # RunKeys.root ends in "/run/<run_id>"; writing run A's content under run B's keys is a
    # caller bug that would poison the truth, so it is refused before any I/O.
    if not keys.root.endswith(f"/run/{run_id}"):
        raise IntegrityError(f"{what} of run {run_id} does not belong under {keys.root}")


class TruthStore:
    """Plans, facts views and ledgers of runs under ``s3://<bucket>/<prefix>``.

    Args:
        store: an entered :class:`ObjectStore`.
        bucket: the truth bucket.
        prefix: the key prefix (``SR_S3_PREFIX``), validated/normalised.

    Raises:
        UnsafeKeyError: the prefix is unsafe.
    """

    def __init__(self, store: ObjectStore, bucket: str, prefix: str) -> None:
        self.store = store
        self.bucket = bucket
        self.prefix = validate_prefix(prefix)

    def keys_for(self, tenant_id: str, namespace: str, run_id: str) -> RunKeys:
        """The keys of a run under this store's prefix.

        Raises:
            UnsafeKeyError: unsafe tenant/namespace or malformed run_id.
        """
        return run_keys(self.prefix, tenant_id, namespace, run_id)

    # ----------------------------------------------------------------- plan
    def write_plan(self, keys: RunKeys, data: bytes) -> WriteOutcome:
        """Write-once ``plan.json`` (``data`` = :func:`~worker.core.plan.plan_bytes`).

        The bytes are parsed first so that nothing unreadable ever becomes truth.

        Raises:
            IntegrityError: ``data`` is not a canonical plan of this run.
            DriftError: a different plan is already stored.
            S3UnavailableError / S3AccessError.
        """
        plan = parse_plan(data)
        _check_run(keys, plan.run_id, "plan")
        return self.store.put_write_once(self.bucket, keys.plan, data)

    def read_plan(self, keys: RunKeys, expected_hash: str) -> Plan:
        """Read and verify ``plan.json`` against its content address.

        Raises:
            ObjectNotFoundError: no plan stored.
            IntegrityError: bytes do not hash to ``expected_hash``, are not a canonical plan,
                exceed the plan size cap, or belong to another run.
            S3UnavailableError / S3AccessError.
        """
        try:
            data = self.store.get(self.bucket, keys.plan, max_bytes=MAX_PLAN_BYTES)
        except MessageTooLargeError as exc:
            raise IntegrityError(f"stored plan {keys.plan} exceeds {MAX_PLAN_BYTES} bytes") from exc
        plan = parse_plan(data, expected_hash=expected_hash)
        _check_run(keys, plan.run_id, "stored plan")
        return plan

    # ----------------------------------------------------------------- facts view
    def write_facts_view(self, keys: RunKeys, data: bytes) -> WriteOutcome:
        """Write-once ``facts/<sha256(data)>.json``.

        Raises:
            IntegrityError: ``data`` is not a canonical facts view of this run.
            DriftError: cannot normally happen (content-addressed key), but would mean the
                stored object is corrupt.
            S3UnavailableError / S3AccessError.
        """
        view = parse_facts_view(data)
        _check_run(keys, view.run_id, "facts view")
        return self.store.put_write_once(self.bucket, keys.facts(sha256_hex(data)), data)

    def read_facts_view(self, keys: RunKeys, facts_view_hash: str) -> FactsView:
        """Read and verify a facts view against its content address.

        Raises:
            ObjectNotFoundError: no such facts view.
            IntegrityError: hash mismatch, invalid/non-canonical content, over the size cap,
                or another run's view.
            UnsafeKeyError: ``facts_view_hash`` is not 64 lowercase hex.
            S3UnavailableError / S3AccessError.
        """
        key = keys.facts(facts_view_hash)
        try:
            data = self.store.get(self.bucket, key, max_bytes=MAX_FACTS_BYTES)
        except MessageTooLargeError as exc:
            raise IntegrityError(f"stored facts view {key} exceeds {MAX_FACTS_BYTES} bytes") from exc
        view = parse_facts_view(data, expected_hash=facts_view_hash)
        _check_run(keys, view.run_id, "stored facts view")
        return view

    # ----------------------------------------------------------------- ledger
    def read_ledger(self, keys: RunKeys) -> tuple[LedgerEntry, ...]:
        """Read and verify a run's whole ledger (``()`` if it has none).

        One LIST (per 1000 entries) plus one GET per entry. Entries are fetched
        sequentially: ledgers are short and the request count, not latency, is the cost.

        Raises:
            IntegrityError: a foreign key under ``record/``, a gap in the seqs (deleted
                entry), an entry that is invalid, not canonical, out of place, over the size
                cap, or breaks the hash chain (edited/reordered), or an entry vanished
                between LIST and GET.
            S3UnavailableError / S3AccessError.
        """
        run_id = keys.root.rsplit("/", 1)[-1]
        seqs: list[tuple[int, str]] = []
        for meta in self.store.list(self.bucket, keys.records_prefix):
            try:
                seqs.append((keys.seq_of(meta.key), meta.key))
            except UnsafeKeyError as exc:
                raise IntegrityError(f"unexpected object {meta.key!r} in the ledger of run {run_id}") from exc
        seqs.sort()
        for expected, (seq, _key) in enumerate(seqs):
            if seq != expected:
                raise IntegrityError(f"ledger of run {run_id} is missing entry seq {expected}")
        raw: list[bytes] = []
        for seq, key in seqs:
            try:
                raw.append(self.store.get(self.bucket, key, max_bytes=MAX_ENTRY_BYTES))
            except MessageTooLargeError as exc:
                raise IntegrityError(f"ledger entry seq {seq} of run {run_id} is oversized") from exc
            except ObjectNotFoundError as exc:
                raise IntegrityError(f"ledger entry seq {seq} of run {run_id} vanished") from exc
        return parse_ledger(raw, run_id=run_id)

    def append(self, keys: RunKeys, entry: LedgerEntry) -> AppendOutcome:
        """Append ``entry`` at ``record/<entry.seq>`` with a write-once PUT.

        Never read-append-write and never overwrite: one conditional PUT; on 412 one GET of
        the existing entry. Identical bytes (a retry of our own write, or a racing writer
        with the same deterministic entry) are adopted; different bytes are a CONFLICT the
        caller (a lease holder that lost a race or was fenced) must resolve by re-reading.

        Raises:
            IntegrityError: ``entry`` belongs to another run, or the existing entry at that
                seq is invalid/not canonical/oversized or vanished after the 412.
            S3UnavailableError / S3AccessError.
        """
        _check_run(keys, entry.run_id, "ledger entry")
        data = entry_bytes(entry)
        key = keys.record(entry.seq)
        if self.store.create(self.bucket, key, data):
            return AppendOutcome(AppendStatus.APPENDED, entry)
        try:
            existing = self.store.get(self.bucket, key, max_bytes=MAX_ENTRY_BYTES)
        except MessageTooLargeError as exc:
            raise IntegrityError(f"existing ledger entry {key} is oversized") from exc
        except ObjectNotFoundError as exc:
            raise IntegrityError(f"ledger entry {key} vanished after a 412") from exc
        if existing == data:
            return AppendOutcome(AppendStatus.APPENDED_IDENTICAL, entry)
        return AppendOutcome(AppendStatus.CONFLICT, parse_entry(existing, run_id=entry.run_id, seq=entry.seq))

    # ----------------------------------------------------------------- discovery
    def list_runs(self, tenant_id: str | None = None) -> Iterator[tuple[str, str, str]]:
        """Yield ``(tenant_id, namespace, run_id)`` of every run stored under the prefix.

        Lists every key under ``<prefix>/tenant/[<tenant>/]`` once (one LIST per 1000 keys)
        and yields each run whose root holds any SR object — a plan, ledger records or facts
        — not only runs with a ``plan.json``: a run REJECTED before planning has a ledger
        but no plan, and ``sr index rebuild`` must still see it. Listing is in key order, so
        a run's keys are contiguous and each run is yielded once. Keys that are not laid out
        as run keys (foreign objects) are skipped.

        Raises:
            UnsafeKeyError: ``tenant_id`` is not a safe segment.
            S3UnavailableError / S3AccessError.
        """
        parts = [self.prefix, "tenant"] if self.prefix else ["tenant"]
        if tenant_id is not None:
            parts.append(validate_segment(tenant_id))
        list_prefix = "/".join(parts) + "/"
        last: tuple[str, str, str] | None = None
        for meta in self.store.list(self.bucket, list_prefix):
            try:
                found = parse_run_key(self.prefix, meta.key)
            except UnsafeKeyError:
                continue
            if found != last:
                last = found
                yield found
