"""What the reference engine writes for one :class:`~worker.core.engine.EngineRequest`.

:func:`evidence_for` is pure: it resolves the gates the request's outputs need under the gate
policy (the outputs' gates closed over ``depends_on``, exactly as SR plans them) and lays out
every object below the request's ``evidence_root``:

* ``outputs/<output_id>/part-0000.json`` for each requested output;
* for each required gate, its bundle (the policy's ``bundle`` path) with two members, plus
  ``_receipt.json`` when the gate is scoped (contract §4, instance binding: canonical JSON of
  ``gate_id`` and the run's value of each scope field, a member like the others), plus
  ``index.json`` for ``sha256_member_digest_concat`` gates, and ``_passed.flag`` last;
* gates in dependency order (a gate's ``depends_on`` before it), then by gate id.

The content is a function of the *run* (run id, scenario, pins, window, gate, output), never
of the attempt or the clock: a second attempt, or a re-delivered request, writes the same bytes
to the same keys, so write-once PUTs make re-writing a no-op and never a DRIFT.

:func:`write_evidence` writes that layout through ``put_write_once`` (idempotent for identical
bytes; a *different* object already at a key raises :class:`~worker.errors.DriftError`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from worker.core.canonical import canonical_json
from worker.core.engine import EngineRequest
from worker.core.evidence import RECEIPT_NAME, receipt_document
from worker.core.keys import S3Location, parse_s3_uri
from worker.core.models import millis
from worker.core.plan import scope_values
from worker.core.policy import GateSpec, Policy
from worker.engine.bundles import GateLayout, gate_layout

__all__ = [
    "OUTPUT_PART",
    "EvidenceStore",
    "GateWrite",
    "RequestEvidence",
    "dependency_order",
    "evidence_for",
    "receipt_for",
    "write_evidence",
]

#: The one object written below each output's prefix.
OUTPUT_PART = "part-0000.json"


class EvidenceStore(Protocol):
    """Where the engine writes: a write-once PUT (SR's ``ObjectStore`` and its in-memory twin)."""

    def put_write_once(self, bucket: str, key: str, body: bytes) -> object:
        """Create ``key`` with ``body``; an existing identical object is fine.

        Raises:
            DriftError: a different object exists at ``key``.
            S3UnavailableError / S3AccessError: the store is unreachable / refuses.
        """
        ...


@dataclass(frozen=True)
class GateWrite:
    """One gate's bundle: where it goes and what it holds (flag last)."""

    gate_id: str
    bundle: S3Location
    layout: GateLayout


@dataclass(frozen=True)
class RequestEvidence:
    """Everything written for one request, in write order: outputs first, then the gates."""

    root: S3Location
    outputs: tuple[tuple[S3Location, bytes], ...]
    gates: tuple[GateWrite, ...]

    def objects(self) -> list[tuple[S3Location, bytes]]:
        """Every object in write order (each gate's ``_passed.flag`` after its members)."""
        written = list(self.outputs)
        for gate in self.gates:
            written.extend((gate.bundle.join(rel), body) for rel, body in gate.layout.objects)
        return written

    def summary(self) -> str:
        """One deterministic line for an EngineResult's ``detail``."""
        gate_ids = ", ".join(g.gate_id for g in self.gates)
        return (f"wrote {len(self.outputs)} output(s) and {len(self.gates)} gate bundle(s) "
                f"({gate_ids}) under {self.root.uri}")


def dependency_order(gates: Mapping[str, GateSpec], gate_ids: Sequence[str]) -> list[str]:
    """``gate_ids`` ordered so every gate comes after the gates it depends on (ties by id).

    ``gate_ids`` must be closed over ``depends_on`` (as :meth:`Policy.required_gates` returns
    them); the policy loader has already refused cycles.
    """
    remaining = sorted(gate_ids)
    done: list[str] = []
    placed: set[str] = set()
    while remaining:
        ready = [g for g in remaining if set(gates[g].depends_on) <= placed]
        if not ready:  # not closed over depends_on: place the rest by id rather than loop forever
            ready = remaining[:1]
        first = ready[0]
        done.append(first)
        placed.add(first)
        remaining.remove(first)
    return done


def _members(request: EngineRequest, gate_id: str, spec: GateSpec) -> dict[str, bytes]:
    pins = request.pins
    header = "run_id,scenario_id,gate_id,part,manifest_fingerprint,parameter_hash,seed\n"
    members = {
        f"part-{part:04d}.csv": (
            header + f"{request.run_id},{request.scenario_id},{gate_id},{part},"
            f"{pins.manifest_fingerprint},{pins.parameter_hash},{pins.seed}\n"
        ).encode("utf-8")
        for part in range(2)
    }
    if spec.scope:
        members[RECEIPT_NAME] = receipt_for(request, gate_id, spec.scope)
    return members


def receipt_for(request: EngineRequest, gate_id: str, scope: Sequence[str]) -> bytes:
    """The ``_receipt.json`` of a gate scoped to ``scope`` for ``request``'s run."""
    return receipt_document(gate_id, scope, scope_values(pins=request.pins, scenario_id=request.scenario_id,
                                                         run_id=request.run_id))


def _output(request: EngineRequest, output_id: str) -> bytes:
    return canonical_json({
        "output_id": output_id,
        "run_id": request.run_id,
        "tenant_id": request.tenant_id,
        "namespace": request.namespace,
        "scenario_id": request.scenario_id,
        "pins": request.pins.to_avro(),
        "window_start": millis(request.window_start),
        "window_end": millis(request.window_end),
    })


def evidence_for(request: EngineRequest, policy: Policy) -> RequestEvidence:
    """The outputs and gate bundles the reference engine writes for ``request`` (no I/O).

    Raises:
        UnknownOutputError: an output of the request is not defined by ``policy``.
        UnsafeKeyError: a derived key would be unsafe (cannot happen for a valid request and policy).
    """
    root = parse_s3_uri(request.evidence_root)
    required = policy.required_gates(request.output_ids)
    outputs = tuple((root.join("outputs", oid, OUTPUT_PART), _output(request, oid))
                    for oid in sorted(request.output_ids))
    gates = tuple(
        GateWrite(gate_id, root.join(policy.gates[gate_id].bundle),
                  gate_layout(policy.gates[gate_id].method, _members(request, gate_id, policy.gates[gate_id])))
        for gate_id in dependency_order(policy.gates, required)
    )
    return RequestEvidence(root=root, outputs=outputs, gates=gates)


def write_evidence(store: EvidenceStore, evidence: RequestEvidence) -> int:
    """Write every object of ``evidence`` in order with write-once PUTs; returns how many.

    Stops at the first failure: what was written stays (a later attempt writes the same bytes
    again as no-ops) and a gate whose flag was not reached stays MISSING for SR.

    Raises:
        DriftError: a key already holds different bytes (someone else's evidence: fail closed).
        S3UnavailableError / S3AccessError: from the store.
    """
    objects = evidence.objects()
    for location, body in objects:
        store.put_write_once(location.bucket, location.prefix, body)
    return len(objects)
