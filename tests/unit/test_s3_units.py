"""Pure parts of the S3 adapter and verifier: error translation, the verb→transport table,
retries and counting on a stand-in client, counters, evidence-root checks."""

from __future__ import annotations

import ast
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from pydantic import SecretStr, ValidationError

import worker.adapters.s3 as s3_package
from worker.adapters.s3 import (
    Boto3Transport,
    ObjectStore,
    ObstoreTransport,
    RequestCounter,
    S3Config,
    raw_boto3_client,
    routes_for,
)
from worker.adapters.s3.errors import classify_answer, translate_boto3_error, translate_obstore_error
from worker.app.verifier import EvidenceVerifier
from worker.errors import (
    ConfigError,
    EvidenceRootForbiddenError,
    ObjectLockUnsupportedError,
    ObjectNotFoundError,
    PreconditionFailedError,
    RetryableError,
    S3AccessError,
    S3CredentialsError,
    S3UnavailableError,
)
from worker.runpack.retention import LockMode, Retention, apply_retention, require_object_lock


def client_error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (client_error("NoSuchKey", 404), ObjectNotFoundError),
        (client_error("404", 404), ObjectNotFoundError),
        (client_error("NoSuchBucket", 404), S3AccessError),
        (client_error("PreconditionFailed", 412), PreconditionFailedError),
        (client_error("AccessDenied", 403), S3AccessError),
        (client_error("InvalidAccessKeyId", 403), S3CredentialsError),
        (client_error("SlowDown", 503), S3UnavailableError),
        (client_error("InternalError", 500), S3UnavailableError),
        (client_error("RequestTimeout", 400), S3UnavailableError),
        (client_error("ConditionalRequestConflict", 409), S3UnavailableError),
        (client_error("", 502), S3UnavailableError),
        (client_error("TooManyRequests", 429), S3UnavailableError),
        (client_error("InvalidArgument", 400), S3AccessError),
        (EndpointConnectionError(endpoint_url="http://x"), S3UnavailableError),
        (ConnectTimeoutError(endpoint_url="http://x"), S3UnavailableError),
        (ReadTimeoutError(endpoint_url="http://x"), S3UnavailableError),
        (ConnectionResetError("reset"), S3UnavailableError),
        (NoCredentialsError(), S3CredentialsError),
        (ParamValidationError(report="bad"), S3AccessError),
        (ValueError("surprise"), S3AccessError),
    ],
)
def test_translate(exc: Exception, expected: type[Exception]) -> None:
    translated = translate_boto3_error(exc, "GET s3://b/k")
    assert type(translated) is expected
    assert isinstance(translated, RetryableError) == (expected is S3UnavailableError)
    assert "s3://b/k" in str(translated)


def _obstore_status_text(status: str, code: str) -> str:
    """The shape of object_store's error text for a non-2xx answer (seen against SeaweedFS)."""
    return (f"Generic S3 error: Error performing GET http://127.0.0.1:1/b/k in 1.2ms - Server returned non-2xx "
            f"status code: {status}: <?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>")


def _obstore_cases() -> list[tuple[Exception, type[Exception]]]:
    import obstore.exceptions as oe

    return [
        (FileNotFoundError("Object at location k not found: " + _obstore_status_text("404 Not Found", "NoSuchKey")),
         ObjectNotFoundError),
        (FileNotFoundError("not found: " + _obstore_status_text("404 Not Found", "NoSuchBucket")), S3AccessError),
        (oe.AlreadyExistsError("Object at location k already exists: Request precondition failure"),
         PreconditionFailedError),
        (oe.PreconditionError("precondition"), PreconditionFailedError),
        (oe.PermissionDeniedError(_obstore_status_text("403 Forbidden", "AccessDenied")), S3AccessError),
        (oe.UnauthenticatedError("unauthenticated"), S3AccessError),
        (oe.GenericError(_obstore_status_text("503 Service Unavailable", "SlowDown")), S3UnavailableError),
        (oe.GenericError(_obstore_status_text("500 Internal Server Error", "InternalError")), S3UnavailableError),
        (oe.GenericError(_obstore_status_text("400 Bad Request", "BadDigest")), S3UnavailableError),
        (oe.GenericError(_obstore_status_text("400 Bad Request", "RequestTimeout")), S3UnavailableError),
        (oe.GenericError(_obstore_status_text("429 Too Many Requests", "")), S3UnavailableError),
        (oe.GenericError(_obstore_status_text("400 Bad Request", "InvalidArgument")), S3AccessError),
        (oe.GenericError(_obstore_status_text("412 Precondition Failed", "PreconditionFailed")),
         PreconditionFailedError),
        (oe.GenericError("Generic S3 error: Error performing GET http://127.0.0.1:1/b/k in 250us - "
                         "HTTP error: error sending request"), S3UnavailableError),
        (TimeoutError("timed out"), S3UnavailableError),
        (ConnectionResetError("reset"), S3UnavailableError),
        (oe.InvalidPathError("bad path"), S3AccessError),
        (oe.NotSupportedError("nope"), S3AccessError),
        (ValueError("surprise"), S3AccessError),
    ]


