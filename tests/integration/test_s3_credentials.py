"""Session-token credentials reach a real S3 server over real sockets, through both libraries.

A recording TCP proxy sits between SR's object store and the session's S3 server (the
embedded SeaweedFS): it forwards every byte both ways and keeps the head of every request, so
each test sees the headers obstore and boto3 actually sent — ``X-Amz-Security-Token`` and the
``Authorization`` credential scope (key id and region). The store uses the default routing:
obstore for PUT/GET/HEAD, boto3 for LIST and the bucket probe, so one store covers both
transports. Credential sources: the ``AWS_*`` environment read by SR's settings, a profile in a
temporary shared config/credentials file (region from the profile), a container-role endpoint
and web identity (a token file exchanged at a local STS stand-in) — the last two refreshable
credentials from the SDK's default chain.

SeaweedFS does not check session tokens, so the server accepts the requests; another server
(``SR_TEST_S3_ENDPOINT``) may refuse the made-up token, which must then be one typed
:class:`~worker.errors.S3CredentialsError` — the headers are checked either way.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.harness.aws_env import clear_aws_environment
from tests.harness.servers import Servers
from worker.adapters.s3 import ObjectStore
from worker.errors import S3CredentialsError
from worker.runtime.compose import s3_config
from worker.settings import load_settings

pytestmark = pytest.mark.integration

TOKEN = "FwoGZXIvYXdzEXAMPLE-session-token//sr+integration="


# --------------------------------------------------------------------------- recording proxy
class _RequestHeads:
    """Parses the client → server byte stream of one connection into request heads."""

    def __init__(self, sink: list[dict[str, str]], lock: threading.Lock) -> None:
        self._buffer = b""
        self._body_left = 0
        self._sink = sink
        self._lock = lock

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if self._body_left:
                skipped = min(self._body_left, len(self._buffer))
                self._buffer, self._body_left = self._buffer[skipped:], self._body_left - skipped
                if self._body_left:
                    return
            head, found, rest = self._buffer.partition(b"\r\n\r\n")
            if not found:
                return
            lines = head.decode("latin-1").split("\r\n")
            headers = {"request-line": lines[0]}
            headers.update((k.lower(), v) for k, _, v in (line.partition(": ") for line in lines[1:]))
            with self._lock:
                self._sink.append(headers)
            self._buffer = rest
            self._body_left = int(headers.get("content-length", "0") or 0)


class RecordingProxy:
    """Forward loopback TCP connections to ``target`` and record every request head sent."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.heads: list[dict[str, str]] = []

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``."""
        if self._listener is None:
            raise RuntimeError("proxy not started")
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> Self:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._start(self._accept, self._listener)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with self._lock:
            sockets = [self._listener, *self._sockets] if self._listener is not None else list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)

    def requests(self) -> list[dict[str, str]]:
        """The request heads recorded so far, lower-cased header names plus ``request-line``."""
        with self._lock:
            return list(self.heads)

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name="recording-proxy", daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target, timeout=10)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            self._start(self._pump, client, upstream, _RequestHeads(self.heads, self._lock))
            self._start(self._pump, upstream, client, None)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, parser: _RequestHeads | None) -> None:
        try:
            while chunk := src.recv(65536):
                if parser is not None:
                    parser.feed(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


# --------------------------------------------------------------------------- credential endpoints
def _in_an_hour() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


class _CredentialEndpoint(BaseHTTPRequestHandler):
    """Answers like the ECS / EKS Pod Identity credentials endpoint (GET) and like STS
    ``AssumeRoleWithWebIdentity`` (POST), each with one hour of validity; keeps what was posted."""

    posted: ClassVar[list[dict[str, list[str]]]] = []

    def do_GET(self) -> None:
        self._answer("application/json", json.dumps({
            "AccessKeyId": "ASIACONTAINERROLE", "SecretAccessKey": "container-secret", "Token": TOKEN,
            "Expiration": _in_an_hour()}).encode())

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode())
        type(self).posted.append(form)
        self._answer("text/xml", (
            '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            "<AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIAWEBIDENTITY</AccessKeyId>"
            f"<SecretAccessKey>web-secret</SecretAccessKey><SessionToken>{TOKEN}</SessionToken>"
            f"<Expiration>{_in_an_hour()}</Expiration></Credentials>"
            "<SubjectFromWebIdentityToken>system:serviceaccount:sr:worker</SubjectFromWebIdentityToken>"
            "<AssumedRoleUser><Arn>arn:aws:sts::111122223333:assumed-role/sr-worker/sr</Arn>"
            "<AssumedRoleId>AROAEXAMPLE:sr</AssumedRoleId></AssumedRoleUser></AssumeRoleWithWebIdentityResult>"
            "<ResponseMetadata><RequestId>sr-test</RequestId></ResponseMetadata>"
            "</AssumeRoleWithWebIdentityResponse>").encode())

    def _answer(self, content_type: str, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@contextlib.contextmanager
def _credential_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a :class:`_CredentialEndpoint`, stopped afterwards."""
    _CredentialEndpoint.posted = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CredentialEndpoint)
    thread = threading.Thread(target=server.serve_forever, name="credential-endpoint", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --------------------------------------------------------------------------- tests
@pytest.fixture
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No AWS credentials or profile from the machine: only what a test sets."""
    return clear_aws_environment(monkeypatch, tmp_path)


def _library(head: dict[str, str]) -> str:
    agent = head.get("user-agent", "").lower()
    return "boto3" if "botocore" in agent else "obstore"


def _exercise(servers: Servers, environ: dict[str, str], key: str) -> tuple[list[dict[str, str]], str]:
    """PUT, GET, HEAD (obstore) and LIST, bucket probe (boto3) through the recording proxy with
    settings built from ``environ``; returns the request heads and the credential source."""
    with RecordingProxy(servers.require_s3()) as proxy:
        settings = load_settings(None, {**environ, "SR_S3_ENDPOINT": proxy.endpoint,
                                        "SR_S3_BUCKET": servers.s3_bucket, "SR_S3_CLIENT_LIBRARY": "obstore"})
        config = s3_config(settings).model_copy(update={"max_attempts": 1})
        with ObjectStore(config) as store:
            assert store.route_names()["PUT"] == "obstore" and store.route_names()["LIST"] == "boto3"
            source = store.credential_source() or ""
            try:
                assert store.bucket_exists(servers.s3_bucket)
                assert store.create(servers.s3_bucket, key, b"token-bearing")
                assert store.get(servers.s3_bucket, key, max_bytes=100) == b"token-bearing"
                assert store.head(servers.s3_bucket, key) is not None
                assert [meta.key for meta in store.list(servers.s3_bucket, key)] == [key]
            except S3CredentialsError as exc:
                # Only a server that checks session tokens refuses the made-up one.
                assert "seaweedfs" not in servers.server_pids(), str(exc)
                assert "\n" not in str(exc) and TOKEN not in str(exc)
        return proxy.requests(), source


def _assert_token_on_every_request(heads: list[dict[str, str]], key_id: str, region: str) -> None:
    assert heads, "no request reached the proxy"
    assert {_library(head) for head in heads} == {"obstore", "boto3"}, [h["request-line"] for h in heads]
    for head in heads:
        assert head.get("x-amz-security-token") == TOKEN, (head["request-line"], _library(head), head)
        assert f"Credential={key_id}/" in head.get("authorization", ""), head
        assert f"/{region}/s3/aws4_request" in head.get("authorization", ""), head
        assert "x-amz-security-token" in head.get("authorization", "").lower(), "the token is not signed"


def test_session_token_from_the_environment_reaches_s3_on_both_transports(
        servers: Servers, clean_aws_env: pytest.MonkeyPatch, s3_prefix: str) -> None:
    environ = {"AWS_ACCESS_KEY_ID": servers.s3_access_key, "AWS_SECRET_ACCESS_KEY": servers.s3_secret_key,
               "AWS_SESSION_TOKEN": TOKEN, "AWS_DEFAULT_REGION": servers.s3_region}
    heads, source = _exercise(servers, environ, f"{s3_prefix}/env.json")
    assert source == "static keys"
    _assert_token_on_every_request(heads, servers.s3_access_key, servers.s3_region)


def test_session_token_from_a_profile_reaches_s3_on_both_transports(
        servers: Servers, clean_aws_env: pytest.MonkeyPatch, s3_prefix: str, tmp_path: Path) -> None:
    (tmp_path / "credentials").write_text(
        f"[sr-ci]\naws_access_key_id = {servers.s3_access_key}\n"
        f"aws_secret_access_key = {servers.s3_secret_key}\naws_session_token = {TOKEN}\n")
    (tmp_path / "config").write_text("[profile sr-ci]\nregion = eu-north-1\n")
    clean_aws_env.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    clean_aws_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    clean_aws_env.setenv("AWS_PROFILE", "sr-ci")
    # SR's settings see no keys and no region: both come from the profile, via the SDK chain.
    heads, source = _exercise(servers, {"AWS_PROFILE": "sr-ci"}, f"{s3_prefix}/profile.json")
    assert source == "shared-credentials-file"
    _assert_token_on_every_request(heads, servers.s3_access_key, "eu-north-1")


def test_container_role_credentials_reach_s3_on_both_transports(
        servers: Servers, clean_aws_env: pytest.MonkeyPatch, s3_prefix: str) -> None:
    with _credential_endpoint() as url:
        clean_aws_env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{url}/v2/credentials")
        heads, source = _exercise(servers, {}, f"{s3_prefix}/container.json")
    assert source == "container-role"
    _assert_token_on_every_request(heads, "ASIACONTAINERROLE", "us-east-1")


def test_web_identity_credentials_reach_s3_on_both_transports(
        servers: Servers, clean_aws_env: pytest.MonkeyPatch, s3_prefix: str, tmp_path: Path) -> None:
    """IRSA / CI OIDC: a token file and a role; botocore exchanges them at STS (here a local
    stand-in, AWS_ENDPOINT_URL_STS) for temporary credentials that both libraries sign with."""
    (tmp_path / "oidc-token").write_text("eyJhbGciOiJSUzI1NiJ9.sr-service-account.sig")
    with _credential_endpoint() as url:
        clean_aws_env.setenv("AWS_ENDPOINT_URL_STS", url)
        clean_aws_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "oidc-token"))
        clean_aws_env.setenv("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/sr-worker")
        heads, source = _exercise(servers, {"AWS_REGION": "eu-west-1"}, f"{s3_prefix}/web-identity.json")
    assert source == "assume-role-with-web-identity"
    assert [form.get("Action") for form in _CredentialEndpoint.posted] == [["AssumeRoleWithWebIdentity"]]
    assert _CredentialEndpoint.posted[0].get("WebIdentityToken") == ["eyJhbGciOiJSUzI1NiJ9.sr-service-account.sig"]
    _assert_token_on_every_request(heads, "ASIAWEBIDENTITY", "eu-west-1")
