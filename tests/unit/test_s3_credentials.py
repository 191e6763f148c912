"""S3 credentials and region: where they come from, that both libraries sign with the same
ones, and that every credential fault is one typed line without a secret.

The wire checks use :class:`~tests.harness.http_capture.OneRequestCapture` (a loopback socket
that records one request): they show the headers obstore and boto3 really send.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import Credentials, RefreshableCredentials
from botocore.exceptions import ClientError, CredentialRetrievalError, UnauthorizedSSOTokenError
from pydantic import SecretStr, ValidationError

from tests.harness.aws_env import clear_aws_environment
from tests.harness.http_capture import OneRequestCapture
from worker.adapters.s3 import ObjectStore, S3Config
from worker.adapters.s3.boto3_transport import Boto3Transport
from worker.adapters.s3.credentials import DEFAULT_REGION, REFRESH_THRESHOLD, CredentialChain, ObstoreCredentials
from worker.adapters.s3.errors import classify_answer, translate_boto3_error, translate_obstore_error
from worker.adapters.s3.obstore_transport import ObstoreTransport
from worker.errors import ConfigError, RetryableError, S3CredentialsError, S3UnavailableError
from worker.runtime.compose import s3_config
from worker.settings import load_settings

KEY, SECRET, TOKEN = "ASIAUNITTESTKEY", "unit-secret-key", "unit-session-token/+="


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """An AWS environment with nothing in it: no keys, no profile, no files, no instance role."""
    return clear_aws_environment(monkeypatch, tmp_path)


def _profile(aws_env: pytest.MonkeyPatch, tmp_path: Path, *, region: str | None, token: bool = True) -> None:
    """A profile ``sr`` in temporary shared files, selected with AWS_PROFILE."""
    (tmp_path / "credentials").write_text(
        f"[sr]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n"
        + (f"aws_session_token = {TOKEN}\n" if token else ""))
    (tmp_path / "config").write_text("[profile sr]\n" + (f"region = {region}\n" if region else ""))
    aws_env.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    aws_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    aws_env.setenv("AWS_PROFILE", "sr")


def _client_error(code: str, status: int, operation: str) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, operation)


def _static(**extra: Any) -> S3Config:
    return S3Config(access_key_id=SecretStr(KEY), secret_access_key=SecretStr(SECRET), **extra)


def _chain(config: S3Config) -> CredentialChain:
    chain = CredentialChain(config)
    chain.resolve()
    return chain


# --------------------------------------------------------------------------- region
@pytest.mark.parametrize(("environ", "expected"), [
    ({"SR_S3_REGION": "eu-west-1", "AWS_REGION": "eu-west-2", "AWS_DEFAULT_REGION": "eu-west-3"}, "eu-west-1"),
    ({"AWS_REGION": "eu-west-2", "AWS_DEFAULT_REGION": "eu-west-3"}, "eu-west-2"),
    ({"AWS_DEFAULT_REGION": "eu-west-3"}, "eu-west-3"),
    ({}, None),  # left to the profile, then us-east-1 (the adapter's chain)
])
def test_settings_region_order(environ: dict[str, str], expected: str | None) -> None:
    assert s3_config(load_settings(None, environ)).region == expected


def test_adapter_region_order(aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert _chain(_static()).region == DEFAULT_REGION == "us-east-1"
    _profile(aws_env, tmp_path, region="ap-southeast-2")
    assert _chain(_static()).region == "ap-southeast-2"  # the profile beats the last-resort default
    aws_env.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    assert _chain(_static()).region == "eu-west-3"
    aws_env.setenv("AWS_REGION", "eu-west-2")
    assert _chain(_static()).region == "eu-west-2"
    assert _chain(_static(region="eu-west-1")).region == "eu-west-1"


def test_the_profile_region_is_not_overridden_by_a_default(aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Was: SR_S3_REGION defaulted to us-east-1, so a profile's region never applied."""
    _profile(aws_env, tmp_path, region="sa-east-1")
    config = s3_config(load_settings(None, {"AWS_PROFILE": "sr"}))
    assert config.region is None and not config.has_static_keys()
    chain = _chain(config)
    assert (chain.region, chain.source) == ("sa-east-1", "shared-credentials-file")


# --------------------------------------------------------------------------- static keys and their token
def test_settings_pass_the_session_token_with_the_static_keys() -> None:
    settings = load_settings(None, {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
                                    "AWS_SESSION_TOKEN": TOKEN})
    config = s3_config(settings)
    assert config.session_token is not None and config.session_token.get_secret_value() == TOKEN
    assert config.access_key_id is not None and config.access_key_id.get_secret_value() == KEY
    assert TOKEN not in repr(settings) and TOKEN not in repr(config) and SECRET not in repr(config)