def test_translate_obstore_errors() -> None:
    """obstore's exceptions map to the same SR errors as boto3's: not-found vs. missing bucket,
    412, denied, transient (5xx, 429, retryable 4xx codes, no answer at all), fail closed."""
    for exc, expected in _obstore_cases():
        translated = translate_obstore_error(exc, "GET s3://b/k")
        assert type(translated) is expected, (exc, translated)
        assert isinstance(translated, RetryableError) == (expected is S3UnavailableError)
        assert "s3://b/k" in str(translated)


@pytest.mark.parametrize(
    ("status", "code", "object_lock", "expected"),
    [
        (404, "ObjectLockConfigurationNotFoundError", "configuration", ObjectLockUnsupportedError),
        (404, "", "configuration", ObjectLockUnsupportedError),
        (501, "", "configuration", ObjectLockUnsupportedError),
        (400, "InvalidRequest", "retention", ObjectLockUnsupportedError),
        (501, "NotImplemented", "retention", ObjectLockUnsupportedError),
        (404, "NoSuchKey", "retention", ObjectNotFoundError),
        (503, "SlowDown", "configuration", S3UnavailableError),
        (400, "RequestTimeout", "retention", S3UnavailableError),
        (403, "AccessDenied", "retention", S3AccessError),
        (400, "InvalidRequest", None, S3AccessError),  # only an Object Lock call means "no lock"
        (404, "", None, ObjectNotFoundError),
        (404, "NoSuchBucket", None, S3AccessError),
        (409, "ConditionalRequestConflict", None, S3UnavailableError),
        (400, "BadDigest", None, S3UnavailableError),
    ],
)
def test_classify_answer_is_the_one_table(status: int, code: str, object_lock: Any, expected: type[Exception]) -> None:
    """Both libraries' answers and the Object Lock calls go through one decision; only
    S3UnavailableError is retryable."""
    kind = classify_answer(status, code, object_lock=object_lock)
    assert kind is expected
    assert issubclass(kind, RetryableError) == (expected is S3UnavailableError)
    error = client_error(code, status)
    translated = translate_boto3_error(error, "GET object-lock configuration of s3://b", object_lock=object_lock)
    assert type(translated) is expected


def test_object_lock_transport_faults_are_transient_and_config_faults_fail_closed() -> None:
    """Was: any non-ClientError of an Object Lock call became S3UnavailableError (3 codes, no
    retries). Now they share the adapter's translation."""
    what = "PUT retention of s3://b/k"
    assert type(translate_boto3_error(EndpointConnectionError(endpoint_url="http://x"), what,
                                      object_lock="retention")) is S3UnavailableError
    assert type(translate_boto3_error(NoCredentialsError(), what, object_lock="retention")) is S3CredentialsError


# --------------------------------------------------------------------------- the verb → transport table
def test_routes_obstore_serves_the_object_requests_boto3_the_rest() -> None:
    config = S3Config(client_library="obstore")
    routes = routes_for("obstore", boto3=Boto3Transport(config), obstore=ObstoreTransport(config))
    assert routes.names() == {"PUT": "obstore", "GET": "obstore", "HEAD": "obstore", "LIST": "boto3",
                              "DELETE": "boto3", "BUCKET": "boto3", "LOCK": "boto3"}
    assert [t.name for t in routes.transports()] == ["obstore", "boto3"]


def test_routes_boto3_serves_everything() -> None:
    config = S3Config(client_library="boto3")
    boto3 = Boto3Transport(config)
    routes = routes_for("boto3", boto3=boto3, obstore=ObstoreTransport(config))
    assert set(routes.names().values()) == {"boto3"}
    assert routes.transports() == [boto3]
    assert set(routes_for("boto3", boto3=boto3, obstore=None).names().values()) == {"boto3"}
    with pytest.raises(ValueError, match="obstore"):
        routes_for("obstore", boto3=boto3, obstore=None)


