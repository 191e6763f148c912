"""Gate policy (contract §4): which evidence gates each output requires.

A policy is TOML::

    [outputs.transactions]
    gates = ["gate_6B"]

    [gates.gate_6B]
    method = "sha256_bundle_digest"      # or "sha256_member_digest_concat"
    bundle = "gates/6B"                  # relative to the intent's evidence_root
    depends_on = ["gate_3A"]             # optional; required gates close transitively
    scope = ["seed", "scenario_id"]      # optional; instance binding (see below)

``scope`` lists the run fields a gate's evidence is bound to (any of :data:`SCOPE_FIELDS`;
default none = a global gate, e.g. reference data every run shares). A scoped gate's bundle
must hold a ``_receipt.json`` naming the run's value of each field (contract §4).

``policy_rev`` is the sha256 of the canonical JSON of the *normalised* content (lists sorted,
defaults filled in), so re-formatting or re-ordering the file does not change it. An empty
``scope`` is left out of the normalised content, so a policy without scopes keeps the
``policy_rev`` it had before scopes existed.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from worker.core.canonical import canonical_json, sha256_hex
from worker.core.keys import validate_relative_key, validate_segment
from worker.errors import PolicyError, UnknownOutputError, UnsafeKeyError

__all__ = ["MAX_POLICY_BYTES", "SCOPE_FIELDS", "GateMethod", "GateSpec", "Policy", "build_policy", "load_policy"]

MAX_POLICY_BYTES: Final = 1024 * 1024
POLICY_FORMAT: Final = 1
#: The run fields a gate's evidence can be bound to (contract §4, instance binding).
SCOPE_FIELDS: Final = ("manifest_fingerprint", "parameter_hash", "run_id", "scenario_id", "seed")


class GateMethod(StrEnum):
    """How a gate bundle's ``_passed.flag`` digest is computed."""

    SHA256_BUNDLE_DIGEST = "sha256_bundle_digest"
    SHA256_MEMBER_DIGEST_CONCAT = "sha256_member_digest_concat"


