"""The one way tests and benchmarks write gate evidence: bundles as a producer would write them.

Every writer here goes through an :class:`ObjectSink`, anything with
``put(bucket, key, body)``: SR's own :class:`~worker.adapters.s3.ObjectStore`, the in-memory
:class:`~worker.app.testing.InMemoryObjectStore`, or a boto3 S3 client (wrapped by
:func:`as_sink`; every writer accepts one directly). Members are written first and
``_passed.flag`` last, as a real producer would; each writer returns the *correct* digest of the
intended members and offers the faults the verifier must catch::

    digest = upload_bundle_gate(s3_client, bucket, "evidence/t1/abc", "gates/6B",
                                {"part-0": b"...", "part-1": b"..."})
    upload_member_concat_gate(store, bucket, root, "gates/3A", members,
                              omit_members=["b.bin"])              # member missing
    upload_bundle_gate(..., tamper_after_flag={"part-0": b"evil"})   # MISMATCH
    upload_bundle_gate(..., flag=b"sha256_hex=XYZ\\n")               # BAD_FLAG
    upload_bundle_gate(..., flag=None)                               # MISSING

:func:`bundle_gate` / :func:`member_concat_gate` only compute a bundle's objects (for a
concurrent upload with :func:`write_objects`, as the benchmarks do). ``root_prefix`` is the key
prefix of the evidence root inside ``bucket`` (no ``s3://``, no leading/trailing ``/``);
:func:`evidence_root_uri` turns it into the intent's URI and :func:`bundle_uri` into a plan
gate's ``bundle_uri``.

:class:`ExampleEvidence` seeds the example policy's two gates by run name; it is what the
``write_evidence`` fixture (``tests/conftest.py``) hands to tests, typed :class:`EvidenceWriter`.

Instance binding (contract §4): a scoped gate's bundle holds ``_receipt.json`` naming the run's
values. Pass ``receipt=receipt_bytes(gate_id, instance_of(intent))`` to a bundle writer; it
becomes a member like any other (covered by the flag). The example policy's gate_6B is scoped
to the run's pins and scenario; gate_3A is global (reference data every run may share).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol, runtime_checkable

from worker.core.evidence import receipt_document
from worker.core.identity import run_id_of
from worker.core.models import RunIntent
from worker.core.plan import scope_values

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "FLAG_NAME",
    "GATE_3A_MEMBERS",
    "GATE_6B_MEMBERS",
    "INDEX_NAME",
    "RECEIPT_NAME",
    "SCOPE_6B",
    "TAMPERED_3A",
    "TAMPERED_6B",
    "Boto3Sink",
    "EvidenceWriter",
    "ExampleEvidence",
    "FlagSpec",
    "GateBundle",
    "ObjectSink",
    "as_sink",
    "bundle_digest",
    "bundle_gate",
    "bundle_uri",
    "default_instance",
    "evidence_root_uri",
    "flag_bytes",
    "index_bytes",
    "instance_of",
    "member_concat_digest_of",
    "member_concat_gate",
    "receipt_bytes",
    "synthetic_example_evidence",
    "upload_bundle_gate",
    "upload_member_concat_gate",
    "write_objects",
]

FLAG_NAME: Final = "_passed.flag"
INDEX_NAME: Final = "index.json"
RECEIPT_NAME: Final = "_receipt.json"
#: The scope of the example policy's gate_6B (``schemas/policy.example.toml``).
SCOPE_6B: Final = ("manifest_fingerprint", "parameter_hash", "scenario_id", "seed")

#: A run's values of the scope fields (what a receipt names).
Instance = Mapping[str, str | int]

#: ``flag`` argument: ``"auto"`` writes the correct flag, ``None`` omits it, bytes are
#: written verbatim (e.g. a malformed or wrong flag).
FlagSpec = Literal["auto"] | bytes | None

#: One object: (key, body).
Obj = tuple[str, bytes]

#: Members of the example policy's gate_3A (``sha256_member_digest_concat``) in the SR-world tests.
GATE_3A_MEMBERS: Final[Mapping[str, bytes]] = {
    "accounts/part-0000.csv": b"account_id,balance\n1,100\n2,250\n",
    "accounts/part-0001.csv": b"account_id,balance\n3,75\n",
    "accounts/part-0002.csv": b"account_id,balance\n4,0\n",
    "accounts/part-0003.csv": b"account_id,balance\n5,12\n",
}
#: Members of the example policy's gate_6B (``sha256_bundle_digest``) in the SR-world tests.
GATE_6B_MEMBERS: Final[Mapping[str, bytes]] = {
    "transactions/part-0000.csv": b"tx_id,account_id,amount\n1,1,10\n",
    "transactions/part-0001.csv": b"tx_id,account_id,amount\n2,2,-5\n",
    "transactions/part-0002.csv": b"tx_id,account_id,amount\n3,3,42\n",
    "transactions/part-0003.csv": b"tx_id,account_id,amount\n4,4,7\n",
}
#: What ``ExampleEvidence(..., tamper="3A"/"6B")`` writes over a member after the flag.
TAMPERED_3A: Final[Mapping[str, bytes]] = {"accounts/part-0000.csv": b"account_id,balance\n1,999\n"}
TAMPERED_6B: Final[Mapping[str, bytes]] = {"transactions/part-0000.csv": b"tx_id,account_id,amount\n1,1,1000\n"}


# ----------------------------------------------------------------------------- sinks
@runtime_checkable
class ObjectSink(Protocol):
    """Where evidence is written: an unconditional PUT."""

    def put(self, bucket: str, key: str, body: bytes) -> None:
        """Write ``body`` at ``bucket``/``key``, overwriting."""
        ...


class Boto3Sink:
    """An :class:`ObjectSink` over a boto3 S3 client (``put_object``)."""

    def __init__(self, client: S3Client) -> None:
        self.client = client

    def put(self, bucket: str, key: str, body: bytes) -> None:
        """``PutObject`` (overwrites)."""
        self.client.put_object(Bucket=bucket, Key=key, Body=body)


def as_sink(target: ObjectSink | S3Client) -> ObjectSink:
    """``target`` itself when it has ``put(bucket, key, body)``, else a :class:`Boto3Sink` over it."""
    if isinstance(target, ObjectSink):
        return target
    return Boto3Sink(target)


def write_objects(target: ObjectSink | S3Client, bucket: str, objects: Iterable[Obj], *,
                  concurrency: int = 1) -> int:
    """PUT every (key, body), in order when ``concurrency`` is 1, else from that many threads.

    Returns:
        The number of objects written.
    """
    sink = as_sink(target)
    items = list(objects)
    if concurrency <= 1:
        for key, body in items:
            sink.put(bucket, key, body)
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(lambda kv: sink.put(bucket, kv[0], kv[1]), items))
    return len(items)


# ----------------------------------------------------------------------------- digests
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def evidence_root_uri(bucket: str, root_prefix: str) -> str:
    """``s3://<bucket>/<root_prefix>`` — an intent's ``evidence_root``."""
    return f"s3://{bucket}/{root_prefix.strip('/')}"