@pytest.mark.parametrize("library", ["obstore", "boto3"])
def test_store_routes_follow_client_library(library: str) -> None:
    config = S3Config(endpoint_url="http://127.0.0.1:1", client_library=library,
                      access_key_id=SecretStr("k"), secret_access_key=SecretStr("s"))
    with ObjectStore(config) as store:
        names = store.route_names()
    assert {names[verb] for verb in ("PUT", "GET", "HEAD")} == {library}
    assert {names[verb] for verb in ("LIST", "DELETE", "BUCKET", "LOCK")} == {"boto3"}


def test_the_two_transports_do_not_import_each_other_and_escape_hatches_are_gone() -> None:
    package = Path(s3_package.__file__).parent
    for module, other in (("boto3_transport", "obstore"), ("obstore_transport", "boto3_transport")):
        tree = ast.parse((package / f"{module}.py").read_text())
        imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(other in name for name in imported), (module, imported)
    assert not hasattr(ObjectStore, "client") and not hasattr(ObjectStore, "obstore_store")
    assert all(len((p.read_text()).splitlines()) < 600 for p in package.glob("*.py"))


def test_raw_boto3_client_is_configured_like_the_adapter() -> None:
    client = raw_boto3_client(S3Config(endpoint_url="http://127.0.0.1:1", access_key_id=SecretStr("k"),
                                       secret_access_key=SecretStr("s")))
    try:
        config: Any = client.meta.config  # the stubs do not declare its attributes
        assert config.retries == {"total_max_attempts": 1, "mode": "standard"}  # botocore never retries
        assert config.s3 == {"addressing_style": "path"}
        assert config.request_checksum_calculation == "when_required"
    finally:
        client.close()


