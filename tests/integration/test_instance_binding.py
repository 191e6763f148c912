"""Instance binding on real servers (contract §4): SeaweedFS holds the evidence, Postgres the index,
Tansu the events. Every run goes through the worker's own services (``open_services`` +
``dispatch``, as ``sr run`` composes them), one record at a time, so the S3 requests of each can
be counted: binding must add none."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.harness.evidence import (
    GATE_3A_MEMBERS,
    GATE_6B_MEMBERS,
    RECEIPT_NAME,
    instance_of,
    receipt_bytes,
    upload_bundle_gate,
    upload_member_concat_gate,
)
from tests.harness.paths import shared_evidence_policy
from tests.harness.sr_env import SREnv, make_intent
from worker.app.ports import Record
from worker.app.processor import Action
from worker.core.identity import run_id_of
from worker.core.models import RunIntent
from worker.core.policy import load_policy
from worker.runtime.compose import open_services
from worker.runtime.dispatch import dispatch

pytestmark = pytest.mark.integration


def _record(env: SREnv, intent: RunIntent, offset: int) -> Record:
    return Record(topic=env.settings.topics.intents, partition=0, offset=offset, key=None,
                  value=env.codec.encode_intent(intent), headers=(), timestamp_ms=None)


def _write(env: SREnv, s3: Any, name: str, *, receipt: bytes | None, tamper: dict[str, bytes] | None = None) -> None:
    root = env.evidence_prefix(name)
    upload_member_concat_gate(s3, env.bucket, root, "gates/3A", GATE_3A_MEMBERS)
    upload_bundle_gate(s3, env.bucket, root, "gates/6B", GATE_6B_MEMBERS, receipt=receipt, tamper_after_flag=tamper)


def test_scoped_gates_prove_the_run_and_cost_no_extra_request(sr_env: SREnv, s3_client: Any) -> None:
    bound = make_intent(sr_env, "bound", seed=11)
    other_seed = make_intent(sr_env, "other-seed", seed=12)
    no_receipt = make_intent(sr_env, "no-receipt")
    edited = make_intent(sr_env, "edited")
    _write(sr_env, s3_client, "bound", receipt=receipt_bytes("gate_6B", instance_of(bound)))
    _write(sr_env, s3_client, "other-seed", receipt=receipt_bytes("gate_6B", {**instance_of(other_seed), "seed": 13}))
    _write(sr_env, s3_client, "no-receipt", receipt=None)
    _write(sr_env, s3_client, "edited", receipt=receipt_bytes("gate_6B", instance_of(edited)),
           tamper={RECEIPT_NAME: receipt_bytes("gate_6B", {**instance_of(edited), "seed": 99})})
    # Two seeds on one root: the receipt names the first.
    first = make_intent(sr_env, "twins", seed=1)
    second = make_intent(sr_env, "twins", seed=2)
    _write(sr_env, s3_client, "twins", receipt=receipt_bytes("gate_6B", instance_of(first)))
    # A global gate (gate_3A, output "accounts") serves runs of any seed from one root.
    reference = [make_intent(sr_env, "reference", seed=s, outputs=("accounts",)) for s in (1, 2, 3)]
    upload_member_concat_gate(s3_client, sr_env.bucket, sr_env.evidence_prefix("reference"), "gates/3A",
                              GATE_3A_MEMBERS)
    expected = [(bound, Action.READY, None), (other_seed, Action.QUARANTINED, "INSTANCE_MISMATCH"),
                (no_receipt, Action.FAILED, "INSTANCE_PROOF_MISSING"), (edited, Action.QUARANTINED, "DIGEST_MISMATCH"),
                (first, Action.READY, None), (second, Action.QUARANTINED, "INSTANCE_MISMATCH"),
                *[(r, Action.READY, None) for r in reference]]
    requests: dict[str, int] = {}
    with open_services(sr_env.settings, sr_env.policy) as services:
        for offset, (intent, action, reason) in enumerate(expected):
            services.store.counter.reset()
            outcome = dispatch(services.processor, _record(sr_env, intent, offset),
                               triggers_topic=sr_env.settings.topics.triggers)
            requests[f"{intent.scenario_id}/{intent.pins.seed}"] = services.store.counter.requests
            row = services.index.get(run_id_of(intent))
            assert outcome.action is action and row is not None and row.reason_code == reason, (intent.scenario_id,
                                                                                                   outcome)
        facts_hash = services.index.get(run_id_of(bound)).facts_view_hash  # type: ignore[union-attr]
        keys = services.truth.keys_for(bound.tenant_id, bound.namespace, run_id_of(bound))
        view = json.loads(services.store.get(sr_env.bucket, keys.facts(facts_hash or ""), max_bytes=1 << 20))
    gates = {r["gate_id"]: r for r in view["receipts"]}
    assert view["format_version"] == 2
    assert gates["gate_6B"]["scope"] == ["manifest_fingerprint", "parameter_hash", "scenario_id", "seed"]
    assert gates["gate_6B"]["bound"]["seed"] == 11 and gates["gate_6B"]["bound"] == instance_of(bound)
    assert gates["gate_3A"]["scope"] == []
    assert view["outputs"] == [{"output_id": "transactions", "gates": ["gate_3A", "gate_6B"],
                                "locator": f"{bound.evidence_root}/outputs/transactions/"}]

    # The same READY evidence under the unscoped policy: binding costs no extra S3 request.
    control = make_intent(sr_env, "control", seed=11)
    _write(sr_env, s3_client, "control", receipt=receipt_bytes("gate_6B", instance_of(control)))
    with open_services(sr_env.settings, load_policy(shared_evidence_policy())) as services:
        services.store.counter.reset()
        assert dispatch(services.processor, _record(sr_env, control, 99),
                        triggers_topic=sr_env.settings.topics.triggers).action is Action.READY
        unscoped = services.store.counter.requests
    assert requests[f"{bound.scenario_id}/11"] == unscoped, (requests, unscoped)
