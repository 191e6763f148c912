"""The facts view: the content-addressed record of what evidence made a run READY.

It carries no timestamps or worker ids, so two workers that verify the same evidence under
the same plan produce byte-identical ``facts/<hash>.json``; the commit time lives in the
ledger's READY entry instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from worker.core.canonical import canonical_json, parse_json_strict, sha256_hex
from worker.core.evidence import GateOutcome, GateResult
from worker.core.models import Hex64, Identifier, Pins, RunId
from worker.core.plan import Plan
from worker.core.plan import plan_hash as compute_plan_hash
from worker.core.policy import GateMethod
from worker.errors import EvidenceError, IntegrityError, InvalidJSONError, MessageTooLargeError

__all__ = [
    "FACTS_FORMAT_VERSION",
    "FactsView",
    "GateReceipt",
    "build_facts_view",
    "facts_view_bytes",
    "facts_view_hash",
    "parse_facts_view",
]

FACTS_FORMAT_VERSION: Final = 1
MAX_FACTS_BYTES: Final = 4 * 1024 * 1024
_FROZEN: Final = ConfigDict(frozen=True, extra="forbid")


class GateReceipt(BaseModel):
    """Proof that one gate passed: the verified digest and what it covered."""

    model_config = _FROZEN

    gate_id: Identifier
    method: GateMethod
    bundle_uri: str
    digest: Hex64
    member_count: int = Field(ge=0)
    byte_count: int = Field(ge=0)


class FactsView(BaseModel):
    """The immutable facts view of a READY run."""

    model_config = _FROZEN

    format_version: Literal[1] = FACTS_FORMAT_VERSION
    run_id: RunId
    plan_hash: Hex64
    policy_rev: Hex64
    tenant_id: Identifier
    namespace: Identifier
    scenario_id: Identifier
    pins: Pins
    receipts: Annotated[tuple[GateReceipt, ...], Field(min_length=1)]
    supersedes_facts_view_hash: Hex64 | None = None

    @model_validator(mode="after")
    def _sorted_receipts(self) -> Self:
        ids = [r.gate_id for r in self.receipts]
        if ids != sorted(set(ids)):
            raise ValueError("receipts must be sorted by gate_id and unique")
        return self


def build_facts_view(
    plan: Plan, plan_hash: str, results: Sequence[GateResult], supersedes: str | None = None
) -> FactsView:
    """Build the facts view of a run whose every planned gate passed.

    Raises:
        IntegrityError: ``plan_hash`` is not the hash of ``plan``.
        EvidenceError: a result is not PASS, lacks a matching digest, does not match the
            plan's gate (method/bundle), or the results do not cover exactly the planned gates.
    """
    if compute_plan_hash(plan) != plan_hash:
        raise IntegrityError("plan_hash does not match the plan")
    planned = {g.gate_id: g for g in plan.gates}
    by_id: dict[str, GateResult] = {}
    for result in results:
        if result.gate_id in by_id:
            raise EvidenceError(f"gate {result.gate_id!r} has two results")
        by_id[result.gate_id] = result
    if set(by_id) != set(planned):
        missing = sorted(set(planned) - set(by_id))
        extra = sorted(set(by_id) - set(planned))
        raise EvidenceError(f"results do not cover the plan (missing {missing}, unplanned {extra})")
    receipts = []
    for gate_id in sorted(by_id):
        result, gate = by_id[gate_id], planned[gate_id]
        if result.outcome is not GateOutcome.PASS:
            raise EvidenceError(f"gate {gate_id!r} is {result.outcome.value}, not PASS")
        if result.computed_digest is None or result.computed_digest != result.expected_digest:
            raise EvidenceError(f"gate {gate_id!r} is PASS without a matching digest")
        if result.method is not gate.method or result.bundle_uri != gate.bundle_uri:
            raise EvidenceError(f"gate {gate_id!r} result does not match the planned method/bundle")
        receipts.append(
            GateReceipt(
                gate_id=gate_id,
                method=result.method,
                bundle_uri=result.bundle_uri,
                digest=result.computed_digest,
                member_count=result.member_count,
                byte_count=result.byte_count,
            )
        )
    return FactsView(
        run_id=plan.run_id,
        plan_hash=plan_hash,
        policy_rev=plan.policy_rev,
        tenant_id=plan.tenant_id,
        namespace=plan.namespace,
        scenario_id=plan.scenario_id,
        pins=plan.pins,
        receipts=tuple(receipts),
        supersedes_facts_view_hash=supersedes,
    )


def facts_view_bytes(view: FactsView) -> bytes:
    """The exact bytes of ``facts/<hash>.json`` (canonical JSON)."""
    return canonical_json(view.model_dump(mode="json"))


def facts_view_hash(view: FactsView) -> str:
    """sha256 of :func:`facts_view_bytes` — the facts view's content address."""
    return sha256_hex(facts_view_bytes(view))


def parse_facts_view(data: bytes, *, expected_hash: str | None = None) -> FactsView:
    """Parse stored facts-view bytes, verifying canonical form (and the hash if given).

    Raises:
        IntegrityError: the bytes are not a canonical facts view or do not hash to
            ``expected_hash``.
    """
    if expected_hash is not None and sha256_hex(data) != expected_hash:
        raise IntegrityError(f"facts view bytes do not hash to {expected_hash}")
    try:
        view = FactsView.model_validate(parse_json_strict(data, max_bytes=MAX_FACTS_BYTES))
    except (InvalidJSONError, MessageTooLargeError, ValidationError) as exc:
        raise IntegrityError(f"stored facts view is invalid: {exc}") from exc
    if facts_view_bytes(view) != bytes(data):
        raise IntegrityError("stored facts view is not in canonical form")
    return view