def bundle_uri(bucket: str, root_prefix: str, bundle_rel: str) -> str:
    """The ``bundle_uri`` a plan gate gets for ``bundle_rel`` under the root."""
    return f"{evidence_root_uri(bucket, root_prefix)}/{bundle_rel.strip('/')}"


def flag_bytes(digest: str) -> bytes:
    """The exact content of a valid ``_passed.flag`` for ``digest``."""
    return f"sha256_hex={digest}\n".encode("ascii")


def bundle_digest(members: Mapping[str, bytes]) -> str:
    """``sha256_bundle_digest`` of ``members`` (relative key → bytes): ASCII key order."""
    digest = hashlib.sha256()
    for rel in sorted(members, key=lambda k: k.encode("utf-8")):
        digest.update(members[rel])
    return digest.hexdigest()


def member_concat_digest_of(members: Mapping[str, bytes], order: Sequence[str] | None = None) -> str:
    """``sha256_member_digest_concat`` digest of ``members`` in ``order`` (default: insertion)."""
    paths = list(order) if order is not None else list(members)
    return hashlib.sha256("".join(_sha(members[p]) for p in paths).encode("ascii")).hexdigest()


def index_bytes(members: Mapping[str, bytes], order: Sequence[str] | None = None) -> bytes:
    """A valid ``index.json`` for ``members`` in ``order`` (default: insertion order)."""
    paths = list(order) if order is not None else list(members)
    return json.dumps([{"path": p, "sha256_hex": _sha(members[p])} for p in paths]).encode("utf-8")


