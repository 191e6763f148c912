"""The run plan: a content-addressed, deterministic description of what SR will verify.

The plan is a pure function of the fingerprinted intent fields and the policy — no clock, no
worker id, no deadline — so two workers racing on the same run write byte-identical
``plan.json`` and the write-once ``If-None-Match: *`` PUT of the loser is a no-op, not DRIFT.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, model_serializer

from worker.core.canonical import canonical_json, parse_json_strict, sha256_hex
from worker.core.identity import intent_fingerprint, run_equivalence_key, run_id_for
from worker.core.keys import parse_s3_uri
from worker.core.models import Hex64, Identifier, Pins, RunId, RunIntent, Strategy, millis
from worker.core.policy import SCOPE_FIELDS, GateMethod, Policy
from worker.errors import IntegrityError, IntentInvalidError, InvalidJSONError, MessageTooLargeError

__all__ = [
    "PLAN_FORMAT_VERSION",
    "Plan",
    "PlanGate",
    "PlanOutput",
    "build_plan",
    "instance_values",
    "parse_plan",
    "plan_bytes",
    "plan_hash",
    "scope_values",
]

PLAN_FORMAT_VERSION: Final = 1
MAX_PLAN_BYTES: Final = 4 * 1024 * 1024

_FROZEN: Final = ConfigDict(frozen=True, extra="forbid")
ScopeField = Literal["manifest_fingerprint", "parameter_hash", "run_id", "scenario_id", "seed"]


def _without_empty(data: dict[str, Any], *names: str) -> dict[str, Any]:
    """``data`` without the fields ``names`` when they are empty: fields added after plans were
    first written are left out when unused, so an older plan.json still round-trips
    byte for byte (``parse_plan`` insists on canonical bytes)."""
    for name in names:
        if not data.get(name):
            data.pop(name, None)
    return data


class PlanGate(BaseModel):
    """A required gate, resolved against the intent's evidence_root.

    ``scope`` (contract §4, instance binding): the run fields the gate's ``_receipt.json``
    must name; empty for a global gate (and then not serialised).
    """

    model_config = _FROZEN

    gate_id: Identifier
    method: GateMethod
    bundle_uri: str
    depends_on: tuple[Identifier, ...]
    scope: tuple[ScopeField, ...] = ()

    @model_serializer(mode="wrap")
    def _serialise(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_empty(handler(self), "scope")


class PlanOutput(BaseModel):
    """An output, the prefix it lives under (``<evidence_root>/outputs/<id>/``) and the gates
    that cover it (its policy gates and everything they depend on, sorted).

    ``gates`` is empty only in plans written before it existed (and then not serialised);
    such plans make format-1 facts views (:mod:`worker.core.facts`).
    """

    model_config = _FROZEN

    output_id: Identifier
    uri: str
    gates: tuple[Identifier, ...] = ()

    @model_serializer(mode="wrap")
    def _serialise(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_empty(handler(self), "gates")


class Plan(BaseModel):
    """The immutable plan of a run (serialised as canonical JSON to ``plan.json``)."""

    model_config = _FROZEN

    format_version: Literal[1] = PLAN_FORMAT_VERSION
    run_id: RunId
    run_equivalence_key: Hex64
    intent_fingerprint: Hex64
    tenant_id: Identifier
    namespace: Identifier
    scenario_id: Identifier
    pins: Pins
    window_start_ms: int
    window_end_ms: int
    output_ids: Annotated[tuple[Identifier, ...], Field(min_length=1)]
    strategy: Strategy
    evidence_root: str
    policy_rev: Hex64
    gates: Annotated[tuple[PlanGate, ...], Field(min_length=1)]
    outputs: tuple[PlanOutput, ...]


def build_plan(intent: RunIntent, policy: Policy, *, run_id: str) -> Plan:
    """Build the plan of ``intent`` under ``policy``.

    Raises:
        IntentInvalidError: ``run_id`` is not the run id derived from ``intent``.
        UnknownOutputError: an output id is not defined by the policy.
        UnsafeKeyError: a derived URI would be unsafe (cannot happen for validated inputs).
    """
    key = run_equivalence_key(intent)
    if run_id_for(key) != run_id:
        raise IntentInvalidError(f"run_id {run_id!r} is not derived from this intent")
    root = parse_s3_uri(intent.evidence_root)
    required = policy.required_gates(intent.output_ids)
    gates = tuple(
        PlanGate(
            gate_id=gate_id,
            method=policy.gates[gate_id].method,
            bundle_uri=root.join(policy.gates[gate_id].bundle).uri,
            depends_on=policy.gates[gate_id].depends_on,
            scope=policy.gates[gate_id].scope,
        )
        for gate_id in required
    )
    output_ids = tuple(sorted(intent.output_ids))
    outputs = tuple(PlanOutput(output_id=oid, uri=root.join("outputs", oid).uri + "/",
                               gates=policy.required_gates([oid])) for oid in output_ids)
    return Plan(
        run_id=run_id,
        run_equivalence_key=key,
        intent_fingerprint=intent_fingerprint(intent),
        tenant_id=intent.tenant_id,
        namespace=intent.namespace,
        scenario_id=intent.scenario_id,
        pins=intent.pins,
        window_start_ms=millis(intent.window_start),
        window_end_ms=millis(intent.window_end),
        output_ids=output_ids,
        strategy=intent.strategy,
        evidence_root=intent.evidence_root,
        policy_rev=policy.policy_rev,
        gates=gates,
        outputs=outputs,
    )


def scope_values(*, pins: Pins, scenario_id: str, run_id: str) -> dict[str, str | int]:
    """A run's value of every scope field (:data:`~worker.core.policy.SCOPE_FIELDS`)."""
    values: dict[str, str | int] = {
        "manifest_fingerprint": pins.manifest_fingerprint,
        "parameter_hash": pins.parameter_hash,
        "run_id": run_id,
        "scenario_id": scenario_id,
        "seed": pins.seed,
    }
    return {name: values[name] for name in SCOPE_FIELDS}


def instance_values(plan: Plan) -> dict[str, str | int]:
    """The planned run's own value of every scope field: what a scoped gate's
    ``_receipt.json`` must name (contract §4)."""
    return scope_values(pins=plan.pins, scenario_id=plan.scenario_id, run_id=plan.run_id)


def plan_bytes(plan: Plan) -> bytes:
    """The exact bytes of ``plan.json`` (canonical JSON)."""
    return canonical_json(plan.model_dump(mode="json"))


def plan_hash(plan: Plan) -> str:
    """sha256 of :func:`plan_bytes` — the plan's content address."""
    return sha256_hex(plan_bytes(plan))


def parse_plan(data: bytes, *, expected_hash: str | None = None) -> Plan:
    """Parse stored ``plan.json`` bytes, verifying they are canonical (and the hash if given).

    Raises:
        IntegrityError: the bytes are not a canonical plan, or do not hash to ``expected_hash``.
    """
    if expected_hash is not None and sha256_hex(data) != expected_hash:
        raise IntegrityError(f"plan bytes do not hash to {expected_hash}")
    try:
        plan = Plan.model_validate(parse_json_strict(data, max_bytes=MAX_PLAN_BYTES))
    except (InvalidJSONError, MessageTooLargeError, ValidationError) as exc:
        raise IntegrityError(f"stored plan is invalid: {exc}") from exc
    if plan_bytes(plan) != bytes(data):
        raise IntegrityError("stored plan is not in canonical form")
    return plan
