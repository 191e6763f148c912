"""Encryption at rest (contract §10): ``SR_S3_SSE`` / ``SR_S3_SSE_KMS_KEY_ID`` on every PUT.

The headers are checked on the wire, not on a mock: each request goes to a one-shot HTTP
server standing in for S3 (:class:`~tests.harness.http_capture.OneRequestCapture`), so what
is asserted is exactly what boto3 and obstore send. The real-server behaviour (SeaweedFS
accepting or refusing the headers) is in ``tests/integration/test_s3_sse.py``.
"""

from __future__ import annotations

import contextlib
import os

import pytest
from pydantic import SecretStr, ValidationError

from tests.harness.http_capture import OneRequestCapture
from worker.adapters.s3 import ObjectStore, S3Config
from worker.adapters.s3.errors import with_sse_hint
from worker.errors import ConfigError, PreconditionFailedError, S3AccessError, S3UnavailableError, SRError
from worker.runtime.compose import s3_config
from worker.settings import load_settings

LIBRARIES = ("obstore", "boto3")
KEY_ID = "arn:aws:kms:us-east-1:111122223333:key/sr-test-key"
SSE = "x-amz-server-side-encryption"
SSE_KEY = "x-amz-server-side-encryption-aws-kms-key-id"


@pytest.fixture(autouse=True)
def _no_sse_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # obstore also reads AWS_SERVER_SIDE_ENCRYPTION / AWS_SSE_KMS_KEY_ID; only SR's settings count here.
    for name in ("AWS_SERVER_SIDE_ENCRYPTION", "AWS_SSE_KMS_KEY_ID", "SR_S3_SSE", "SR_S3_SSE_KMS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)


def _config(library: str, **sse: str) -> S3Config:
    return S3Config(client_library=library, access_key_id=SecretStr("k"), secret_access_key=SecretStr("s"),
                    max_attempts=1, **sse)


def _captured(config: S3Config, send: str) -> OneRequestCapture:
    """The one request ``send`` (``create``, ``put``, ``get`` or ``head``) makes, as it arrived."""
    with OneRequestCapture() as capture, ObjectStore(config.model_copy(update={"endpoint_url": capture.endpoint})) \
            as store:
        if send == "create":
            assert store.create("sse-bucket", "sr/k.json", b"body")
        elif send == "put":
            store.put("sse-bucket", "sr/k.json", b"body")
        else:
            # The stand-in answers an empty 200 that a client may reject as a GET/HEAD answer;
            # only the request it sent matters here.
            with contextlib.suppress(SRError):
                if send == "get":
                    store.get("sse-bucket", "sr/k.json", max_bytes=10)
                else:
                    store.head("sse-bucket", "sr/k.json")
    return capture


def _signed_headers(capture: OneRequestCapture) -> set[str]:
    authorization = capture.header("Authorization") or ""
    signed = authorization.partition("SignedHeaders=")[2].partition(",")[0]
    return set(signed.split(";"))


# ----------------------------------------------------------------------------- on the wire
@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("send", ["create", "put"])
@pytest.mark.parametrize("sse", [{"sse": "AES256"}, {"sse": "aws:kms"}, {"sse": "aws:kms", "sse_kms_key_id": KEY_ID}],
                         ids=["AES256", "aws:kms", "aws:kms+key"])
def test_every_put_carries_the_configured_encryption(library: str, send: str, sse: dict[str, str]) -> None:
    capture = _captured(_config(library, **sse), send)
    assert capture.header(SSE) == sse["sse"], capture.headers
    assert capture.header(SSE_KEY) == sse.get("sse_kms_key_id"), capture.headers
    # Signed like every x-amz-* header (AWS refuses an unsigned one), and the PUT is otherwise unchanged.
    assert SSE in _signed_headers(capture)
    assert capture.body == b"body" and capture.request_target.startswith("/sse-bucket/sr/k.json")
    if send == "create":
        assert capture.header("If-None-Match") == "*"


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("send", ["create", "put"])
def test_without_sse_no_put_asks_for_encryption(library: str, send: str) -> None:
    capture = _captured(_config(library), send)
    assert capture.header(SSE) is None and capture.header(SSE_KEY) is None, capture.headers
    assert capture.body == b"body"


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("send", ["get", "head"])
def test_reads_never_carry_encryption_headers(library: str, send: str) -> None:
    """SSE-S3 / SSE-KMS objects are read without headers; AWS refuses a GET or HEAD with one."""
    capture = _captured(_config(library, sse="aws:kms", sse_kms_key_id=KEY_ID), send)
    assert capture.request_target.startswith("/sse-bucket/sr/k.json"), capture.request_target
    assert capture.header(SSE) is None and capture.header(SSE_KEY) is None, capture.headers


# ----------------------------------------------------------------------------- configuration
def test_settings_carry_sse_into_the_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    unset = s3_config(load_settings(None, os.environ))
    assert (unset.sse, unset.sse_kms_key_id) == (None, None)
    monkeypatch.setenv("SR_S3_SSE", "AES256")
    assert s3_config(load_settings(None, os.environ)).sse == "AES256"
    monkeypatch.setenv("SR_S3_SSE", "aws:kms")
    monkeypatch.setenv("SR_S3_SSE_KMS_KEY_ID", KEY_ID)
    config = s3_config(load_settings(None, os.environ))
    assert (config.sse, config.sse_kms_key_id) == ("aws:kms", KEY_ID)


@pytest.mark.parametrize("sse", [None, "AES256"])
def test_a_kms_key_without_aws_kms_is_a_config_error_that_does_not_echo_it(
        monkeypatch: pytest.MonkeyPatch, sse: str | None) -> None:
    if sse is not None:
        monkeypatch.setenv("SR_S3_SSE", sse)
    monkeypatch.setenv("SR_S3_SSE_KMS_KEY_ID", KEY_ID)
    with pytest.raises(ConfigError, match="SR_S3_SSE_KMS_KEY_ID") as info:
        load_settings(None, os.environ)
    assert KEY_ID not in str(info.value) and "111122223333" not in str(info.value)


@pytest.mark.parametrize("value", ["aes256", "aws:kms:dsse", "sse-c", "none"])
def test_an_unknown_sse_is_a_config_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SR_S3_SSE", value)
    with pytest.raises(ConfigError, match="s3_sse") as info:
        load_settings(None, os.environ)
    assert value not in str(info.value)


def test_s3_config_refuses_a_kms_key_without_aws_kms() -> None:
    with pytest.raises(ValidationError, match="sse_kms_key_id is set but sse is not 'aws:kms'"):
        S3Config(sse_kms_key_id=KEY_ID)
    with pytest.raises(ValidationError, match="sse_kms_key_id is set but sse is not 'aws:kms'"):
        S3Config(sse="AES256", sse_kms_key_id=KEY_ID)
    with pytest.raises(ValidationError):
        S3Config(sse="aws:kms", sse_kms_key_id="")
    assert S3Config(sse="aws:kms", sse_kms_key_id=KEY_ID).sse_kms_key_id == KEY_ID


# ----------------------------------------------------------------------------- refusals
def test_a_refused_encrypted_put_says_so_and_keeps_its_class() -> None:
    refused = with_sse_hint(S3UnavailableError("PUT s3://b/k: InternalError 500"), status=500, sse="AES256")
    assert type(refused) is S3UnavailableError  # still transient: a 500 from AWS is retried
    assert "refused a PUT with server-side encryption AES256 (SR_S3_SSE)" in str(refused)
    denied = with_sse_hint(S3AccessError("PUT s3://b/k: KMS.NotFoundException 400"), status=400, sse="aws:kms")
    assert type(denied) is S3AccessError and "aws:kms" in str(denied)


@pytest.mark.parametrize(("error", "status", "sse"), [
    (PreconditionFailedError("PUT s3://b/k: PreconditionFailed 412"), 412, "AES256"),  # write-once: key exists
    (S3AccessError("PUT s3://b/k: NoSuchBucket 404"), 404, "AES256"),
    (S3UnavailableError("PUT s3://b/k: ConnectError: refused"), 0, "AES256"),  # no answer: not about SSE
    (S3UnavailableError("PUT s3://b/k: InternalError 500"), 500, None),
])
def test_other_faults_get_no_encryption_hint(error: SRError, status: int, sse: str | None) -> None:
    assert isinstance(error, (PreconditionFailedError, S3AccessError, S3UnavailableError))
    assert with_sse_hint(error, status=status, sse=sse) is error
