"""Who may send what (contract §10): the signature rules per message kind, and who may RETRY.

Each key set is optional; a configured set makes its messages require a valid
``sr-signature`` header, checked on the consumed bytes before any evidence read or index
write:

============================  ===================================================================
message                       signed by (when the set is configured)
============================  ===================================================================
intent                        a key of the intent's own tenant (``SR_SIGNING_KEYS``)
REEMIT / SUPERSEDE / RETRY    a key of the operator named in ``requested_by`` (``SR_OPERATOR_KEYS``)
EVIDENCE_ARRIVED / REEVALUATE that operator's key, or a key of the run's tenant
engine result                 a key of the engine named in ``reported_by`` (``SR_ENGINE_KEYS``)
============================  ===================================================================

Triggers need signatures only when ``SR_OPERATOR_KEYS`` is set. Without any key set, SR
behaves as before: ``requested_by`` and ``reported_by`` are attribution, not authentication.

RETRY (contract §11) is further restricted to authorized operators: with operator keys, the
signature is the authorization; without them, ``requested_by`` must be in ``SR_OPERATORS``
(empty means nobody — fail closed).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass

from worker.core.engine import EngineResult
from worker.core.models import RunIntent, RunTrigger, TriggerKind
from worker.core.signatures import KeyRing, verify_signed

__all__ = ["OPERATOR_ONLY_TRIGGERS", "InputAuthority"]

#: Trigger kinds only an operator may sign; the others may also be signed by the run's tenant.
OPERATOR_ONLY_TRIGGERS = frozenset({TriggerKind.REEMIT, TriggerKind.SUPERSEDE, TriggerKind.RETRY})


@dataclass(frozen=True)
class InputAuthority:
    """The configured key sets and operator allowlist; the default requires nothing."""

    tenants: KeyRing | None = None
    operators: KeyRing | None = None
    engines: KeyRing | None = None
    #: Operators allowed to RETRY when no operator key set is configured (``SR_OPERATORS``).
    operator_allowlist: frozenset[str] = frozenset()

    @property
    def requires_signatures(self) -> bool:
        """Whether any message kind must be signed."""
        return any(ring is not None for ring in (self.tenants, self.operators, self.engines))

    def check_intent(self, intent: RunIntent, header: bytes | None, value: bytes) -> str | None:
        """Check an intent's signature (a key of its own tenant); returns the key id, or None
        when no tenant key set is configured.

        Raises:
            UnauthenticatedError: unsigned, malformed, another tenant's or an unknown key, or
                a signature that does not match ``value``.
        """
        if self.tenants is None:
            return None
        rings = self._rings(self.tenants)
        allowed = self._only(rings, {self.tenants: (intent.tenant_id,)})
        what = f"intent of tenant {intent.tenant_id!r}"
        return verify_signed(header, value, rings=rings, allowed=allowed, what=what)[1]

    def check_trigger(self, trigger: RunTrigger, header: bytes | None, value: bytes,
                      run_tenant: Callable[[], str | None]) -> str | None:
        """Check a trigger's signature; returns the key id, or None when triggers need none.
        ``run_tenant`` gives the run's tenant (an index read, made only when the key is a
        tenant's and the kind allows tenants).

        Raises:
            UnauthenticatedError: see :meth:`check_intent`; also a tenant key on an
                operator-only kind, or an operator key of someone other than ``requested_by``.
        """
        if self.operators is None:
            return None
        what = f"{trigger.kind.value} trigger from {trigger.requested_by!r}"
        allowed: dict[KeyRing, Collection[str]] = {self.operators: (trigger.requested_by,)}
        if self.tenants is not None and trigger.kind not in OPERATOR_ONLY_TRIGGERS:
            allowed[self.tenants] = _LazyTenant(run_tenant)
        rings = self._rings(self.operators, self.tenants)
        return verify_signed(header, value, rings=rings, allowed=self._only(rings, allowed), what=what)[1]

    def check_result(self, result: EngineResult, header: bytes | None, value: bytes) -> str | None:
        """Check an engine result's signature (a key of the engine in ``reported_by``).

        Raises:
            UnauthenticatedError: see :meth:`check_intent`.
        """
        if self.engines is None:
            return None
        rings = self._rings(self.engines)
        allowed = self._only(rings, {self.engines: (result.reported_by,)})
        return verify_signed(header, value, rings=rings, allowed=allowed,
                             what=f"engine result from {result.reported_by!r}")[1]

    def may_retry(self, trigger: RunTrigger) -> bool:
        """Whether ``trigger`` (a RETRY, already authenticated) comes from an authorized
        operator: with operator keys its signature says so; otherwise the allowlist decides."""
        if self.operators is not None:
            return True
        return trigger.requested_by in self.operator_allowlist

    def _rings(self, *primary: KeyRing | None) -> list[KeyRing]:
        """The rings to search for a key id: those that may sign first, then the others, so
        a key of another kind of principal is named as such rather than as unknown."""
        ordered = [ring for ring in primary if ring is not None]
        ordered += [ring for ring in (self.tenants, self.operators, self.engines)
                    if ring is not None and ring not in ordered]
        return ordered

    @staticmethod
    def _only(rings: list[KeyRing], allowed: Mapping[KeyRing, Collection[str]]) -> dict[KeyRing, Collection[str]]:
        return {ring: allowed.get(ring, ()) for ring in rings}


class _LazyTenant(Collection[str]):
    """The run's tenant as a one-element collection, looked up on first use (an index read
    only for tenant-signed triggers)."""

    def __init__(self, lookup: Callable[[], str | None]) -> None:
        self._lookup = lookup
        self._value: tuple[str, ...] | None = None

    def _values(self) -> tuple[str, ...]:
        if self._value is None:
            tenant = self._lookup()
            self._value = () if tenant is None else (tenant,)
        return self._value

    def __contains__(self, item: object) -> bool:
        return item in self._values()

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())