class GateSpec(BaseModel):
    """One gate: a bundle prefix (relative to evidence_root) and its verification method."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gate_id: str
    method: GateMethod
    bundle: str
    depends_on: tuple[str, ...] = ()
    scope: tuple[str, ...] = ()

    @field_validator("gate_id")
    @classmethod
    def _gate_id(cls, value: str) -> str:
        return _safe(validate_segment, value, "gate_id")

    @field_validator("bundle")
    @classmethod
    def _bundle(cls, value: str) -> str:
        return _safe(validate_relative_key, value, "bundle")

    @field_validator("depends_on")
    @classmethod
    def _depends_on(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for dep in value:
            _safe(validate_segment, dep, "depends_on entry")
        if len(set(value)) != len(value):
            raise ValueError("depends_on has duplicate entries")
        # Order carries no meaning; sorting makes equal policies compare equal.
        return tuple(sorted(value))

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(SCOPE_FIELDS))
        if unknown:
            raise ValueError(f"scope: unknown field(s) {unknown}; allowed: {list(SCOPE_FIELDS)}")
        if len(set(value)) != len(value):
            raise ValueError("scope has duplicate entries")
        return tuple(sorted(value))


def _safe(check: Any, value: str, what: str) -> str:
    try:
        result: str = check(value)
    except UnsafeKeyError as exc:
        raise ValueError(f"{what}: {exc}") from exc
    return result


@dataclass(frozen=True)
class Policy:
    """A validated, immutable policy. Build with :func:`load_policy` or :func:`build_policy`.

    (Constructing it directly skips validation and the ``policy_rev`` computation.)
    """

    outputs: Mapping[str, tuple[str, ...]]
    gates: Mapping[str, GateSpec]
    policy_rev: str

    @cached_property
    def _closure(self) -> Mapping[str, frozenset[str]]:
        return MappingProxyType(_closures(self.gates))

    def required_gates(self, output_ids: Iterable[str]) -> tuple[str, ...]:
        """The transitive closure of gates required by ``output_ids``, sorted.

        Raises:
            UnknownOutputError: one or more outputs are not defined by the policy.
        """
        wanted = list(output_ids)
        unknown = sorted({o for o in wanted if o not in self.outputs})
        if unknown:
            shown = ", ".join(repr(o) for o in unknown[:10])
            raise UnknownOutputError(f"outputs not defined by policy {self.policy_rev[:12]}: {shown}")
        required: set[str] = set()
        for output_id in wanted:
            for gate_id in self.outputs[output_id]:
                required |= self._closure[gate_id]
        return tuple(sorted(required))

    def normalised(self) -> dict[str, Any]:
        """The normalised plain content whose canonical JSON hashes to :attr:`policy_rev`."""
        return _normalised(self.outputs, self.gates)


def _normalised(outputs: Mapping[str, tuple[str, ...]], gates: Mapping[str, GateSpec]) -> dict[str, Any]:
    return {
        "format": POLICY_FORMAT,
        "outputs": {o: sorted(g) for o, g in outputs.items()},
        "gates": {gid: _normalised_gate(spec) for gid, spec in gates.items()},
    }


def _normalised_gate(spec: GateSpec) -> dict[str, Any]:
    gate: dict[str, Any] = {"method": spec.method.value, "bundle": spec.bundle, "depends_on": list(spec.depends_on)}
    if spec.scope:
        gate["scope"] = list(spec.scope)
    return gate


def _closures(gates: Mapping[str, GateSpec]) -> dict[str, frozenset[str]]:
    """Transitive dependency closure of every gate; raises PolicyError on a cycle."""
    done: dict[str, frozenset[str]] = {}
    for start in sorted(gates):
        if start in done:
            continue
        # Iterative DFS (a hostile policy must not hit the recursion limit).
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, bool]] = [(start, False)]
        while stack:
            gate_id, leaving = stack.pop()
            if leaving:
                on_path.discard(gate_id)
                path.pop()
                closure = {gate_id}
                for dep in gates[gate_id].depends_on:
                    closure |= done[dep]
                done[gate_id] = frozenset(closure)
                continue
            if gate_id in done:
                continue
            if gate_id in on_path:
                cycle = [*path[path.index(gate_id) :], gate_id]
                raise PolicyError(f"dependency cycle between gates: {' -> '.join(cycle)}")
            on_path.add(gate_id)
            path.append(gate_id)
            stack.append((gate_id, True))
            stack.extend((dep, False) for dep in sorted(gates[gate_id].depends_on, reverse=True))
    return done


def build_policy(outputs: Mapping[str, Iterable[str]], gates: Iterable[GateSpec]) -> Policy:
    """Validate and freeze a policy from parts, computing ``policy_rev``.

    Raises:
        PolicyError: unsafe/duplicate ids, an output without gates, a reference to an
            undefined gate, or a dependency cycle.
    """
    gate_map: dict[str, GateSpec] = {}
    for spec in gates:
        if spec.gate_id in gate_map:
            raise PolicyError(f"gate {spec.gate_id!r} defined twice")
        gate_map[spec.gate_id] = spec
    for spec in gate_map.values():
        dangling = sorted(set(spec.depends_on) - gate_map.keys())
        if dangling:
            raise PolicyError(f"gate {spec.gate_id!r} depends on undefined gate(s) {dangling}")
    output_map: dict[str, tuple[str, ...]] = {}
    for output_id, gate_ids in outputs.items():
        try:
            validate_segment(output_id)
        except UnsafeKeyError as exc:
            raise PolicyError(f"output id {output_id!r}: {exc}") from exc
        listed = list(gate_ids)
        if not listed:
            # An output with no gates would become READY on no evidence at all: fail closed.
            raise PolicyError(f"output {output_id!r} lists no gates")
        if len(set(listed)) != len(listed):
            raise PolicyError(f"output {output_id!r} lists a gate twice")
        dangling = sorted(set(listed) - gate_map.keys())
        if dangling:
            raise PolicyError(f"output {output_id!r} references undefined gate(s) {dangling}")
        output_map[output_id] = tuple(sorted(listed))
    if not output_map:
        raise PolicyError("policy defines no outputs")
    _closures(gate_map)  # rejects cycles now rather than on first use
    sorted_gates = {gid: gate_map[gid] for gid in sorted(gate_map)}
    sorted_outputs = {oid: output_map[oid] for oid in sorted(output_map)}
    rev = sha256_hex(canonical_json(_normalised(sorted_outputs, sorted_gates)))
    return Policy(
        outputs=MappingProxyType(sorted_outputs),
        gates=MappingProxyType(sorted_gates),
        policy_rev=rev,
    )


def _str_list(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where} must be an array of strings")
    return list(value)


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(f"{where} must be a table")
    return value


def load_policy(data: bytes) -> Policy:
    """Parse a TOML policy file's bytes (contract §4 shape).

    Raises:
        PolicyError: larger than 1 MiB, not UTF-8/TOML, unknown keys, unknown method, bad
            bundle path, dangling gate reference, dependency cycle, or no outputs.
    """
    if not isinstance(data, bytes | bytearray):
        raise PolicyError(f"policy must be bytes, got {type(data).__name__}")
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"policy file is {len(data)} bytes, cap is {MAX_POLICY_BYTES}")
    try:
        doc = tomllib.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise PolicyError(f"policy is not valid UTF-8 TOML: {exc}") from exc
    unknown_top = sorted(set(doc) - {"outputs", "gates"})
    if unknown_top:
        raise PolicyError(f"unknown top-level policy keys {unknown_top}")
    outputs: dict[str, list[str]] = {}
    for output_id, body in _table(doc.get("outputs", {}), "[outputs]").items():
        table = _table(body, f"[outputs.{output_id}]")
        extra = sorted(set(table) - {"gates"})
        if extra:
            raise PolicyError(f"[outputs.{output_id}] has unknown keys {extra}")
        outputs[output_id] = _str_list(table.get("gates"), f"outputs.{output_id}.gates")
    specs: list[GateSpec] = []
    for gate_id, body in _table(doc.get("gates", {}), "[gates]").items():
        table = _table(body, f"[gates.{gate_id}]")
        extra = sorted(set(table) - {"method", "bundle", "depends_on", "scope"})
        if extra:
            raise PolicyError(f"[gates.{gate_id}] has unknown keys {extra}")
        method = table.get("method")
        if method not in {m.value for m in GateMethod}:
            raise PolicyError(f"gate {gate_id!r}: unknown method {method!r}")
        try:
            specs.append(
                GateSpec(
                    gate_id=gate_id,
                    method=GateMethod(method),
                    bundle=table.get("bundle"),
                    depends_on=tuple(_str_list(table.get("depends_on", []), f"gates.{gate_id}.depends_on")),
                    scope=tuple(_str_list(table.get("scope", []), f"gates.{gate_id}.scope")),
                )
            )
        except ValidationError as exc:
            # One line, no docs URL: this text becomes a CLI error and a log field.
            reasons = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'gate'}: {err['msg']}"
                                for err in exc.errors(include_url=False, include_input=False)[:5])
            raise PolicyError(f"gate {gate_id!r}: {reasons}") from exc
        except ValueError as exc:
            raise PolicyError(f"gate {gate_id!r}: {' '.join(str(exc).split())}") from exc
    return build_policy(outputs, specs)
