"""Evidence verification against object storage (contract §4), failing closed.

The pure rules (flag/index grammar, member order, digests, outcomes) live in
:mod:`worker.core.evidence`; this module does the I/O: it lists bundles, streams members
with byte caps, hashes them in the required order and turns what it finds into
:class:`~worker.core.evidence.GateResult` values.

Outcome rules:

* ``_passed.flag`` absent → MISSING; not one ``sha256_hex=<hex64>`` line → BAD_FLAG;
  bigger than ``max_meta_bytes`` → TOO_LARGE.
* ``sha256_bundle_digest``: one LIST of ``<bundle>/`` yields the flag's presence and the
  members; members are hashed in ASCII order of relative key. A zero-byte key ending in
  ``/`` (a "directory marker" some tools create) is skipped — it contributes no bytes, so
  the digest is unchanged. Any other unsafe member key → BAD_INDEX (the listing is the
  bundle's index). A member above ``max_member_bytes`` → TOO_LARGE. A bundle holding only
  the flag is verified literally: PASS iff the flag equals sha256 of zero bytes, else
  MISMATCH (a producer that wrote the empty digest declared an empty bundle; anything else
  contradicts the flag).
* ``sha256_member_digest_concat``: flag, then ``index.json`` (absent → MISSING, malformed →
  BAD_INDEX, oversized → TOO_LARGE). The concatenated index digests are checked against the
  flag *before* any member is read (a mismatch there costs no member I/O). Then every member
  is hashed; precedence among member problems: MISMATCH > TOO_LARGE > MISSING.
* An object that changes while being streamed → MISMATCH (evidence mutated after its flag).
* A *scoped* gate (``scope`` in the policy; contract §4, instance binding) must also carry
  ``_receipt.json`` as a member its flag covers: in the listing for ``sha256_bundle_digest``,
  in ``index.json`` for ``sha256_member_digest_concat``. Its bytes are the ones hashed for the
  digest (no extra request). Only once the digest matches is the receipt judged
  (:func:`~worker.core.evidence.check_receipt`): none, unreadable or incomplete →
  INSTANCE_PROOF_MISSING; another gate's or another run's values → INSTANCE_MISMATCH. A
  receipt edited after its flag is a digest MISMATCH like any member.
* Any S3 fault that is not "object absent"/"too large" propagates: transient faults as
  :class:`~worker.errors.S3UnavailableError` after bounded retries, permanent ones (access
  denied, missing bucket) as :class:`~worker.errors.S3AccessError`. Never PASS on doubt.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

from worker.app.ports import ObjectMeta, ObjectStore
from worker.core.evidence import (
    FLAG_NAME,
    INDEX_NAME,
    MAX_RECEIPT_BYTES,
    RECEIPT_NAME,
    GateOutcome,
    GateResult,
    IndexEntry,
    bundle_member_order,
    check_receipt,
    member_concat_digest,
    parse_index_json,
    parse_passed_flag,
)
from worker.core.keys import S3Location, parse_s3_uri, validate_segment
from worker.core.plan import Plan, PlanGate, instance_values
from worker.core.policy import GateMethod
from worker.errors import (
    BadFlagError,
    BadIndexError,
    ConfigError,
    EvidenceRootForbiddenError,
    MessageTooLargeError,
    ObjectNotFoundError,
    PreconditionFailedError,
    UnsafeKeyError,
)

__all__ = ["EvidenceVerifier"]

MiB: Final = 1024 * 1024
GiB: Final = 1024 * MiB
_EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()
#: Members up to this size are prefetched whole; larger ones are fetched as ranged GETs of
#: this size (pinned to the listed ETag and size), also concurrently. Both are hashed in order.
PREFETCH_MAX_MEMBER_BYTES: Final = 4 * MiB
#: Upper bound of prefetched-but-not-yet-hashed bytes per gate.
PREFETCH_BUDGET_BYTES: Final = 32 * MiB


def _pieces(members: Sequence[ObjectMeta]) -> Iterator[tuple[ObjectMeta, int, int]]:
    """``(member, start, end)`` fetch units in hashing order; ``end == -1`` means "the whole
    object" (small members, read with a plain GET that also catches a grown object)."""
    for meta in members:
        if meta.size <= PREFETCH_MAX_MEMBER_BYTES:
            yield meta, 0, -1
            continue
        for start in range(0, meta.size, PREFETCH_MAX_MEMBER_BYTES):
            yield meta, start, min(start + PREFETCH_MAX_MEMBER_BYTES, meta.size)


