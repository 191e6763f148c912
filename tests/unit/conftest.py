"""Shared fixtures and builders for the pure-core unit tests."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from worker.adapters.avro import HttpSchemaRegistry
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
class FakeRegistry:
    """State of the in-process Confluent Schema Registry stand-in (:func:`registry`)."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.fail_next = 0
        self.calls = 0


def _handler(state: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            state.calls += 1
            if state.fail_next:
                state.fail_next -= 1
                self._send(503, {"error_code": 50301, "message": "unavailable"})
                return
            parts = self.path.split("/")
            if len(parts) != 4 or parts[1] != "subjects" or parts[3] != "versions":
                self._send(404, {"error_code": 40401})
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            schema = body["schema"]
            if "Incompatible" in schema:
                self._send(409, {"error_code": 409})
                return
            known = [i for i, text in state.schemas.items() if text == schema]
            schema_id = known[0] if known else len(state.schemas) + 1
            state.schemas[schema_id] = schema
            state.subjects.setdefault(parts[2], []).append(schema_id)
            self._send(200, {"id": schema_id})

        def do_GET(self) -> None:
            state.calls += 1
            prefix = "/schemas/ids/"
            if self.path.startswith(prefix):
                schema_id = int(self.path[len(prefix) :])
                if schema_id in state.schemas:
                    self._send(200, {"schema": state.schemas[schema_id]})
                    return
            self._send(404, {"error_code": 40403, "message": "Schema not found"})

    return Handler


@pytest.fixture
def registry() -> Iterator[tuple[HttpSchemaRegistry, FakeRegistry]]:
    state = FakeRegistry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpSchemaRegistry(f"http://127.0.0.1:{server.server_address[1]}/", timeout=5), state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
