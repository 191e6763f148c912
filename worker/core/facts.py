"""The facts view: the content-addressed record of what evidence made a run READY.

It carries no timestamps or worker ids, so two workers that verify the same evidence under
the same plan produce byte-identical ``facts/<hash>.json``; the commit time lives in the
ledger's READY entry instead.

Two formats (contract §5):

* **format 2** (plans that record each output's covering gates, i.e. every plan SR writes
  now): each receipt also carries the gate's ``scope`` and the ``bound`` values its
  ``_receipt.json`` proved (contract §4, instance binding), and ``outputs`` lists every
  requested output with its ``locator`` (``<evidence_root>/outputs/<output_id>/``) and the
  gates that cover it — the join surface downstream reads from.
* **format 1** (plans written before that): receipts without scope, no ``outputs``. A run
  planned before the upgrade keeps making format-1 views, so re-verifying it gives the same
  facts view hash as before; format-1 views parse and verify as they always did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from worker.core.canonical import canonical_json, parse_json_strict, sha256_hex
from worker.core.evidence import GateOutcome, GateResult
from worker.core.models import Hex64, Identifier, Pins, RunId
from worker.core.plan import Plan, instance_values
from worker.core.plan import plan_hash as compute_plan_hash
from worker.core.policy import GateMethod
from worker.errors import EvidenceError, IntegrityError, InvalidJSONError, MessageTooLargeError

__all__ = [
    "FACTS_FORMAT_VERSION",
    "FactOutput",
    "FactsView",
    "GateReceipt",
    "build_facts_view",
    "facts_view_bytes",
    "facts_view_hash",
    "parse_facts_view",
]

FACTS_FORMAT_VERSION: Final = 2
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
    scope: tuple[str, ...] = ()
    bound: dict[str, str | int] = Field(default_factory=dict)


class FactOutput(BaseModel):
    """A requested output (format 2): where it lives and the gates whose PASS makes it readable."""

    model_config = _FROZEN

    output_id: Identifier
    locator: str
    gates: Annotated[tuple[Identifier, ...], Field(min_length=1)]


class FactsView(BaseModel):
    """The immutable facts view of a READY run (format 1 or 2, see the module docstring)."""

    model_config = _FROZEN

    format_version: Literal[1, 2] = FACTS_FORMAT_VERSION
    run_id: RunId
    plan_hash: Hex64
    policy_rev: Hex64
    tenant_id: Identifier
    namespace: Identifier
    scenario_id: Identifier
    pins: Pins
    receipts: Annotated[tuple[GateReceipt, ...], Field(min_length=1)]
    outputs: tuple[FactOutput, ...] = ()
    supersedes_facts_view_hash: Hex64 | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        ids = [r.gate_id for r in self.receipts]
        if ids != sorted(set(ids)):
            raise ValueError("receipts must be sorted by gate_id and unique")
        if self.format_version == 1:
            if self.outputs or any(r.scope or r.bound for r in self.receipts):
                raise ValueError("a format-1 facts view has no outputs and no scopes")
            return self
        out_ids = [o.output_id for o in self.outputs]
        if not out_ids or out_ids != sorted(set(out_ids)):
            raise ValueError("a format-2 facts view lists its outputs, sorted by output_id and unique")
        if not {g for o in self.outputs for g in o.gates} <= set(ids):
            raise ValueError("an output names a gate that has no receipt")
        for receipt in self.receipts:
            if list(receipt.scope) != sorted(set(receipt.scope)) or set(receipt.bound) != set(receipt.scope):
                raise ValueError(f"receipt {receipt.gate_id}: bound values must match its sorted scope")
        return self

    @model_serializer(mode="wrap")
    def _serialise(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.format_version == 1:
            # Format-1 bytes are exactly what SR wrote before format 2 existed.
            data.pop("outputs", None)
            for receipt in data["receipts"]:
                receipt.pop("scope", None)
                receipt.pop("bound", None)
        return data


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
    instance = instance_values(plan)
    format_2 = bool(plan.outputs) and all(o.gates for o in plan.outputs)
    receipts = []
    for gate_id in sorted(by_id):
        result, gate = by_id[gate_id], planned[gate_id]
        if result.outcome is not GateOutcome.PASS:
            raise EvidenceError(f"gate {gate_id!r} is {result.outcome.value}, not PASS")
        if result.computed_digest is None or result.computed_digest != result.expected_digest:
            raise EvidenceError(f"gate {gate_id!r} is PASS without a matching digest")
        if result.method is not gate.method or result.bundle_uri != gate.bundle_uri:
            raise EvidenceError(f"gate {gate_id!r} result does not match the planned method/bundle")
        if result.scope != gate.scope or result.bound != {f: instance[f] for f in gate.scope}:
            raise EvidenceError(f"gate {gate_id!r} is PASS without proof of this run's {list(gate.scope)}")
        if gate.scope and not format_2:
            raise EvidenceError(f"gate {gate_id!r} is scoped in a plan without output gates")
        receipts.append(
            GateReceipt(
                gate_id=gate_id,
                method=result.method,
                bundle_uri=result.bundle_uri,
                digest=result.computed_digest,
                member_count=result.member_count,
                byte_count=result.byte_count,
                scope=gate.scope if format_2 else (),
                bound=dict(result.bound) if format_2 else {},
            )
        )
    outputs = tuple(FactOutput(output_id=o.output_id, locator=o.uri, gates=o.gates)
                    for o in plan.outputs) if format_2 else ()
    return FactsView(
        format_version=2 if format_2 else 1,
        run_id=plan.run_id,
        plan_hash=plan_hash,
        policy_rev=plan.policy_rev,
        tenant_id=plan.tenant_id,
        namespace=plan.namespace,
        scenario_id=plan.scenario_id,
        pins=plan.pins,
        receipts=tuple(receipts),
        outputs=outputs,
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