@pytest.mark.parametrize("environ", [
    {"AWS_ACCESS_KEY_ID": KEY},
    {"AWS_SECRET_ACCESS_KEY": SECRET},
    {"AWS_SESSION_TOKEN": TOKEN},
    {"AWS_ACCESS_KEY_ID": KEY, "AWS_SESSION_TOKEN": TOKEN},
])
def test_incomplete_static_credentials_are_a_config_error_without_values(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="AWS_") as info:
        load_settings(None, environ)
    assert all(value not in str(info.value) for value in environ.values())


def test_incomplete_static_credentials_are_refused_by_the_adapter_config() -> None:
    with pytest.raises(ValidationError, match="together"):
        S3Config(access_key_id=SecretStr(KEY))
    with pytest.raises(ValidationError, match="session_token"):
        S3Config(session_token=SecretStr(TOKEN))


@pytest.mark.parametrize("library", ["boto3", "obstore"])
def test_static_keys_are_sent_with_their_session_token(aws_env: pytest.MonkeyPatch, library: str) -> None:
    with OneRequestCapture() as capture:
        config = _static(session_token=SecretStr(TOKEN), endpoint_url=capture.endpoint, client_library=library,
                         max_attempts=1)
        with ObjectStore(config) as store:
            store.put("b", "k", b"x")
            assert store.credential_source() == "static keys"
    assert capture.header("X-Amz-Security-Token") == TOKEN, capture.headers
    authorization = capture.header("Authorization") or ""
    assert f"Credential={KEY}/" in authorization and "x-amz-security-token" in authorization.lower()


@pytest.mark.parametrize("library", ["boto3", "obstore"])
def test_static_keys_without_a_token_never_borrow_one_from_the_environment(
        aws_env: pytest.MonkeyPatch, library: str) -> None:
    """object_store reads AWS_SESSION_TOKEN by itself; a token of other keys must not be mixed
    into static keys from a config file."""
    aws_env.setenv("AWS_SESSION_TOKEN", "stray-token-of-other-keys")
    with OneRequestCapture() as capture:
        config = _static(endpoint_url=capture.endpoint, client_library=library, max_attempts=1)
        with ObjectStore(config) as store:
            store.put("b", "k", b"x")
    assert capture.header("Authorization") is not None
    assert capture.header("X-Amz-Security-Token") is None, capture.headers


