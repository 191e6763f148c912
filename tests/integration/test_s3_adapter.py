"""The S3 adapter against a real S3 server (SeaweedFS / MinIO / env-provided): no mocks.

Every test of the ``store`` fixture runs with both client libraries (obstore, the default,
and boto3), because the adapter promises the same behaviour, errors and request counts
whichever serves a request.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from tests.harness.faultproxy import FaultProxy
from tests.harness.http_capture import OneRequestCapture
from tests.harness.servers import Servers, s3_config_for
from worker.adapters.s3 import ObjectStore, S3Config
from worker.app.ports import ObjectMeta, WriteOutcome
from worker.errors import (
    DriftError,
    MessageTooLargeError,
    ObjectNotFoundError,
    PreconditionFailedError,
    RetryableError,
    S3AccessError,
    S3UnavailableError,
)

pytestmark = pytest.mark.integration


LIBRARIES = ("obstore", "boto3")


@pytest.fixture(params=LIBRARIES)
def store(request: pytest.FixtureRequest, servers: Servers, s3_client: Any) -> Iterator[ObjectStore]:
    with ObjectStore(s3_config_for(servers, client_library=request.param)) as opened:
        yield opened


@pytest.fixture
def bucket(servers: Servers, s3_client: Any) -> str:
    return servers.s3_bucket


def test_create_is_write_once(store: ObjectStore, bucket: str, s3_prefix: str) -> None:
    key = f"{s3_prefix}/once.json"
    assert store.create(bucket, key, b"first") is True
    assert store.create(bucket, key, b"second") is False
    assert store.get(bucket, key, max_bytes=100) == b"first"


def test_put_write_once_identical_and_drift(store: ObjectStore, bucket: str, s3_prefix: str) -> None:
    key = f"{s3_prefix}/plan.json"
    assert store.put_write_once(bucket, key, b'{"a":1}') is WriteOutcome.CREATED
    assert store.put_write_once(bucket, key, b'{"a":1}') is WriteOutcome.EXISTING_IDENTICAL
    with pytest.raises(DriftError, match=key):
        store.put_write_once(bucket, key, b'{"a":2}')
    # Existing object longer than the new payload: detected from the capped read alone.
    with pytest.raises(DriftError, match=key):
        store.put_write_once(bucket, key, b"{}")
    # Existing object shorter than the new payload.
    with pytest.raises(DriftError, match=key):
        store.put_write_once(bucket, key, b'{"a":1,"b":2}')
    assert store.get(bucket, key, max_bytes=100) == b'{"a":1}'


def test_identical_write_costs_one_put_and_one_get(store: ObjectStore, bucket: str, s3_prefix: str) -> None:
    key = f"{s3_prefix}/x.json"
    store.put_write_once(bucket, key, b"abc")
    store.counter.reset()
    store.put_write_once(bucket, key, b"abc")
    snap = store.counter.snapshot()
    assert (snap["PUT"], snap["GET"], snap["HEAD"], snap["LIST"]) == (1, 1, 0, 0)


def test_racing_creates_exactly_one_wins(store: ObjectStore, bucket: str, s3_prefix: str) -> None:
    for round_no in range(3):
        key = f"{s3_prefix}/race-{round_no}.json"
        barrier = threading.Barrier(8)
        results: list[bool] = []

        def racer(i: int, key: str = key, barrier: threading.Barrier = barrier,
                  results: list[bool] = results) -> None:
            barrier.wait()
            results.append(store.create(bucket, key, f"writer-{i}".encode()))  # list.append is atomic

        threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False] * 7 + [True], results
        assert store.get(bucket, key, max_bytes=100).startswith(b"writer-")


def test_racing_identical_write_once_all_succeed(store: ObjectStore, bucket: str, s3_prefix: str) -> None:
    key = f"{s3_prefix}/facts.json"
    barrier = threading.Barrier(8)
    outcomes: list[WriteOutcome] = []
    lock = threading.Lock()

    def racer() -> None:
        barrier.wait()
        outcome = store.put_write_once(bucket, key, b"same deterministic bytes")
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(WriteOutcome.CREATED) == 1
    assert outcomes.count(WriteOutcome.EXISTING_IDENTICAL) == 7


def test_get_byte_cap_does_not_read_the_body(store: ObjectStore, bucket: str, s3_prefix: str,
                                             s3_client: Any) -> None:
    key = f"{s3_prefix}/big.bin"
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"x" * (8 * 1024 * 1024))
    store.counter.reset()
    with pytest.raises(MessageTooLargeError):
        store.get(bucket, key, max_bytes=1024)
    with pytest.raises(MessageTooLargeError):
        list(store.iter_chunks(bucket, key, max_bytes=1024))
    with pytest.raises(MessageTooLargeError):
        store.sha256(bucket, key, max_bytes=8 * 1024 * 1024 - 1)
    snap = store.counter.snapshot()
    assert snap["GET"] == 3  # not retried: too large is permanent
    assert snap["bytes_in"] < 1024 * 1024  # the 8 MiB bodies were not read
    # Exactly at the cap is fine.
    assert len(store.get(bucket, key, max_bytes=8 * 1024 * 1024)) == 8 * 1024 * 1024


def test_streamed_reads_and_hash(store: ObjectStore, bucket: str, s3_prefix: str, s3_client: Any) -> None:
    key = f"{s3_prefix}/data.bin"
    body = bytes(range(256)) * 10_000  # 2.56 MB, several chunks
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    chunks = list(store.iter_chunks(bucket, key, max_bytes=len(body), chunk_size=1024 * 1024))
    assert b"".join(chunks) == body
    assert len(chunks) >= 3 and all(len(c) <= 1024 * 1024 for c in chunks)
    assert store.sha256(bucket, key, max_bytes=len(body)) == (hashlib.sha256(body).hexdigest(), len(body))
    empty = f"{s3_prefix}/empty.bin"
    s3_client.put_object(Bucket=bucket, Key=empty, Body=b"")
    assert store.get(bucket, empty, max_bytes=0) == b""
    assert store.sha256(bucket, empty, max_bytes=10) == (hashlib.sha256(b"").hexdigest(), 0)


def test_not_found_head_list_delete(store: ObjectStore, bucket: str, s3_prefix: str) -> None:
    with pytest.raises(ObjectNotFoundError):
        store.get(bucket, f"{s3_prefix}/nope", max_bytes=10)
    with pytest.raises(ObjectNotFoundError):
        store.sha256(bucket, f"{s3_prefix}/nope", max_bytes=10)
    assert store.head(bucket, f"{s3_prefix}/nope") is None
    keys = [f"{s3_prefix}/list/{name}" for name in ("b", "a", "c/d", "e", "f")]
    for key in keys:
        assert store.create(bucket, key, key.encode())
    store.counter.reset()
    listed = list(store.list(bucket, f"{s3_prefix}/list/", page_size=2))
    assert [m.key for m in listed] == sorted(keys)
    assert all(isinstance(m, ObjectMeta) and m.size == len(m.key) and m.etag for m in listed)
    assert store.counter.snapshot()["LIST"] == 3  # 5 keys, 2 per page
    meta = store.head(bucket, keys[0])
    assert meta is not None and meta.size == len(keys[0]) and meta.etag == listed[1].etag
    after = [m.key for m in store.list(bucket, f"{s3_prefix}/list/", start_after=f"{s3_prefix}/list/c/d")]
    assert after == [f"{s3_prefix}/list/e", f"{s3_prefix}/list/f"]
    store.delete(bucket, keys[0])
    assert store.head(bucket, keys[0]) is None
    assert list(store.list(bucket, f"{s3_prefix}/nothing-here/")) == []


def test_request_counter_counts_by_verb(store: ObjectStore, bucket: str, s3_prefix: str) -> None:
    store.counter.reset()
    store.create(bucket, f"{s3_prefix}/a", b"12345")
    store.create(bucket, f"{s3_prefix}/a", b"12345")  # 412: still a PUT attempt
    store.get(bucket, f"{s3_prefix}/a", max_bytes=10)
    store.sha256(bucket, f"{s3_prefix}/a", max_bytes=10)
    with pytest.raises(ObjectNotFoundError):
        store.get(bucket, f"{s3_prefix}/missing", max_bytes=10)  # not retried
    store.head(bucket, f"{s3_prefix}/a")
    list(store.list(bucket, f"{s3_prefix}/"))
    store.delete(bucket, f"{s3_prefix}/a")
    assert store.counter.snapshot() == {
        "PUT": 2, "GET": 3, "HEAD": 1, "LIST": 1, "DELETE": 1, "bytes_in": 10, "bytes_out": 10,
    }
    assert store.counter.requests == 8


def test_missing_bucket_is_access_error(store: ObjectStore, s3_prefix: str) -> None:
    with pytest.raises(S3AccessError):
        list(store.list("sr-no-such-bucket-" + s3_prefix[2:], "x/"))
    assert store.counter.snapshot()["LIST"] == 1  # permanent: not retried


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("library", LIBRARIES)
def test_unreachable_endpoint_retries_boundedly_then_unavailable(library: str) -> None:
    config = S3Config(
        client_library=library,
        endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        region="us-east-1",
        access_key_id=SecretStr("unused"),
        secret_access_key=SecretStr("unused"),
        max_attempts=3,
        backoff_initial=0.001,
        backoff_max=0.01,
        connect_timeout=1,
        read_timeout=1,
    )
    with ObjectStore(config) as store:
        with pytest.raises(S3UnavailableError) as info:
            store.get("some-bucket", "k", max_bytes=10)
        assert isinstance(info.value, RetryableError)
        assert isinstance(info.value.__cause__, Exception)
        with pytest.raises(S3UnavailableError):
            store.create("some-bucket", "k", b"x")
        with pytest.raises(S3UnavailableError):
            list(store.list("some-bucket", ""))
        snap = store.counter.snapshot()
        assert (snap["GET"], snap["PUT"], snap["LIST"]) == (3, 3, 3)


def test_store_requires_open() -> None:
    store = ObjectStore(S3Config(endpoint_url="http://127.0.0.1:1"))
    with pytest.raises(S3AccessError):
        store.head("some-bucket", "k")
    assert store.counter.snapshot()["HEAD"] == 1
    store.close()  # idempotent without open


def test_get_range_is_pinned_to_the_listed_version(store: ObjectStore, bucket: str, s3_prefix: str,
                                                   s3_client: Any) -> None:
    key = f"{s3_prefix}/ranged.bin"
    body = bytes(range(256)) * 64  # 16 KiB
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    meta = store.head(bucket, key)
    assert meta is not None
    store.counter.reset()
    parts = [b"".join(store.get_range(bucket, key, start=a, end=min(a + 5000, len(body)), object_size=meta.size,
                                      etag=meta.etag)) for a in range(0, len(body), 5000)]
    assert b"".join(parts) == body
    assert store.counter.snapshot()["GET"] == 4 and store.counter.snapshot()["bytes_in"] == len(body)
    # Same size, other bytes: the ETag pin refuses it.
    s3_client.put_object(Bucket=bucket, Key=key, Body=bytes(reversed(body)))
    with pytest.raises(PreconditionFailedError):
        store.get_range(bucket, key, start=0, end=100, object_size=meta.size, etag=meta.etag)
    # No ETag to pin (some servers list none): the size check still catches a grown object.
    s3_client.put_object(Bucket=bucket, Key=key, Body=body + b"more")
    with pytest.raises(PreconditionFailedError):
        store.get_range(bucket, key, start=0, end=100, object_size=meta.size)
    with pytest.raises(ObjectNotFoundError):
        store.get_range(bucket, f"{s3_prefix}/nope", start=0, end=10, object_size=10)


# --------------------------------------------------------------------------- mid-stream faults
@pytest.fixture
def s3_proxy(servers: Servers, s3_client: Any) -> Iterator[FaultProxy]:
    from urllib.parse import urlsplit

    target = urlsplit(servers.s3_endpoint or "")
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 80) as proxy:
        yield proxy


def _chunked_via(proxy: FaultProxy, servers: Servers, library: str) -> ObjectStore:
    return ObjectStore(s3_config_for(servers, endpoint_url=f"http://{proxy.address}", client_library=library,
                                     backoff_initial=0.01, backoff_max=0.05, read_timeout=5))


@pytest.mark.parametrize("library", LIBRARIES)
def test_stream_cut_mid_body_resumes_with_a_pinned_range(servers: Servers, s3_client: Any, s3_proxy: FaultProxy,
                                                        s3_prefix: str, library: str) -> None:
    """A connection reset in the middle of a streamed body resumes where it stopped (ranged
    GET pinned with If-Match): the caller sees exactly the object's bytes, once."""
    key = f"{s3_prefix}/cut.bin"
    body = hashlib.sha256(b"seed").digest() * (8 * 1024 * 1024 // 32)  # 8 MiB, not repetitive per chunk
    s3_client.put_object(Bucket=servers.s3_bucket, Key=key, Body=body)
    s3_proxy.latency(0.002)  # keep most of the body in flight when the cut comes
    with _chunked_via(s3_proxy, servers, library) as store:
        received = bytearray()
        for n, chunk in enumerate(store.iter_chunks(servers.s3_bucket, key, max_bytes=len(body),
                                                    chunk_size=256 * 1024)):
            received += chunk
            if n == 0:
                s3_proxy.reset()  # RST the live connection...
                s3_proxy.pass_through()  # ...and let the resumption through
        snap = store.counter.snapshot()
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(body).hexdigest() and len(received) == len(body)
    assert snap["GET"] >= 2, "the cut never happened: the whole body was already buffered"
    assert snap["bytes_in"] == len(body)


@pytest.mark.parametrize("library", LIBRARIES)
def test_object_replaced_mid_stream_is_a_precondition_failure(servers: Servers, s3_client: Any,
                                                              s3_proxy: FaultProxy, s3_prefix: str,
                                                              library: str) -> None:
    """If the object changes between the cut and the resumption, the pinned range refuses to
    splice two versions together: PreconditionFailedError, never mixed bytes."""
    key = f"{s3_prefix}/replaced.bin"
    body = b"A" * (8 * 1024 * 1024)
    s3_client.put_object(Bucket=servers.s3_bucket, Key=key, Body=body)
    s3_proxy.latency(0.002)
    with _chunked_via(s3_proxy, servers, library) as store, pytest.raises(PreconditionFailedError):
        for n, _chunk in enumerate(store.iter_chunks(servers.s3_bucket, key, max_bytes=len(body),
                                                     chunk_size=256 * 1024)):
            if n == 0:
                s3_proxy.reset()
                s3_client.put_object(Bucket=servers.s3_bucket, Key=key, Body=b"B" * len(body))
                s3_proxy.pass_through()


@pytest.mark.parametrize("library", LIBRARIES)
def test_credentials_from_the_default_chain(servers: Servers, s3_client: Any, s3_prefix: str, library: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """No static keys in the config: both clients take them from boto3's default chain (here
    the AWS_* environment), as a pod with an instance role would. The embedded SeaweedFS
    accepts any key, so the signature's key id is checked on a captured request too."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMTHECHAIN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", servers.s3_secret_key)
    config = s3_config_for(servers, access_key_id=None, secret_access_key=None, client_library=library)
    with OneRequestCapture() as capture, ObjectStore(config.model_copy(
            update={"endpoint_url": capture.endpoint, "max_attempts": 1})) as store:
        store.put("sr-test-bucket", f"{s3_prefix}/chain.json", b"chain")
    assert "Credential=AKIDFROMTHECHAIN/" in (capture.header("Authorization") or ""), capture.headers
    assert capture.body == b"chain"
    key = f"{s3_prefix}/chain.json"
    with ObjectStore(config) as store:
        assert store.create(servers.s3_bucket, key, b"chain")
        assert store.get(servers.s3_bucket, key, max_bytes=10) == b"chain"
