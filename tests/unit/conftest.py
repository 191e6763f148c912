"""Shared fixtures and builders for the pure-core unit tests."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.harness.schema_registry import FakeSchemaRegistry
from worker.adapters.avro import ConfluentSchemaRegistry, RegistryConfig
from worker.core.models import RunIntent, parse_intent
from worker.core.policy import Policy, load_policy

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"

settings.register_profile("unit", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("unit")

H1 = "a" * 64
H2 = "b" * 64

BASE_INTENT: dict[str, Any] = {
    "request_id": "req-1",
    "tenant_id": "t1",
    "namespace": "ns",
    "scenario_id": "scen",
    "pins": {"manifest_fingerprint": H1, "parameter_hash": H2, "seed": 7},
    "window_start": 1_700_000_000_000,
    "window_end": 1_700_086_400_000,
    "output_ids": ["transactions", "accounts"],
    "strategy": "AUTO",
    "evidence_root": "s3://sr-dev/evidence/t1/run1",
    "deadline": None,
    "submitted_at": 1_700_090_000_000,
    "submitted_by": "producer",
}


def intent_dict(**overrides: Any) -> dict[str, Any]:
    """A fresh, valid Avro-shaped intent dict with ``overrides`` applied."""
    data = copy.deepcopy(BASE_INTENT)
    data.update(overrides)
    return data


def make_intent(**overrides: Any) -> RunIntent:
    """A valid RunIntent with ``overrides`` applied."""
    return parse_intent(intent_dict(**overrides))


ENGINE_RUN = "0123456789abcdef0123456789abcdef"
#: attempt_id_for(ENGINE_RUN, 1), spelled out so the builders need no worker code.
ENGINE_ATTEMPT_1 = "b32855e8a15d88ba53c45affec0985ce"


def engine_request_dict(**overrides: Any) -> dict[str, Any]:
    """A valid EngineRequest (attempt 1 of ENGINE_RUN) in the Avro dict shape, ``overrides`` applied."""
    data: dict[str, Any] = {
        "attempt_id": ENGINE_ATTEMPT_1,
        "attempt_no": 1,
        "run_id": ENGINE_RUN,
        "tenant_id": "t1",
        "namespace": "ns",
        "scenario_id": "scen",
        "pins": {"manifest_fingerprint": H1, "parameter_hash": H2, "seed": -7},
        "window_start": 1_699_000_000_000,
        "window_end": 1_699_086_400_000,
        "output_ids": ["transactions", "accounts"],
        "evidence_root": "s3://sr-dev/evidence/t1/run1",
        "plan_hash": "c" * 64,
        "policy_rev": "d" * 64,
        "requested_at": 1_700_000_000_000,
        "attempt_deadline": 1_700_000_900_000,
    }
    data.update(overrides)
    return data


def engine_result_dict(**overrides: Any) -> dict[str, Any]:
    """A valid EngineResult (SUCCEEDED, attempt 1 of ENGINE_RUN) in the Avro dict shape."""
    data: dict[str, Any] = {
        "attempt_id": ENGINE_ATTEMPT_1,
        "run_id": ENGINE_RUN,
        "status": "SUCCEEDED",
        "detail": "wrote 2 outputs",
        "reported_by": "engine-1",
        "finished_at": 1_700_000_060_000,
    }
    data.update(overrides)
    return data


@pytest.fixture
def intent() -> RunIntent:
    return make_intent()


@pytest.fixture(scope="session")
def policy_bytes() -> bytes:
    return (SCHEMAS / "policy.example.toml").read_bytes()


@pytest.fixture(scope="session")
def policy(policy_bytes: bytes) -> Policy:
    return load_policy(policy_bytes)


# --------------------------------------------- a Confluent Schema Registry stand-in (HTTP, in-process)
@pytest.fixture
def registry() -> Iterator[tuple[ConfluentSchemaRegistry, FakeSchemaRegistry]]:
    """SR's registry adapter (no retries, auto-register on) in front of a fresh stand-in registry."""
    with FakeSchemaRegistry() as state:
        client = ConfluentSchemaRegistry(RegistryConfig(url=f"{state.url}/", timeout=5, max_retries=0))
        try:
            yield client, state
        finally:
            client.close()