def instance_of(intent: RunIntent, scope: Collection[str] = SCOPE_6B) -> dict[str, str | int]:
    """The values a receipt of a gate scoped to ``scope`` must name for ``intent``'s run."""
    values = scope_values(pins=intent.pins, scenario_id=intent.scenario_id, run_id=run_id_of(intent))
    return {k: values[k] for k in sorted(scope)}


def receipt_bytes(gate_id: str, instance: Instance) -> bytes:
    """A valid ``_receipt.json`` naming exactly ``instance`` (SR's own receipt writer)."""
    return receipt_document(gate_id, instance, instance)


# ----------------------------------------------------------------------------- bundles
@dataclass(frozen=True)
class GateBundle:
    """One gate bundle's objects in the order a producer writes them, and its members' digest."""

    digest: str
    #: Members (and ``index.json``): written first.
    content: tuple[Obj, ...]
    #: The ``_passed.flag`` object, or nothing.
    flag: tuple[Obj, ...]
    #: Objects overwritten or added after the flag (tampering).
    late: tuple[Obj, ...]

    def objects(self) -> list[Obj]:
        """Every object, in write order."""
        return [*self.content, *self.flag, *self.late]


def _prefix(root_prefix: str, bundle_rel: str) -> str:
    return f"{root_prefix.strip('/')}/{bundle_rel.strip('/')}"


def _bundle(prefix: str, content: list[Obj], digest: str, flag: FlagSpec,
            tamper_after_flag: Mapping[str, bytes] | None) -> GateBundle:
    flag_objects: tuple[Obj, ...] = ()
    if flag == "auto":
        flag_objects = ((f"{prefix}/{FLAG_NAME}", flag_bytes(digest)),)
    elif isinstance(flag, bytes):
        flag_objects = ((f"{prefix}/{FLAG_NAME}", flag),)
    late = tuple((f"{prefix}/{rel}", body) for rel, body in (tamper_after_flag or {}).items())
    return GateBundle(digest=digest, content=tuple(content), flag=flag_objects, late=late)


def _with_receipt(members: Mapping[str, bytes], receipt: bytes | None) -> Mapping[str, bytes]:
    return members if receipt is None else {**members, RECEIPT_NAME: receipt}


def bundle_gate(root_prefix: str, bundle_rel: str, members: Mapping[str, bytes], *, flag: FlagSpec = "auto",
                tamper_after_flag: Mapping[str, bytes] | None = None, receipt: bytes | None = None) -> GateBundle:
    """The objects of a ``sha256_bundle_digest`` bundle (see :func:`upload_bundle_gate`)."""
    members = _with_receipt(members, receipt)
    prefix = _prefix(root_prefix, bundle_rel)
    content = [(f"{prefix}/{rel}", body) for rel, body in members.items()]
    return _bundle(prefix, content, bundle_digest(members), flag, tamper_after_flag)


