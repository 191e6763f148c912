"""An SR world made of the in-memory ports (:mod:`worker.app.testing`): no servers.

Used by the application-layer unit tests. A :class:`World` is the durable state (S3,
Postgres, the broker, time); :meth:`World.processor` builds one "worker process" on it, so
a test can crash a process (:class:`~worker.app.testing.SimulatedCrash`) and build another
one on the same state, exactly like a restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tests.harness.evidence import instance_of, receipt_bytes, upload_bundle_gate, upload_member_concat_gate
from tests.harness.paths import EXAMPLE_POLICY
from worker.adapters.avro import AvroCodec
from worker.app.authentication import InputAuthority
from worker.app.crashpoints import INERT, CrashPoints
from worker.app.ports import Record
from worker.app.processor import Outcome, OutputTopics, RunProcessor
from worker.app.publisher import Publisher
from worker.app.testing import (
    InMemoryDatabase,
    InMemoryLeases,
    InMemoryObjectStore,
    InMemoryRunIndex,
    ManualClock,
    StubEventSink,
)
from worker.app.truth import TruthStore
from worker.app.verifier import EvidenceVerifier
from worker.core.attempts import EngineBudget
from worker.core.engine import EngineRequest, EngineResult, EngineStatus
from worker.core.identity import run_id_of
from worker.core.keys import RunKeys, run_keys
from worker.core.ledger import LedgerEntry
from worker.core.models import Pins, RunIntent, RunTrigger, Strategy, TriggerKind
from worker.core.policy import Policy, load_policy
from worker.signing import Signer

BUCKET = "sr-unit"
PREFIX = "sr"
TENANT = "t1"
START = datetime(2026, 3, 1, tzinfo=UTC)
TOPICS = OutputTopics(ready="sr.ready", status="sr.run-status", engine_requests="sr.engine-requests")
DLQ = "sr.dlq"
INTENTS = "sr.run-intents"
TRIGGERS = "sr.triggers"
RESULTS = "sr.engine-results"
#: The engine budget of the unit worlds: 10-minute attempts, 30 s backoff (doubling), 3 attempts.
BUDGET = EngineBudget(attempt_timeout_ms=600_000, retry_backoff_ms=30_000, max_attempts=3)

GATE_3A_MEMBERS = {"a.csv": b"id,amount\n1,10\n", "b.csv": b"id,amount\n2,20\n"}
GATE_6B_MEMBERS = {"part-0": b"transactions-0\n", "part-1": b"transactions-1\n"}


@dataclass
class World:
    """Durable state shared by every "process" of one test."""

    clock: ManualClock = field(default_factory=lambda: ManualClock(START))
    store: InMemoryObjectStore = field(default_factory=InMemoryObjectStore)
    sink: StubEventSink = field(default_factory=StubEventSink)
    codec: AvroCodec = field(default_factory=AvroCodec)
    policy_text: bytes = field(default_factory=EXAMPLE_POLICY.read_bytes)
    db: InMemoryDatabase = field(init=False)
    _offsets: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.db = InMemoryDatabase(self.clock)

    @property
    def index(self) -> InMemoryRunIndex:
        return InMemoryRunIndex(self.db)

    @property
    def policy(self) -> Policy:
        return load_policy(self.policy_text)

    @property
    def truth(self) -> TruthStore:
        return TruthStore(self.store, BUCKET, PREFIX)

    def processor(self, *, policy: Policy | None = None, crash: CrashPoints = INERT,
                  leases: InMemoryLeases | None = None, recheck_interval: float = 30.0,
                  engine: EngineBudget = BUDGET, authority: InputAuthority | None = None) -> RunProcessor:
        """One worker "process" on this world's state."""
        return RunProcessor(
            policy=policy or self.policy,
            codec=self.codec,
            index=self.index,
            leases=leases or InMemoryLeases(self.db),
            truth=self.truth,
            verifier=EvidenceVerifier(self.store, concurrency=2),
            publisher=Publisher(self.sink, self.index, dlq_topic=DLQ, crash_points=crash),
            topics=TOPICS,
            s3_bucket=BUCKET,
            recheck_interval=recheck_interval,
            clock=self.clock,
            crash_points=crash,
            engine=engine,
            authority=authority,
        )

    # ---------------------------------------------------------------- inputs
    def intent(self, name: str = "r1", *, outputs: tuple[str, ...] = ("transactions",), seed: int = 1,
               deadline: datetime | None = None, evidence_root: str | None = None,
               tenant: str = TENANT, **changes: Any) -> RunIntent:
        """A valid intent whose evidence root is ``evidence/<tenant>/<name>``; strategy REUSE
        (no engine) unless ``strategy=`` says otherwise."""
        data: dict[str, Any] = {
            "request_id": f"req-{name}",
            "tenant_id": tenant,
            "namespace": "payments",
            "scenario_id": f"scn-{name}",
            "pins": Pins(manifest_fingerprint="a" * 64, parameter_hash="b" * 64, seed=seed),
            "window_start": START,
            "window_end": START + timedelta(days=1),
            "output_ids": outputs,
            "strategy": Strategy.REUSE,
            "evidence_root": evidence_root or f"s3://{BUCKET}/evidence/{tenant}/{name}",
            "deadline": deadline,
            "submitted_at": START,
            "submitted_by": "tests",
        }
        data.update(changes)
        return RunIntent.model_validate(data)

    def trigger(self, run_id: str, kind: TriggerKind, *, reason: str = "test", by: str = "ops") -> RunTrigger:
        """A trigger requested now."""
        return RunTrigger(run_id=run_id, kind=kind, reason=reason, requested_by=by, requested_at=self.clock())

    def record(self, topic: str, value: bytes, key: bytes | None = None, *, signer: Signer | None = None,
               headers: Sequence[tuple[str, bytes]] = ()) -> Record:
        """A consumed record of ``value`` at the next offset of ``topic``[0], with ``headers``
        and, with ``signer``, an ``sr-signature`` header over ``value``."""
        offset = self._offsets.get(topic, 0)
        self._offsets[topic] = offset + 1
        signed = tuple(signer.headers_for(value).items()) if signer is not None else ()
        return Record(topic, 0, offset, key, value, (*signed, *headers), None)

    def intent_record(self, intent: RunIntent, **signing: Any) -> Record:
        """``intent`` as a consumed, Avro-encoded record (``signer=`` / ``headers=`` as :meth:`record`)."""
        return self.record(INTENTS, self.codec.encode_intent(intent), **signing)

    def trigger_record(self, trigger: RunTrigger, **signing: Any) -> Record:
        """``trigger`` as a consumed, Avro-encoded record (``signer=`` / ``headers=`` as :meth:`record`)."""
        return self.record(TRIGGERS, self.codec.encode_trigger(trigger), key=trigger.run_id.encode(), **signing)

    # ---------------------------------------------------------------- evidence
    def root_prefix(self, intent: RunIntent) -> str:
        return intent.evidence_root.removeprefix(f"s3://{BUCKET}/")

    def write_gate_3a(self, intent: RunIntent, members: Mapping[str, bytes] = GATE_3A_MEMBERS, *,
                      with_flag: bool = True, tamper: Mapping[str, bytes] | None = None) -> str:
        """A ``sha256_member_digest_concat`` bundle at ``gates/3A``; returns its digest."""
        return upload_member_concat_gate(self.store, BUCKET, self.root_prefix(intent), "gates/3A", members,
                                         flag="auto" if with_flag else None,
                                         tamper_after_flag=tamper)

    def write_gate_6b(self, intent: RunIntent, members: Mapping[str, bytes] = GATE_6B_MEMBERS, *,
                      with_flag: bool = True, tamper: Mapping[str, bytes] | None = None,
                      receipt: bytes | Literal["auto"] | None = "auto") -> str:
        """A ``sha256_bundle_digest`` bundle at ``gates/6B`` (scoped in the example policy: with
        ``intent``'s receipt unless ``receipt`` says otherwise); returns its digest."""
        proof = receipt_bytes("gate_6B", instance_of(intent)) if receipt == "auto" else receipt
        return upload_bundle_gate(self.store, BUCKET, self.root_prefix(intent), "gates/6B", members,
                                  flag="auto" if with_flag else None, tamper_after_flag=tamper, receipt=proof)

    def write_complete(self, intent: RunIntent) -> None:
        """Evidence for both example gates (``transactions`` needs 6B, which needs 3A)."""
        self.write_gate_3a(intent)
        self.write_gate_6b(intent)

    # ---------------------------------------------------------------- reading back
    def keys(self, intent: RunIntent) -> RunKeys:
        return run_keys(PREFIX, intent.tenant_id, intent.namespace, run_id_of(intent))

    def ledger(self, intent: RunIntent) -> tuple[LedgerEntry, ...]:
        """The verified ledger of ``intent``'s run."""
        return self.truth.read_ledger(self.keys(intent))

    def kinds(self, intent: RunIntent) -> list[str]:
        """The ledger's entry kinds, in order."""
        return [e.kind.value for e in self.ledger(intent)]

    def ready_events(self) -> list[Any]:
        """Every READY/SUPERSEDE event on the ready topic, decoded."""
        return [self.codec.decode_ready(m.value) for m in self.sink.messages(TOPICS.ready)]

    def status_events(self) -> list[Any]:
        """Every status event on the status topic, decoded."""
        return [self.codec.decode_status(m.value) for m in self.sink.messages(TOPICS.status)]

    def dlq(self) -> list[Any]:
        """Everything dead-lettered."""
        return self.sink.messages(DLQ)

    def handle(self, processor: RunProcessor, intent: RunIntent, **signing: Any) -> Outcome:
        """Hand ``intent`` to ``processor`` as the worker loop would."""
        record = self.intent_record(intent, **signing)
        outcome = processor.handle_intent(intent, record)
        if outcome.dead_letter is not None:  # as the worker loop does, before storing the offset
            processor.dead_letter(record, outcome.dead_letter)
        return outcome

    def handle_trigger(self, processor: RunProcessor, trigger: RunTrigger, **signing: Any) -> Outcome:
        """Hand ``trigger`` to ``processor`` as the worker loop would (a permanent error is
        raised, as the loop would dead-letter it)."""
        return processor.handle_trigger(trigger, self.trigger_record(trigger, **signing))

    # ---------------------------------------------------------------- the engine
    def engine_requests(self) -> list[EngineRequest]:
        """Every engine request SR sent, decoded, in send order (re-sends included)."""
        return [self.codec.decode_engine_request(m.value) for m in self.sink.messages(TOPICS.engine_requests)]

    def result(self, request: EngineRequest, status: EngineStatus = EngineStatus.SUCCEEDED, *,
               detail: str = "", attempt_id: str | None = None) -> EngineResult:
        """The engine's result for ``request``, finished now."""
        return EngineResult(attempt_id=attempt_id or request.attempt_id, run_id=request.run_id, status=status,
                            detail=detail, reported_by="unit-engine", finished_at=self.clock())

    def handle_result(self, processor: RunProcessor, result: EngineResult, **signing: Any) -> Outcome:
        """Hand ``result`` to ``processor`` as the worker loop would."""
        record = self.record(RESULTS, self.codec.encode_engine_result(result), key=result.run_id.encode(), **signing)
        return processor.handle_engine_result(result, record)
