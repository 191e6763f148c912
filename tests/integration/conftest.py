"""Fixtures for whole-flow integration tests on the real servers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.evidence_fixtures import upload_bundle_gate, upload_member_concat_gate
from tests.sr_harness import SREnv

GATE_3A_MEMBERS = {
    "accounts/part-0000.csv": b"account_id,balance\n1,100\n2,250\n",
    "accounts/part-0001.csv": b"account_id,balance\n3,75\n",
    "accounts/part-0002.csv": b"account_id,balance\n4,0\n",
    "accounts/part-0003.csv": b"account_id,balance\n5,12\n",
}
GATE_6B_MEMBERS = {
    "transactions/part-0000.csv": b"tx_id,account_id,amount\n1,1,10\n",
    "transactions/part-0001.csv": b"tx_id,account_id,amount\n2,2,-5\n",
    "transactions/part-0002.csv": b"tx_id,account_id,amount\n3,3,42\n",
    "transactions/part-0003.csv": b"tx_id,account_id,amount\n4,4,7\n",
}


EvidenceWriter = Callable[..., None]


@pytest.fixture
def write_evidence(sr_env: SREnv, s3_client: Any) -> EvidenceWriter:
    """``write_evidence(name, gates=("3A", "6B"), tamper=None, flag_6b="auto")`` seeds gate bundles.

    ``tamper`` names a gate ("3A" or "6B") whose first member is changed after its flag/index
    were computed; ``flag_6b`` can be raw bytes for a malformed flag.
    """

    def _write(name: str, *, gates: tuple[str, ...] = ("3A", "6B"), tamper: str | None = None,
               flag_6b: Any = "auto") -> None:
        root = sr_env.evidence_prefix(name)
        if "3A" in gates:
            upload_member_concat_gate(
                s3_client, sr_env.bucket, root, "gates/3A", GATE_3A_MEMBERS,
                tamper_after_flag={"accounts/part-0000.csv": b"account_id,balance\n1,999\n"}
                if tamper == "3A" else None,
            )
        if "6B" in gates:
            upload_bundle_gate(
                s3_client, sr_env.bucket, root, "gates/6B", GATE_6B_MEMBERS, flag=flag_6b,
                tamper_after_flag={"transactions/part-0000.csv": b"tx_id,account_id,amount\n1,1,1000\n"}
                if tamper == "6B" else None,
            )

    return _write