def member_concat_gate(
    root_prefix: str,
    bundle_rel: str,
    members: Mapping[str, bytes],
    *,
    order: Sequence[str] | None = None,
    flag: FlagSpec = "auto",
    index: bytes | None = None,
    omit_index: bool = False,
    omit_members: Iterable[str] = (),
    tamper_after_flag: Mapping[str, bytes] | None = None,
    receipt: bytes | None = None,
) -> GateBundle:
    """The objects of a ``sha256_member_digest_concat`` bundle (see :func:`upload_member_concat_gate`)."""
    members = _with_receipt(members, receipt)
    if order is not None and receipt is not None:
        order = [*order, RECEIPT_NAME]
    prefix = _prefix(root_prefix, bundle_rel)
    skipped = set(omit_members)
    content = [(f"{prefix}/{rel}", body) for rel, body in members.items() if rel not in skipped]
    if not omit_index:
        content.append((f"{prefix}/{INDEX_NAME}", index if index is not None else index_bytes(members, order)))
    return _bundle(prefix, content, member_concat_digest_of(members, order), flag, tamper_after_flag)


def upload_bundle_gate(
    target: ObjectSink | S3Client,
    bucket: str,
    root_prefix: str,
    bundle_rel: str,
    members: Mapping[str, bytes],
    *,
    flag: FlagSpec = "auto",
    tamper_after_flag: Mapping[str, bytes] | None = None,
    receipt: bytes | None = None,
) -> str:
    """Write a ``sha256_bundle_digest`` bundle; return the digest of ``members`` (and ``receipt``).

    Args:
        target: an :class:`ObjectSink` or a boto3 S3 client.
        root_prefix: key prefix of the evidence root.
        bundle_rel: the gate's ``bundle`` path relative to the root (e.g. ``gates/6B``).
        members: relative key → bytes (keys may contain ``/``).
        flag: ``"auto"`` (correct flag), ``None`` (no flag) or raw bytes to write.
        tamper_after_flag: members (relative key → bytes) overwritten or added after the
            flag was written.
        receipt: ``_receipt.json`` bytes, written as a member (a scoped gate's instance proof).
    """
    bundle = bundle_gate(root_prefix, bundle_rel, members, flag=flag, tamper_after_flag=tamper_after_flag,
                         receipt=receipt)
    write_objects(target, bucket, bundle.objects())
    return bundle.digest


def upload_member_concat_gate(
    target: ObjectSink | S3Client,
    bucket: str,
    root_prefix: str,
    bundle_rel: str,
    members: Mapping[str, bytes],
    *,
    order: Sequence[str] | None = None,
    flag: FlagSpec = "auto",
    index: bytes | None = None,
    omit_index: bool = False,
    omit_members: Iterable[str] = (),
    tamper_after_flag: Mapping[str, bytes] | None = None,
    receipt: bytes | None = None,
) -> str:
    """Write a ``sha256_member_digest_concat`` bundle; return the digest of ``members``.

    Args:
        target: an :class:`ObjectSink` or a boto3 S3 client.
        order: index order of the members (default: insertion order of ``members``).
        flag: as in :func:`upload_bundle_gate`.
        index: raw ``index.json`` bytes to write instead of the correct one (malformed index).
        omit_index: write no ``index.json`` at all.
        omit_members: members listed in the index (and in the digest) but not uploaded.
        tamper_after_flag: as in :func:`upload_bundle_gate`.
        receipt: ``_receipt.json`` bytes, a member listed last in the index.
    """
    bundle = member_concat_gate(root_prefix, bundle_rel, members, order=order, flag=flag, index=index,
                                omit_index=omit_index, omit_members=omit_members,
                                tamper_after_flag=tamper_after_flag, receipt=receipt)
    write_objects(target, bucket, bundle.objects())
    return bundle.digest


