"""Sample evidence and the guided demo behind ``sr dev --demo``.

Evidence bundles are built exactly as contract §4 describes (``_passed.flag`` with the
sha256, members, ``index.json`` for member-digest gates), so the demo exercises the real
verification path: nothing is special-cased for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from worker.adapters.s3 import ObjectStore
from worker.core.evidence import FLAG_NAME, INDEX_NAME
from worker.core.keys import parse_s3_uri

SAMPLES = ("complete", "waiting", "tampered", "duplicate", "collision")


def samples_dir() -> Path:
    """Directory of the bundled sample intents."""
    return Path(str(resources.files("worker") / "schemas" / "samples"))


def example_policy_path() -> Path:
    """Path of the bundled example policy."""
    return Path(str(resources.files("worker") / "schemas" / "policy.example.toml"))


def load_sample(name: str) -> dict[str, Any]:
    """A sample intent (Avro dict shape) by name; ``duplicate`` is ``complete`` re-submitted."""
    base = "complete" if name == "duplicate" else name
    data: dict[str, Any] = json.loads((samples_dir() / f"{base}.json").read_text())
    if name == "duplicate":
        # Only fields outside the fingerprint differ: a duplicate, not a collision.
        data["request_id"] = "sample-duplicate-1"
        data["submitted_by"] = "another-producer"
    return data


def _flag(digest: str) -> bytes:
    return f"sha256_hex={digest}\n".encode()


def put_bundle_digest_gate(store: ObjectStore, bucket: str, prefix: str, members: Mapping[str, bytes]) -> str:
    """Write a ``sha256_bundle_digest`` gate under ``prefix``; returns its digest."""
    digest = hashlib.sha256()
    for rel in sorted(members, key=lambda k: k.encode()):
        digest.update(members[rel])
        store.put(bucket, f"{prefix}/{rel}", members[rel])
    store.put(bucket, f"{prefix}/{FLAG_NAME}", _flag(digest.hexdigest()))
    return digest.hexdigest()


def put_member_concat_gate(store: ObjectStore, bucket: str, prefix: str, members: Mapping[str, bytes]) -> str:
    """Write a ``sha256_member_digest_concat`` gate (members + index.json + flag); returns its digest."""
    index = [{"path": rel, "sha256_hex": hashlib.sha256(data).hexdigest()} for rel, data in sorted(members.items())]
    for rel, data in members.items():
        store.put(bucket, f"{prefix}/{rel}", data)
    store.put(bucket, f"{prefix}/{INDEX_NAME}", json.dumps(index).encode())
    digest = hashlib.sha256("".join(e["sha256_hex"] for e in index).encode()).hexdigest()
    store.put(bucket, f"{prefix}/{FLAG_NAME}", _flag(digest))
    return digest


def seed_example_evidence(store: ObjectStore, evidence_root: str, *, tamper: bool = False) -> None:
    """Write evidence for the example policy's gates (gate_3A, gate_6B) under ``evidence_root``.

    With ``tamper`` a member of gate_6B is overwritten after its flag was computed.
    """
    root = parse_s3_uri(evidence_root)
    prefix = "/".join(root.segments)
    put_member_concat_gate(store, root.bucket, f"{prefix}/gates/3A", {
        "accounts/part-0000.csv": b"account_id,balance\n1,100\n2,250\n",
        "accounts/part-0001.csv": b"account_id,balance\n3,75\n",
    })
    members = {
        "transactions/part-0000.csv": b"tx_id,account_id,amount\n1,1,10\n2,2,-5\n",
        "transactions/part-0001.csv": b"tx_id,account_id,amount\n3,3,42\n",
    }
    put_bundle_digest_gate(store, root.bucket, f"{prefix}/gates/6B", members)
    for output in ("transactions", "accounts"):
        store.put(root.bucket, f"{prefix}/outputs/{output}/part-0000.parquet", f"{output} data".encode())
    if tamper:
        store.put(root.bucket, f"{prefix}/gates/6B/transactions/part-0001.csv", b"tx_id,account_id,amount\n3,3,4200\n")
