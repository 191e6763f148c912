"""Encryption at rest against real S3 servers: what SR's writes do with ``SR_S3_SSE``.

Observed with SeaweedFS 4.48 (the embedded S3 server):

* as started by the embedded stack (no SSE-S3 KEK, no KMS) it answers every PUT that asks
  for server-side encryption — ``AES256`` or ``aws:kms``, with or without a key id — with
  ``500 InternalError`` ("We encountered an internal error") and stores nothing. SR retries
  it like any 500 (bounded) and then raises one :class:`~worker.errors.S3UnavailableError`
  whose message says the endpoint refused server-side encryption;
* with an SSE-S3 KEK (``WEED_S3_SSE_KEK``: 64 hex digits) it accepts ``AES256``, reports it
  on HEAD and GET, and still refuses ``aws:kms`` the same way (no KMS configured).

Against another server (``SR_TEST_S3_ENDPOINT``, Docker MinIO) the first test accepts either
outcome: the write succeeds and reads back, or it fails with that one typed error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.harness.servers import Servers, s3_config_for, unavailable, unique
from worker.adapters.s3 import ObjectStore, S3Config
from worker.app.ports import WriteOutcome
from worker.errors import S3Error, S3UnavailableError, SRError

pytestmark = pytest.mark.integration

LIBRARIES = ("obstore", "boto3")
SSE_VARIANTS = {
    "AES256": {"sse": "AES256"},
    "aws:kms": {"sse": "aws:kms"},
    "aws:kms+key": {"sse": "aws:kms", "sse_kms_key_id": "arn:aws:kms:us-east-1:111122223333:key/sr-test"},
}
REFUSED = "the endpoint refused a PUT with server-side encryption"


def _fast(config: S3Config) -> S3Config:
    """Two attempts, millisecond backoff: a refusal is not worth five."""
    return config.model_copy(update={"max_attempts": 2, "backoff_initial": 0.001, "backoff_max": 0.01})


def _session_s3_refuses_sse(servers: Servers) -> bool:
    """The session's S3 is the embedded SeaweedFS, started without an SSE-S3 KEK."""
    return "seaweedfs" in servers.server_pids() and not os.environ.get("WEED_S3_SSE_KEK")


def _assert_refused(error: SRError, sse: str, attempts: int, store: ObjectStore) -> None:
    message = str(error)
    assert isinstance(error, S3Error) and f"{REFUSED} {sse} (SR_S3_SSE)" in message, message
    assert "\n" not in message and "111122223333" not in message  # one line; the key id is not repeated
    assert store.counter.snapshot()["PUT"] == attempts


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("variant", list(SSE_VARIANTS))
def test_sse_writes_succeed_or_fail_with_one_typed_error(servers: Servers, s3_client: Any, s3_prefix: str,
                                                         library: str, variant: str) -> None:
    sse = SSE_VARIANTS[variant]
    config = _fast(s3_config_for(servers, client_library=library, **sse))
    key = f"{s3_prefix}/sse/{variant}.json"
    with ObjectStore(config) as store:
        try:
            outcome = store.put_write_once(servers.s3_bucket, key, b'{"encrypted":true}')
        except S3Error as exc:
            _assert_refused(exc, sse["sse"], 2, store)
            # Nothing was stored: the refusal is not a half-written object.
            assert store.head(servers.s3_bucket, key) is None
            if _session_s3_refuses_sse(servers):
                assert type(exc) is S3UnavailableError and "InternalError 500" in str(exc), str(exc)
            return
        assert not _session_s3_refuses_sse(servers), "SeaweedFS without a KEK accepted an encrypted PUT"
        assert outcome is WriteOutcome.CREATED
        assert store.get(servers.s3_bucket, key, max_bytes=100) == b'{"encrypted":true}'
    head = s3_client.head_object(Bucket=servers.s3_bucket, Key=key)
    assert head.get("ServerSideEncryption") == sse["sse"], head


# --------------------------------------------------------------------------- SeaweedFS with an SSE-S3 KEK
@pytest.fixture(scope="module")
def kek_seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Config]:
    """A SeaweedFS of this module's own, started with an SSE-S3 KEK; stopped (by PID) afterwards."""
    from worker.embedded.stack import EmbeddedStack, StackConfig
    from worker.errors import StackError

    bucket = "sr-sse-kek"
    stack = EmbeddedStack(StackConfig(state_dir=Path(tmp_path_factory.mktemp("kek-seaweedfs")), kafka=False,
                                      postgres=False, s3=True, bucket=bucket))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WEED_S3_SSE_KEK", os.urandom(32).hex())  # read by weed at start only
        try:
            endpoints = stack.start()
        except StackError as exc:
            unavailable(f"SeaweedFS with an SSE-S3 KEK: {exc}")
    try:
        yield S3Config(endpoint_url=endpoints.s3_endpoint, access_key_id=SecretStr("sr"),
                       secret_access_key=SecretStr("sr-secret"))
    finally:
        stack.stop()


@pytest.mark.parametrize("library", LIBRARIES)
def test_aes256_is_accepted_by_a_seaweedfs_with_a_kek(kek_seaweedfs: S3Config, library: str) -> None:
    import boto3

    bucket, prefix = "sr-sse-kek", unique("t-")
    config = _fast(kek_seaweedfs.model_copy(update={"client_library": library, "sse": "AES256"}))
    body = b'{"plan":"deterministic bytes"}'
    with ObjectStore(config) as store:
        assert store.put_write_once(bucket, f"{prefix}/plan.json", body) is WriteOutcome.CREATED
        assert store.put_write_once(bucket, f"{prefix}/plan.json", body) is WriteOutcome.EXISTING_IDENTICAL
        store.put(bucket, f"{prefix}/evidence.bin", b"x" * 70_000)
        assert store.get(bucket, f"{prefix}/plan.json", max_bytes=100) == body
        assert store.sha256(bucket, f"{prefix}/evidence.bin", max_bytes=70_000)[1] == 70_000
    client = boto3.client("s3", endpoint_url=kek_seaweedfs.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="sr", aws_secret_access_key="sr-secret")
    try:
        for name in ("plan.json", "evidence.bin"):
            assert client.head_object(Bucket=bucket, Key=f"{prefix}/{name}").get("ServerSideEncryption") == "AES256"
    finally:
        client.close()


@pytest.mark.parametrize("library", LIBRARIES)
def test_aws_kms_is_refused_by_a_seaweedfs_without_kms(kek_seaweedfs: S3Config, library: str) -> None:
    config = _fast(kek_seaweedfs.model_copy(update={"client_library": library, **SSE_VARIANTS["aws:kms+key"]}))
    key = f"{unique('t-')}/plan.json"
    with ObjectStore(config) as store:
        with pytest.raises(S3UnavailableError, match="InternalError 500") as info:
            store.create("sr-sse-kek", key, b"{}")
        _assert_refused(info.value, "aws:kms", 2, store)
        assert store.head("sr-sse-kek", key) is None