# ----------------------------------------------------------------------------- the example policy
class EvidenceWriter(Protocol):
    """``write_evidence(name, ...)``: seed the example policy's gates for the run called ``name``.

    Args:
        name: the run's name; the evidence root is the environment's ``evidence_prefix(name)``.
        gates: which gates to write (``"3A"``, ``"6B"``).
        tamper: a gate (``"3A"`` or ``"6B"``) whose first member is changed after its flag was
            written (→ QUARANTINED).
        flag_6b: the 6B flag as in :data:`FlagSpec` (raw bytes: a malformed flag).
        extra_6b: members added to the 6B bundle (a slow-to-verify run).
        instance: the run the 6B receipt names — an intent, or its scope values; default the
            run ``make_intent(env, name)`` makes (scenario ``scn-<name>``, default pins).
        receipt_6b: ``"auto"`` (the receipt of ``instance``), ``None`` (no receipt) or raw bytes.
    """

    def __call__(self, name: str, *, gates: Collection[str] = ..., tamper: str | None = ...,
                 flag_6b: FlagSpec = ..., extra_6b: Mapping[str, bytes] | None = ...,
                 instance: RunIntent | Instance | None = ..., receipt_6b: FlagSpec = ...) -> None:
        """Write the evidence of ``name``."""
        ...


def default_instance(name: str) -> dict[str, str | int]:
    """The 6B scope values of the run ``tests.harness.sr_env.make_intent(env, name)`` makes by default."""
    return {"manifest_fingerprint": "a" * 64, "parameter_hash": "b" * 64, "scenario_id": f"scn-{name}", "seed": 1}


@dataclass(frozen=True)
class ExampleEvidence:
    """An :class:`EvidenceWriter` over ``target``: gate_3A and gate_6B under ``root_of(name)``."""

    target: ObjectSink
    bucket: str
    root_of: Callable[[str], str]
    instance_of: Callable[[str], Instance] = default_instance

    def __call__(self, name: str, *, gates: Collection[str] = ("3A", "6B"), tamper: str | None = None,
                 flag_6b: FlagSpec = "auto", extra_6b: Mapping[str, bytes] | None = None,
                 instance: RunIntent | Instance | None = None, receipt_6b: FlagSpec = "auto") -> None:
        """Write gate_3A (member-concat, global) then gate_6B (bundle digest, scoped) of the run ``name``."""
        root = self.root_of(name)
        if "3A" in gates:
            upload_member_concat_gate(self.target, self.bucket, root, "gates/3A", GATE_3A_MEMBERS,
                                      tamper_after_flag=TAMPERED_3A if tamper == "3A" else None)
        if "6B" in gates:
            values = (instance_of(instance) if isinstance(instance, RunIntent)
                      else instance if instance is not None else self.instance_of(name))
            receipt = receipt_bytes("gate_6B", values) if receipt_6b == "auto" else receipt_6b
            upload_bundle_gate(self.target, self.bucket, root, "gates/6B", {**GATE_6B_MEMBERS, **(extra_6b or {})},
                               flag=flag_6b, tamper_after_flag=TAMPERED_6B if tamper == "6B" else None,
                               receipt=receipt)


def _synthetic_member(seed: str, size: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest() * 2  # 64 bytes, distinct per member
    return (block * (size // len(block) + 1))[:size]


def synthetic_example_evidence(root_prefix: str, *, members: int = 4, member_size: int = 4 * 1024,
                               salt: str = "", instance: Instance | None = None) -> list[Obj]:
    """The example policy's two gates with ``members`` synthetic members of ``member_size`` bytes each.

    gate_3A (``sha256_member_digest_concat``): ``gates/3A/part-NNNN.csv`` + ``index.json``;
    gate_6B (``sha256_bundle_digest``): ``gates/6B/part-NNNN.csv``, plus the receipt of
    ``instance`` when given (per-run evidence; without one only a policy whose gate_6B is
    unscoped passes it). Both flags come last in the list; ``salt`` makes the members (and so
    the digests) of one root differ from another's.
    """
    def body(gate: str) -> dict[str, bytes]:
        return {f"part-{i:04d}.csv": _synthetic_member(f"{salt}{gate}{i}", member_size) for i in range(members)}

    receipt = receipt_bytes("gate_6B", instance) if instance is not None else None
    bundles = (member_concat_gate(root_prefix, "gates/3A", body("3A")),
               bundle_gate(root_prefix, "gates/6B", body("6B"), receipt=receipt))
    return [obj for b in bundles for obj in b.content] + [obj for b in bundles for obj in b.flag]