def test_both_transports_of_a_store_share_one_chain(aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _profile(aws_env, tmp_path, region="eu-central-1")
    chain = _chain(S3Config())
    credential = chain.obstore_credentials()()
    assert (credential["access_key_id"], credential["secret_access_key"], credential.get("token")) == (
        KEY, SECRET, TOKEN)
    boto3_credentials = chain.boto3_session().get_credentials()
    assert boto3_credentials is not None
    frozen = boto3_credentials.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == (KEY, SECRET, TOKEN)


# --------------------------------------------------------------------------- obstore's provider and expiry
def test_obstore_provider_reports_the_real_expiry_of_refreshable_credentials() -> None:
    expiry = datetime.now(UTC) + timedelta(minutes=42)
    refreshable = RefreshableCredentials(KEY, SECRET, TOKEN, expiry, refresh_using=lambda: {}, method="sts")
    provider = ObstoreCredentials(_chain(_static()), refreshable)
    credential = provider()
    assert credential["expires_at"] == expiry and credential.get("token") == TOKEN
    assert ObstoreCredentials.refresh_threshold == REFRESH_THRESHOLD
    assert ObstoreCredentials(_chain(_static()), Credentials(KEY, SECRET))()["expires_at"] is None


def test_obstore_provider_gets_refreshed_keys_before_they_expire() -> None:
    fresh_expiry = datetime.now(UTC) + timedelta(hours=1)
    refreshed = {"access_key": "ASIANEW", "secret_key": "new-secret", "token": "new-token",
                 "expiry_time": fresh_expiry.isoformat()}
    nearly_expired = RefreshableCredentials(KEY, SECRET, TOKEN, datetime.now(UTC) + timedelta(minutes=2),
                                            refresh_using=lambda: refreshed, method="sts")
    credential = ObstoreCredentials(_chain(_static()), nearly_expired)()
    assert (credential["access_key_id"], credential.get("token")) == ("ASIANEW", "new-token")
    assert credential["expires_at"] is not None and credential["expires_at"] > datetime.now(UTC) + timedelta(minutes=50)


def _failing(error: Exception) -> RefreshableCredentials:
    def refresh() -> dict[str, str]:
        raise error
    return RefreshableCredentials(KEY, SECRET, TOKEN, datetime.now(UTC) - timedelta(minutes=1),
                                  refresh_using=refresh, method="container-role")


@pytest.mark.parametrize(("error", "kind"), [
    (CredentialRetrievalError(provider="container-role", error_msg="connection refused"), S3UnavailableError),
    (UnauthorizedSSOTokenError(), S3CredentialsError),
])
def test_a_failed_refresh_is_one_typed_line_for_obstore(error: Exception, kind: type[Exception]) -> None:
    chain = _chain(_static(session_token=SecretStr(TOKEN)))
    with pytest.raises(kind) as info:
        ObstoreCredentials(chain, _failing(error))()
    assert chain.take_failure() is info.value and chain.take_failure() is None
    assert "\n" not in str(info.value) and TOKEN not in str(info.value)


class _ExpiredChain(CredentialChain):
    """A chain whose credentials expired and cannot be refreshed (an SSO session ended)."""

    def obstore_credentials(self) -> ObstoreCredentials:
        return ObstoreCredentials(self, _failing(UnauthorizedSSOTokenError()))


def test_obstore_request_with_expired_credentials_raises_the_typed_error(aws_env: pytest.MonkeyPatch) -> None:
    config = _static(endpoint_url="http://127.0.0.1:1", max_attempts=1)
    transport = ObstoreTransport(config, chain=_ExpiredChain(config))
    transport.open()
    with pytest.raises(S3CredentialsError) as info:
        transport.put("b", "k", b"x", create=True)
    message = str(info.value)
    assert message.startswith("PUT s3://b/k: the AWS SSO / login session is missing or expired"), message
    assert "Traceback" not in message and "\n" not in message and not isinstance(info.value, RetryableError)


# --------------------------------------------------------------------------- no credentials at all
@pytest.mark.parametrize("library", ["boto3", "obstore"])
def test_no_credentials_anywhere_is_one_permanent_typed_line(aws_env: pytest.MonkeyPatch, library: str) -> None:
    store = ObjectStore(S3Config(endpoint_url="http://127.0.0.1:1", client_library=library))
    with pytest.raises(S3CredentialsError, match="no S3 credentials found: set AWS_ACCESS_KEY_ID") as info:
        store.open()
    assert not isinstance(info.value, RetryableError) and "\n" not in str(info.value)
    assert store.credential_source() is None


def test_a_missing_profile_is_named(aws_env: pytest.MonkeyPatch) -> None:
    aws_env.setenv("AWS_PROFILE", "not-configured")
    with pytest.raises(S3CredentialsError, match=r"AWS profile 'not-configured' \(AWS_PROFILE\)"):
        Boto3Transport(_static()).open()


# --------------------------------------------------------------------------- answers refusing the credentials
@pytest.mark.parametrize("code", ["ExpiredToken", "InvalidToken", "InvalidAccessKeyId", "TokenRefreshRequired"])
def test_refused_credentials_are_permanent_credential_errors(code: str) -> None:
    assert classify_answer(400, code) is S3CredentialsError
    boto3_error = translate_boto3_error(_client_error(code, 400, "PutObject"), "PUT s3://b/k")
    assert type(boto3_error) is S3CredentialsError and "renew or fix them" in str(boto3_error)
    text = (f"Generic S3 error: Error performing PUT http://127.0.0.1:1/b/k - Server returned non-2xx status code: "
            f"400 Bad Request: <Error><Code>{code}</Code><Message>m</Message><AWSAccessKeyId>{KEY}</AWSAccessKeyId>"
            "</Error>")
    obstore_error = translate_obstore_error(RuntimeError(text), "PUT s3://b/k")
    assert type(obstore_error) is S3CredentialsError and KEY not in str(obstore_error)
    assert not isinstance(boto3_error, RetryableError) and not isinstance(obstore_error, RetryableError)


def test_an_sts_refusal_while_fetching_credentials_is_a_credential_error() -> None:
    error = translate_boto3_error(_client_error("AccessDenied", 403, "AssumeRoleWithWebIdentity"), "GET s3://b/k")
    assert type(error) is S3CredentialsError
    assert str(error) == ("GET s3://b/k: fetching S3 credentials failed: AssumeRoleWithWebIdentity answered "
                          "AccessDenied 403")
    throttled = translate_boto3_error(_client_error("Throttling", 400, "AssumeRole"), "GET s3://b/k")
    assert type(throttled) is S3UnavailableError
