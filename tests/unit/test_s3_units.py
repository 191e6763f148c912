"""Pure parts of the S3 adapter and verifier: error translation, counters, evidence-root checks."""

from __future__ import annotations

import threading

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from pydantic import ValidationError

from worker.adapters.s3 import ObjectStore, RequestCounter, S3Config, _translate
from worker.app.verifier import EvidenceVerifier
from worker.errors import (
    ConfigError,
    EvidenceRootForbiddenError,
    ObjectNotFoundError,
    PreconditionFailedError,
    RetryableError,
    S3AccessError,
    S3UnavailableError,
)


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (client_error("NoSuchKey", 404), ObjectNotFoundError),
        (client_error("404", 404), ObjectNotFoundError),
        (client_error("NoSuchBucket", 404), S3AccessError),
        (client_error("PreconditionFailed", 412), PreconditionFailedError),
        (client_error("AccessDenied", 403), S3AccessError),
        (client_error("InvalidAccessKeyId", 403), S3AccessError),
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
        (NoCredentialsError(), S3AccessError),
        (ParamValidationError(report="bad"), S3AccessError),
        (ValueError("surprise"), S3AccessError),
    ],
)
def test_translate(exc: Exception, expected: type[Exception]) -> None:
    translated = _translate(exc, "GET s3://b/k")
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
    from worker.adapters.s3 import _RETRYABLE_CODES
    from worker.adapters.s3.obstore import translate_obstore_error

    for exc, expected in _obstore_cases():
        translated = translate_obstore_error(exc, "GET s3://b/k", retryable_codes=_RETRYABLE_CODES)
        assert type(translated) is expected, (exc, translated)
        assert isinstance(translated, RetryableError) == (expected is S3UnavailableError)
        assert "s3://b/k" in str(translated)


def test_obstore_selected_but_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "obstore", None)  # import obstore -> ImportError
    store = ObjectStore(S3Config(endpoint_url="http://127.0.0.1:1", client_library="obstore"))
    with pytest.raises(S3AccessError, match="obstore package is not installed"):
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
    config = S3Config(access_key_id="AKIA-visible?", secret_access_key="very-secret")  # type: ignore[arg-type]
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
    store = ObjectStore(S3Config(backoff_initial=0, backoff_max=0, client_library="boto3"))
    fake = _ResumingClient(data)
    store._client = fake  # type: ignore[assignment]
    assert b"".join(store.iter_chunks("b", "k", max_bytes=len(data), chunk_size=4)) == data
    assert fake.calls[1]["Range"] == "bytes=5-" and fake.calls[1]["IfMatch"] == '"e1"'
    assert store.counter.snapshot()["GET"] == 2
    assert store.counter.snapshot()["bytes_in"] == len(data)