# --------------------------------------------------------------------------- retries and counting, stand-in client
class _LockClient:
    """Stands in for the S3 service's Object Lock API: answers each call with the next of
    ``answers`` (an exception is raised, anything else returned)."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _answer(self, name: str, kwargs: dict[str, Any]) -> Any:
        self.calls.append((name, kwargs))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def get_object_lock_configuration(self, **kwargs: Any) -> Any:
        return self._answer("get_object_lock_configuration", kwargs)

    def put_object_retention(self, **kwargs: Any) -> Any:
        return self._answer("put_object_retention", kwargs)

    def close(self) -> None:
        pass


def _store_with(client: object, *, max_attempts: int = 5) -> tuple[ObjectStore, list[tuple[str, bool]]]:
    config = S3Config(backoff_initial=0, backoff_max=0, max_attempts=max_attempts, client_library="boto3")
    seen: list[tuple[str, bool]] = []
    store = ObjectStore(config, transport=Boto3Transport(config, client=client),  # type: ignore[arg-type]
                        on_request=lambda verb, _secs, ok: seen.append((verb, ok)))
    store.open()
    return store, seen


_ENABLED = {"ObjectLockConfiguration": {"ObjectLockEnabled": "Enabled"}}


def test_object_lock_check_is_retried_and_counted_like_every_get() -> None:
    client = _LockClient(client_error("SlowDown", 503), EndpointConnectionError(endpoint_url="http://x"), _ENABLED)
    store, seen = _store_with(client)
    require_object_lock(store, "b")
    assert store.counter.snapshot()["GET"] == 3 and store.counter.requests == 3
    assert seen == [("GET", False), ("GET", False), ("GET", True)]
    assert client.calls[0] == ("get_object_lock_configuration", {"Bucket": "b"})


def test_object_lock_missing_is_permanent_and_names_the_bucket() -> None:
    store, _ = _store_with(_LockClient(client_error("ObjectLockConfigurationNotFoundError", 404)))
    with pytest.raises(ObjectLockUnsupportedError, match="bucket 'b' has no S3 Object Lock configuration"):
        require_object_lock(store, "b")
    assert store.counter.snapshot()["GET"] == 1  # not retried
    store, _ = _store_with(_LockClient({"ObjectLockConfiguration": {}}))
    with pytest.raises(ObjectLockUnsupportedError, match="does not have S3 Object Lock enabled"):
        require_object_lock(store, "b")


def test_retention_put_is_retried_and_counted_like_every_put() -> None:
    until = datetime.now(UTC) + timedelta(days=1)
    client = _LockClient(client_error("InternalError", 500), {})
    store, seen = _store_with(client)
    apply_retention(store, "b", "k", Retention.until(LockMode.COMPLIANCE, until))
    assert store.counter.snapshot()["PUT"] == 2 and store.counter.requests == 2
    assert seen == [("PUT", False), ("PUT", True)]
    assert client.calls[-1] == ("put_object_retention", {
        "Bucket": "b", "Key": "k", "Retention": {"Mode": "COMPLIANCE", "RetainUntilDate": until.astimezone(UTC)}})


def test_retention_put_gives_up_after_the_budget_and_refusals_are_not_retried() -> None:
    until = datetime.now(UTC) + timedelta(days=1)
    store, _ = _store_with(_LockClient(*[client_error("SlowDown", 503)] * 3), max_attempts=3)
    with pytest.raises(S3UnavailableError):
        apply_retention(store, "b", "k", Retention.until("governance", until))
    assert store.counter.snapshot()["PUT"] == 3
    store, _ = _store_with(_LockClient(client_error("InvalidRequest", 400)))
    with pytest.raises(ObjectLockUnsupportedError):
        apply_retention(store, "b", "k", Retention.until("governance", until))
    store, _ = _store_with(_LockClient(client_error("AccessDenied", 403)))
    with pytest.raises(S3AccessError):
        apply_retention(store, "b", "k", Retention.until("governance", until))
    assert store.counter.snapshot()["PUT"] == 1


def test_unopened_store_fails_like_a_request() -> None:
    store = ObjectStore(S3Config(endpoint_url="http://127.0.0.1:1"))
    with pytest.raises(S3AccessError, match="before open"):
        store.object_lock_enabled("b")
    with pytest.raises(S3AccessError, match="before open"):
        store.route_names()
    assert store.counter.snapshot()["GET"] == 1


def test_obstore_selected_but_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "obstore", None)  # import obstore -> ImportError
    store = ObjectStore(S3Config(endpoint_url="http://127.0.0.1:1", client_library="obstore"))
    with pytest.raises(S3AccessError, match="obstore package is not installed"):
        store.open()


def test_obstore_without_credentials_is_an_access_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/sr-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/sr-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = ObjectStore(S3Config(endpoint_url="http://127.0.0.1:1", client_library="obstore"))
    with pytest.raises(S3AccessError, match="no S3 credentials"):
        store.open()


def test_counter_is_thread_safe() -> None:
    counter = RequestCounter()

    def work() -> None:
        for _ in range(10_000):
            counter.add("GET")
            counter.add_bytes(bytes_in=2, bytes_out=1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = counter.snapshot()
    assert snap["GET"] == 80_000 and snap["bytes_in"] == 160_000 and snap["bytes_out"] == 80_000
    assert counter.requests == 80_000
    counter.reset()
    assert set(counter.snapshot().values()) == {0}


def test_config_validation_and_secrets() -> None:
    with pytest.raises(ValidationError):
        S3Config(max_attempts=0)
    config = S3Config(access_key_id="AKIA-visible?", secret_access_key="very-secret")
    assert "very-secret" not in repr(config) and "very-secret" not in str(config.model_dump())


def test_store_init_does_no_io() -> None:
    store = ObjectStore(S3Config(endpoint_url="http://127.0.0.1:1"))
    assert store.counter.requests == 0
    store.close()


# --------------------------------------------------------------------------- evidence root
check = EvidenceVerifier.check_evidence_root


@pytest.mark.parametrize("root", [
    "s3://sr-bucket/evidence/t1",
    "s3://sr-bucket/evidence/t1/",
    "s3://sr-bucket/evidence/t1/runs/2024-01-01",
    "s3://sr-bucket/evidence/t1/a/b/c/",
])
def test_evidence_root_allowed_by_default(root: str) -> None:
    location = check(root, "t1", default_bucket="sr-bucket", tenant_prefixes=None)
    assert location.bucket == "sr-bucket" and location.segments[:2] == ("evidence", "t1")


@pytest.mark.parametrize("root", [
    "s3://sr-bucket/evidence/t10/x",          # string prefix, not segment prefix
    "s3://sr-bucket/evidence/t1x",
    "s3://sr-bucket/evidence/t2/x",
    "s3://sr-bucket/evidence",
    "s3://sr-bucket",
    "s3://other-bucket/evidence/t1/x",
    "s3://sr-bucket/evidence/t1/../t2/x",     # traversal
    "s3://sr-bucket/evidence/t1/./x",
    "s3://sr-bucket/evidence/t1/%2e%2e/t2",
    "s3://sr-bucket/evidence/t1//x",
    "s3://sr-bucket/evidence/t1\\..\\t2",
    "s3://sr-bucket/evidence/t1/x?y=1",
    "S3://sr-bucket/evidence/t1/x",
    "https://sr-bucket/evidence/t1/x",
    "s3://sr-bucket/evidence/t1/\u2024\u2024/x",
    "",
])
def test_evidence_root_forbidden_by_default(root: str) -> None:
    with pytest.raises(EvidenceRootForbiddenError):
        check(root, "t1", default_bucket="sr-bucket", tenant_prefixes=None)


def test_evidence_root_tenant_overrides() -> None:
    prefixes = {"t1": ["s3://lake/raw/t1/", "s3://lake/curated/shared"], "t3": []}
    assert check("s3://lake/raw/t1/x", "t1", default_bucket="sr-bucket", tenant_prefixes=prefixes).bucket == "lake"
    assert check("s3://lake/curated/shared", "t1", default_bucket="sr-bucket", tenant_prefixes=prefixes)
    for root in ("s3://sr-bucket/evidence/t1/x", "s3://lake/raw/t10/x", "s3://lake/curated/shared2"):
        with pytest.raises(EvidenceRootForbiddenError):
            check(root, "t1", default_bucket="sr-bucket", tenant_prefixes=prefixes)
    # A tenant the mapping does not name keeps the default; an empty list forbids everything.
    assert check("s3://sr-bucket/evidence/t2/x", "t2", default_bucket="sr-bucket", tenant_prefixes=prefixes)
    with pytest.raises(EvidenceRootForbiddenError):
        check("s3://sr-bucket/evidence/t3/x", "t3", default_bucket="sr-bucket", tenant_prefixes=prefixes)
    with pytest.raises(ConfigError):
        check("s3://lake/raw/t1/x", "t1", default_bucket="sr-bucket", tenant_prefixes={"t1": ["s3://lake/../x"]})
    with pytest.raises(EvidenceRootForbiddenError):
        check("s3://sr-bucket/evidence/../x", "../x", default_bucket="sr-bucket", tenant_prefixes=None)


# --------------------------------------------------------------------------- stream resumption
class _Body:
    """A streaming body that fails with a transient error after ``fail_after`` bytes."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self.data, self.pos, self.fail_after, self.closed = data, 0, fail_after, False

    def read(self, n: int) -> bytes:
        from botocore.exceptions import ResponseStreamingError

        if self.fail_after is not None and self.pos >= self.fail_after:
            raise ResponseStreamingError(error="connection reset mid-body")
        end = min(self.pos + n, len(self.data), self.fail_after if self.fail_after is not None else len(self.data))
        chunk, self.pos = self.data[self.pos:end], end
        return chunk

    def close(self) -> None:
        self.closed = True


class _ResumingClient:
    """Stands in for the S3 service only to inject a mid-stream reset (not reproducible live)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[dict[str, object]] = []

    def get_object(self, **kwargs: object) -> dict[str, object]:
        self.calls.append(kwargs)
        if len(self.calls) == 1:
            return {"ContentLength": len(self.data), "ETag": '"e1"', "Body": _Body(self.data, fail_after=5)}
        start = int(str(kwargs["Range"]).removeprefix("bytes=").removesuffix("-"))
        rest = self.data[start:]
        return {"ContentLength": len(rest), "ETag": '"e1"', "Body": _Body(rest)}

    def close(self) -> None:
        pass


def test_iter_chunks_resumes_with_range_and_if_match() -> None:
    data = b"0123456789abcdef"
    fake = _ResumingClient(data)
    store, _ = _store_with(fake)
    assert b"".join(store.iter_chunks("b", "k", max_bytes=len(data), chunk_size=4)) == data
    assert fake.calls[1]["Range"] == "bytes=5-" and fake.calls[1]["IfMatch"] == '"e1"'
    assert store.counter.snapshot()["GET"] == 2
    assert store.counter.snapshot()["bytes_in"] == len(data)