class _GateFinding(Exception):  # noqa: N818 - internal control flow, not an error
    """Internal: stop verifying a gate with this outcome."""

    def __init__(self, outcome: GateOutcome, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


def _key(location: S3Location, name: str) -> str:
    return location.join(name).prefix


@dataclass
class _Progress:
    """What verifying one gate has established so far (reported even on a non-PASS)."""

    expected: str | None = None
    computed: str | None = None
    member_count: int = 0
    byte_count: int = 0
    #: Scoped gates: keep the receipt's bytes while hashing; ``receipt`` is None if not covered.
    want_receipt: bool = False
    receipt: bytes | None = None
    receipt_problem: str | None = None  # the receipt is covered but cannot be judged (too large)


class EvidenceVerifier:
    """Verifies gate bundles. Thread-safe; owns two bounded thread pools (``close()`` them).

    Args:
        store: an entered :class:`ObjectStore` (its pool should have ≥ ``2 * concurrency``
            connections for full parallelism).
        max_meta_bytes: byte cap for ``_passed.flag`` and ``index.json``.
        max_member_bytes: byte cap per bundle member.
        concurrency: gates verified in parallel by :meth:`verify_plan`, and member reads in
            flight (the two pools are separate so a gate task never waits on a member task
            queued behind other gate tasks — no pool deadlock).

    Attributes:
        bytes_verified: total member bytes hashed so far (thread-safe reads via property).
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        max_meta_bytes: int = 16 * MiB,
        max_member_bytes: int = 1 * GiB,
        concurrency: int = 8,
    ) -> None:
        if max_meta_bytes < 1 or max_member_bytes < 0 or concurrency < 1:
            raise ConfigError("verifier caps must be positive and concurrency ≥ 1")
        self.store = store
        self.max_meta_bytes = max_meta_bytes
        self.max_member_bytes = max_member_bytes
        self.concurrency = concurrency
        self._gate_pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sr-verify-gate")
        self._member_pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sr-verify-member")
        self._lock = threading.Lock()
        self._bytes_verified = 0
        #: Gate method → verification (add a method: a GateMethod member, a policy check, a row here).
        self._methods: dict[GateMethod, Callable[[S3Location, _Progress], None]] = {
            GateMethod.SHA256_BUNDLE_DIGEST: self._verify_bundle_digest,
            GateMethod.SHA256_MEMBER_DIGEST_CONCAT: self._verify_member_concat,
        }

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Shut the thread pools down (waits for running tasks; idempotent)."""
        self._gate_pool.shutdown(wait=True, cancel_futures=True)
        self._member_pool.shutdown(wait=True, cancel_futures=True)

    @property
    def bytes_verified(self) -> int:
        """Member bytes hashed since construction."""
        with self._lock:
            return self._bytes_verified

    def _count(self, n: int) -> None:
        with self._lock:
            self._bytes_verified += n

    # ----------------------------------------------------------------- evidence root
    @staticmethod
    def check_evidence_root(
        evidence_root: str,
        tenant_id: str,
        *,
        default_bucket: str,
        tenant_prefixes: Mapping[str, Sequence[str]] | None = None,
    ) -> S3Location:
        """Check that ``evidence_root`` lies inside the tenant's allowed prefixes.

        Default allowed prefix: ``s3://<default_bucket>/evidence/<tenant_id>/``. When
        ``tenant_prefixes`` is given and names the tenant, its list replaces the default for
        that tenant (an empty list forbids everything); tenants it does not name keep the
        default. Containment is segment-wise (``evidence/t1`` does not contain
        ``evidence/t10``); the root is parsed strictly, so ``..``, ``//``, backslashes,
        encoded or odd characters are refused rather than normalised.

        Returns:
            The parsed evidence root.

        Raises:
            EvidenceRootForbiddenError: unparsable/unsafe root, or outside every allowed prefix.
            ConfigError: an allowed prefix in ``tenant_prefixes`` or ``default_bucket`` is invalid.
        """
        try:
            root = parse_s3_uri(evidence_root)
        except UnsafeKeyError as exc:
            raise EvidenceRootForbiddenError(f"evidence_root is not a safe s3:// URI: {exc}") from exc
        try:
            tenant = validate_segment(tenant_id)
        except UnsafeKeyError as exc:
            raise EvidenceRootForbiddenError(f"tenant_id is not a safe key segment: {exc}") from exc
        try:
            if tenant_prefixes is not None and tenant in tenant_prefixes:
                allowed = [parse_s3_uri(uri) for uri in tenant_prefixes[tenant]]
            else:
                allowed = [S3Location(default_bucket, f"evidence/{tenant}")]
        except UnsafeKeyError as exc:
            raise ConfigError(f"invalid allowed evidence prefix for tenant {tenant!r}: {exc}") from exc
        if any(root.is_within(prefix) for prefix in allowed):
            return root
        listed = ", ".join(p.uri + "/" for p in allowed) or "(none)"
        raise EvidenceRootForbiddenError(
            f"evidence_root {root.uri} is outside the allowed prefixes of tenant {tenant!r}: {listed}"
        )

    # ----------------------------------------------------------------- plan
    def verify_plan(self, plan: Plan) -> list[GateResult]:
        """Verify every gate of ``plan`` concurrently (bounded); results in gate_id order.

        Raises:
            S3UnavailableError / S3AccessError / UnsafeKeyError: the first such fault of any
                gate (remaining queued gates are cancelled): no partial verdict is returned.
        """
        instance = instance_values(plan)
        futures = [self._gate_pool.submit(self.verify_gate, gate, instance) for gate in plan.gates]
        try:
            results = [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return sorted(results, key=lambda r: r.gate_id)

    # ----------------------------------------------------------------- gate
    def verify_gate(self, gate: PlanGate, instance: Mapping[str, str | int] | None = None) -> GateResult:
        """Verify one gate bundle by its method, and a scoped gate's receipt against ``instance``
        (the run's values, :func:`~worker.core.plan.instance_values`).

        Returns:
            A GateResult whose outcome is PASS only when the recomputed digest equals the flag
            and, for a scoped gate, the receipt names exactly this run's values.

        Raises:
            S3UnavailableError: transient S3 faults persisted through the retry budget.
            S3AccessError: access denied, missing bucket or another permanent S3 fault.
            UnsafeKeyError: the plan's bundle_uri is not a safe s3:// URI.
        """
        bundle = parse_s3_uri(gate.bundle_uri)
        progress = _Progress(want_receipt=bool(gate.scope))
        outcome, detail = GateOutcome.PASS, ""
        bound: dict[str, str | int] = {}
        try:
            self._methods[gate.method](bundle, progress)
        except _GateFinding as finding:
            outcome, detail = finding.outcome, finding.detail
        else:
            # Belt and braces: PASS only with both digests present and equal.
            if progress.expected is None or progress.computed != progress.expected:
                outcome, detail = GateOutcome.MISMATCH, "verification ended without matching digests"
            elif gate.scope:
                if instance is None:
                    raise ConfigError(f"gate {gate.gate_id} is scoped: verify it with the run's instance values")
                if progress.receipt_problem is not None:
                    outcome, detail = GateOutcome.INSTANCE_PROOF_MISSING, progress.receipt_problem
                else:
                    outcome, detail, bound = check_receipt(progress.receipt, gate_id=gate.gate_id,
                                                           scope=gate.scope, instance=instance)
            if outcome is GateOutcome.PASS:
                detail = f"{progress.member_count} member(s), {progress.byte_count} byte(s) verified"
        return GateResult(
            gate_id=gate.gate_id,
            method=gate.method,
            bundle_uri=gate.bundle_uri,
            outcome=outcome,
            expected_digest=progress.expected,
            computed_digest=progress.computed,
            member_count=progress.member_count,
            byte_count=progress.byte_count,
            detail=detail,
            scope=gate.scope,
            bound=bound,
        )

    def _read_flag(self, bundle: S3Location) -> str:
        key = _key(bundle, FLAG_NAME)
        try:
            data = self.store.get(bundle.bucket, key, max_bytes=self.max_meta_bytes)
        except ObjectNotFoundError as exc:
            raise _GateFinding(GateOutcome.MISSING, f"{FLAG_NAME} not found") from exc
        except MessageTooLargeError as exc:
            raise _GateFinding(GateOutcome.TOO_LARGE, f"{FLAG_NAME} exceeds {self.max_meta_bytes} bytes") from exc
        try:
            return parse_passed_flag(data)
        except BadFlagError as exc:
            raise _GateFinding(GateOutcome.BAD_FLAG, str(exc)) from exc

    # ----------------------------------------------------------------- sha256_bundle_digest
    def _verify_bundle_digest(self, bundle: S3Location, progress: _Progress) -> None:
        list_prefix = bundle.prefix + "/" if bundle.prefix else ""
        listing: dict[str, ObjectMeta] = {}
        for meta in self.store.list(bundle.bucket, list_prefix):
            rel = meta.key[len(list_prefix):]
            if meta.size == 0 and (rel == "" or rel.endswith("/")):
                continue  # directory marker: zero bytes, cannot change the digest
            listing[rel] = meta
        flag_meta = listing.get(FLAG_NAME)
        if flag_meta is None:
            raise _GateFinding(GateOutcome.MISSING, f"{FLAG_NAME} not found")
        if flag_meta.size > self.max_meta_bytes:
            raise _GateFinding(GateOutcome.TOO_LARGE, f"{FLAG_NAME} exceeds {self.max_meta_bytes} bytes")
        try:
            order = bundle_member_order(listing)
        except (UnsafeKeyError, BadIndexError) as exc:
            raise _GateFinding(GateOutcome.BAD_INDEX, f"bundle listing is not a valid member set: {exc}") from exc
        progress.expected = expected = self._read_flag(bundle)
        members = [listing[rel] for rel in order]
        receipt = listing.get(RECEIPT_NAME) if progress.want_receipt else None
        if receipt is not None and receipt.size > MAX_RECEIPT_BYTES:
            progress.receipt_problem = f"{RECEIPT_NAME} exceeds {MAX_RECEIPT_BYTES} bytes"
            receipt = None  # hashed like any member; judged (refused) only after the digest
        oversized = [m.key for m in members if m.size > self.max_member_bytes]
        if oversized:
            raise _GateFinding(
                GateOutcome.TOO_LARGE, f"member {oversized[0]} exceeds {self.max_member_bytes} bytes"
            )
        try:
            digest, size = self._hash_in_order(bundle.bucket, members, progress,
                                               keep=receipt.key if receipt is not None else None)
        except ObjectNotFoundError as exc:
            # Listed a moment ago, gone now: the bundle is being rewritten under its flag.
            raise _GateFinding(GateOutcome.MISMATCH, f"a listed member disappeared: {exc}") from exc
        except MessageTooLargeError as exc:
            raise _GateFinding(GateOutcome.TOO_LARGE, str(exc)) from exc
        except PreconditionFailedError as exc:
            raise _GateFinding(GateOutcome.MISMATCH, f"a member changed while being read: {exc}") from exc
        progress.member_count, progress.byte_count, progress.computed = len(members), size, digest
        if digest != expected:
            detail = "empty bundle and flag is not the empty digest" if not members else "bundle digest != flag"
            raise _GateFinding(GateOutcome.MISMATCH, detail)

    def _fetch(self, bucket: str, key: str) -> list[bytes | memoryview]:
        return [self.store.get(bucket, key, max_bytes=self.max_member_bytes)]

    def _hash_in_order(self, bucket: str, members: Sequence[ObjectMeta], progress: _Progress | None = None,
                       *, keep: str | None = None) -> tuple[str, int]:
        """sha256 over the members' bytes in the given order, fetched concurrently; the bytes
        of member ``keep`` (a small one, fetched whole) are stored in ``progress.receipt``.

        Each member is one piece (a whole GET) up to :data:`PREFETCH_MAX_MEMBER_BYTES`, or
        consecutive ranged GETs of that size pinned to the listed ETag and size, so large
        members are read as concurrently as small ones. Memory stays bounded: at most
        ``concurrency`` pieces and :data:`PREFETCH_BUDGET_BYTES` of fetched-unhashed bytes.

        Raises:
            PreconditionFailedError: a member changed since it was listed.
        """
        digest = hashlib.sha256()
        total = 0
        pending: deque[tuple[int, str, Future[list[bytes | memoryview]]]] = deque()
        pieces = iter(_pieces(members))
        in_flight_bytes = 0
        upcoming: tuple[ObjectMeta, int, int] | None = next(pieces, None)

        def fill() -> None:
            nonlocal upcoming, in_flight_bytes
            while upcoming is not None and len(pending) < self.concurrency:
                meta, start, end = upcoming
                size = end - start if end >= 0 else meta.size
                if pending and in_flight_bytes + size > PREFETCH_BUDGET_BYTES:
                    return
                future: Future[list[bytes | memoryview]]
                if end < 0:
                    future = self._member_pool.submit(self._fetch, bucket, meta.key)
                else:
                    future = self._member_pool.submit(self._fetch_range, bucket, meta, start, end)
                in_flight_bytes += size
                pending.append((size, meta.key, future))
                upcoming = next(pieces, None)

        try:
            fill()
            while pending:
                size, key, future = pending.popleft()
                data = future.result()
                in_flight_bytes -= size
                if key == keep and progress is not None:
                    progress.receipt = b"".join(bytes(chunk) for chunk in data)
                for chunk in data:
                    digest.update(chunk)
                    total += len(chunk)
                    self._count(len(chunk))
                fill()
        finally:
            for _size, _key, future in pending:
                future.cancel()
        return digest.hexdigest(), total

    def _fetch_range(self, bucket: str, meta: ObjectMeta, start: int, end: int) -> list[bytes | memoryview]:
        return self.store.get_range(bucket, meta.key, start=start, end=end, object_size=meta.size,
                                    etag=meta.etag or None)

    # ----------------------------------------------------------------- sha256_member_digest_concat
    def _verify_member_concat(self, bundle: S3Location, progress: _Progress) -> None:
        progress.expected = expected = self._read_flag(bundle)
        try:
            raw = self.store.get(bundle.bucket, _key(bundle, INDEX_NAME), max_bytes=self.max_meta_bytes)
        except ObjectNotFoundError as exc:
            raise _GateFinding(GateOutcome.MISSING, f"{INDEX_NAME} not found") from exc
        except MessageTooLargeError as exc:
            raise _GateFinding(GateOutcome.TOO_LARGE, f"{INDEX_NAME} exceeds {self.max_meta_bytes} bytes") from exc
        try:
            index = parse_index_json(raw, max_bytes=self.max_meta_bytes)
        except BadIndexError as exc:
            raise _GateFinding(GateOutcome.BAD_INDEX, str(exc)) from exc
        progress.member_count = len(index)
        claimed = member_concat_digest(entry.sha256_hex for entry in index)
        if claimed != expected:
            progress.computed = claimed
            raise _GateFinding(GateOutcome.MISMATCH, f"digest over {INDEX_NAME} member digests != flag")
        actual = self._hash_members(bundle, index, progress)
        progress.computed = member_concat_digest(actual)

    def _hash_member(self, bundle: S3Location, entry: IndexEntry, progress: _Progress) -> tuple[str, int]:
        key = _key(bundle, entry.path)
        if progress.want_receipt and entry.path == RECEIPT_NAME:
            # The receipt is needed as bytes: one bounded GET instead of the streamed hash.
            try:
                data = self.store.get(bundle.bucket, key, max_bytes=MAX_RECEIPT_BYTES)
            except MessageTooLargeError:
                # Still hash it (the digest comes first); the receipt is refused afterwards.
                progress.receipt_problem = f"{RECEIPT_NAME} exceeds {MAX_RECEIPT_BYTES} bytes"
            else:
                progress.receipt = bytes(data)
                self._count(len(data))
                return hashlib.sha256(data).hexdigest(), len(data)
        digest, size = self.store.sha256(bundle.bucket, key, max_bytes=self.max_member_bytes)
        self._count(size)
        return digest, size

    def _hash_members(self, bundle: S3Location, index: Sequence[IndexEntry], progress: _Progress) -> list[str]:
        """Hash every indexed member (bounded concurrency); classify problems by precedence."""
        futures = [self._member_pool.submit(self._hash_member, bundle, entry, progress) for entry in index]
        missing: list[str] = []
        too_large: list[str] = []
        actual: list[str] = []
        total = 0
        try:
            for entry, future in zip(index, futures, strict=True):
                try:
                    digest, size = future.result()
                except ObjectNotFoundError:
                    missing.append(entry.path)
                    continue
                except MessageTooLargeError:
                    too_large.append(entry.path)
                    continue
                except PreconditionFailedError as exc:
                    raise _GateFinding(GateOutcome.MISMATCH, f"member {entry.path} changed while read") from exc
                total += size
                if digest != entry.sha256_hex:
                    raise _GateFinding(GateOutcome.MISMATCH, f"member {entry.path} does not hash to its index digest")
                actual.append(digest)
        finally:
            # On an early verdict, don't spend requests on members that no longer matter.
            for future in futures:
                future.cancel()
            progress.byte_count = total
        if too_large:
            raise _GateFinding(GateOutcome.TOO_LARGE, f"member(s) over {self.max_member_bytes} bytes: {too_large}")
        if missing:
            raise _GateFinding(GateOutcome.MISSING, f"member(s) not found: {missing}")
        return actual
