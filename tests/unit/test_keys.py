"""Key derivation: segments, prefixes, run keys, S3 URIs (contract §5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.keys import (
    MAX_SEQ,
    S3Location,
    parse_run_key,
    parse_s3_uri,
    run_keys,
    validate_bucket,
    validate_prefix,
    validate_relative_key,
    validate_segment,
)
from worker.errors import UnsafeKeyError

RUN = "0123456789abcdef0123456789abcdef"
SAFE_CHARS = "abcXYZ019._=+-"
safe_segment = st.text(alphabet=SAFE_CHARS, min_size=1, max_size=20).filter(lambda s: s.strip(".") != "")


@pytest.mark.parametrize("seg", ["a", "A-b_c.d", "part=2024-01-01", "x+y", "_passed.flag", "a" * 128, "..a", ".hidden"])
def test_safe_segments(seg: str) -> None:
    assert validate_segment(seg) == seg


@pytest.mark.parametrize(
    "seg",
    [
        "",
        ".",
        "..",
        "...",
        "a/b",
        "a\\b",
        "a\x00b",
        "a\nb",
        "a b",
        "é",
        "a" * 129,
        "a:b",
        "a?b",
        "%2e%2e",
        "\u2024\u2024",
    ],
)
def test_unsafe_segments(seg: str) -> None:
    with pytest.raises(UnsafeKeyError):
        validate_segment(seg)


def test_segment_non_str() -> None:
    with pytest.raises(UnsafeKeyError):
        validate_segment(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(("raw", "norm"), [("", ""), ("/", ""), ("sr", "sr"), ("/sr/", "sr"), ("a/b/c", "a/b/c")])
def test_prefix_normalised(raw: str, norm: str) -> None:
    assert validate_prefix(raw) == norm


@pytest.mark.parametrize("raw", ["a//b", "a/../b", "./a", "a/.", "//a", "a\\b", "a/b c"])
def test_prefix_rejected(raw: str) -> None:
    with pytest.raises(UnsafeKeyError):
        validate_prefix(raw)


@pytest.mark.parametrize("raw", ["", "/a", "a/", "a//b", "../a", "a/..", "a/./b"])
def test_relative_key_rejected(raw: str) -> None:
    with pytest.raises(UnsafeKeyError):
        validate_relative_key(raw)


def test_run_keys_layout() -> None:
    keys = run_keys("sr", "t1", "ns", RUN)
    assert keys.root == f"sr/tenant/t1/namespace/ns/run/{RUN}"
    assert keys.plan == f"{keys.root}/plan.json"
    assert keys.records_prefix == f"{keys.root}/record/"
    assert keys.record(0) == f"{keys.root}/record/000000000000.json"
    assert keys.record(MAX_SEQ) == f"{keys.root}/record/999999999999.json"
    assert keys.facts("f" * 64) == f"{keys.root}/facts/{'f' * 64}.json"
    assert run_keys("", "t1", "ns", RUN).root == f"tenant/t1/namespace/ns/run/{RUN}"


@pytest.mark.parametrize("seq", [-1, MAX_SEQ + 1, True, 1.0, "1"])
def test_record_seq_range(seq: object) -> None:
    with pytest.raises(UnsafeKeyError):
        run_keys("sr", "t", "n", RUN).record(seq)  # type: ignore[arg-type]


def test_seq_of_roundtrip() -> None:
    keys = run_keys("sr", "t", "n", RUN)
    assert keys.seq_of(keys.record(42)) == 42
    for bad in [keys.plan, keys.record(1) + "x", f"{keys.records_prefix}1.json", "record/000000000001.json"]:
        with pytest.raises(UnsafeKeyError):
            keys.seq_of(bad)


@pytest.mark.parametrize("bad", ["F" * 64, "f" * 63, "../" + "f" * 61, ""])
def test_facts_hash_validated(bad: str) -> None:
    with pytest.raises(UnsafeKeyError):
        run_keys("sr", "t", "n", RUN).facts(bad)


@pytest.mark.parametrize(
    ("tenant", "ns", "run_id"),
    [
        ("..", "n", RUN),
        ("t", "a/b", RUN),
        ("t", "n", RUN.upper()),
        ("t", "n", RUN[:-1]),
        ("t\x00", "n", RUN),
        ("t", "n", "../" + RUN[3:]),
    ],
)
def test_run_keys_reject_unsafe(tenant: str, ns: str, run_id: str) -> None:
    with pytest.raises(UnsafeKeyError):
        run_keys("sr", tenant, ns, run_id)


def test_parse_run_key() -> None:
    keys = run_keys("a/b", "t1", "ns", RUN)
    assert parse_run_key("a/b", keys.record(3)) == ("t1", "ns", RUN)
    assert parse_run_key("/a/b/", keys.plan) == ("t1", "ns", RUN)
    for bad in [
        "a/c/tenant/t1/namespace/ns/run/" + RUN + "/plan.json",
        "a/b/tenant/t1/run/x",
        "a/b/tenant/../namespace/n/run/" + RUN + "/p",
    ]:
        with pytest.raises(UnsafeKeyError):
            parse_run_key("a/b", bad)


@given(
    prefix=st.lists(safe_segment, max_size=3).map("/".join),
    tenant=safe_segment,
    ns=safe_segment,
    run_id=st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    seq=st.integers(0, MAX_SEQ),
    fv=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
def test_derived_keys_never_escape(*, prefix: str, tenant: str, ns: str, run_id: str, seq: int, fv: str) -> None:
    keys = run_keys(prefix, tenant, ns, run_id)
    for key in (keys.plan, keys.record(seq), keys.facts(fv)):
        assert not key.startswith("/")
        segments = key.split("/")
        assert all(s not in ("", ".", "..") for s in segments)
        assert key.startswith(keys.root + "/")
        if prefix:
            assert key.startswith(prefix + "/")
        assert parse_run_key(prefix, key) == (tenant, ns, run_id)


@given(st.text(max_size=40))
def test_arbitrary_text_either_safe_or_rejected(text: str) -> None:
    try:
        validate_segment(text)
    except UnsafeKeyError:
        return
    assert "/" not in text and "\\" not in text and "\x00" not in text
    assert text.strip(".") != ""
    assert text.isascii() and text.isprintable() and " " not in text


@given(st.text(max_size=60))
def test_run_keys_hostile_tenant(text: str) -> None:
    try:
        keys = run_keys("sr", text, "ns", RUN)
    except UnsafeKeyError:
        return
    assert keys.root.split("/")[2] == text
    assert keys.root.count("/") == 6


# ----------------------------------------------------------------------- S3 URIs
@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("s3://sr-dev", "sr-dev", ""),
        ("s3://sr-dev/", "sr-dev", ""),
        ("s3://sr-dev/evidence/t1", "sr-dev", "evidence/t1"),
        ("s3://sr-dev/evidence/t1/", "sr-dev", "evidence/t1"),
        ("s3://a.b-c/x", "a.b-c", "x"),
    ],
)
def test_parse_s3_uri(uri: str, bucket: str, prefix: str) -> None:
    loc = parse_s3_uri(uri)
    assert (loc.bucket, loc.prefix) == (bucket, prefix)
    assert parse_s3_uri(loc.uri) == loc


@pytest.mark.parametrize(
    "uri",
    [
        "S3://bucket/x",
        "s3:/bucket/x",
        "http://bucket/x",
        "s3://bu/x",
        "s3://Bucket/x",
        "s3://" + "a" * 64,
        "s3://-bucket/x",
        "s3://bucket-/x",
        "s3://a..b/x",
        "s3://a.-b/x",
        "s3://192.168.1.1/x",
        "s3://xn--abc/x",
        "s3://abc-s3alias/x",
        "s3://bucket//x",
        "s3://bucket//",
        "s3://bucket/x//",
        "s3://bucket/../x",
        "s3://bucket/x/..",
        "s3://bucket/x?y=1",
        "s3://bucket/x#y",
        "s3://bucket/x y",
        "s3://bucket/x\x00",
        "s3://bucket/x\\y",
        "s3://user@bucket/x",
        "s3://bucket:9000/x",
        " s3://bucket/x",
        "s3://bucket/x\n",
        "",
    ],
)
def test_parse_s3_uri_rejects(uri: str) -> None:
    with pytest.raises(UnsafeKeyError):
        parse_s3_uri(uri)


def test_bucket_rules() -> None:
    assert validate_bucket("abc") == "abc"
    assert validate_bucket("a" * 63) == "a" * 63
    for bad in ["ab", "a" * 64, "ABC", "a_b", "sthree-x"]:
        with pytest.raises(UnsafeKeyError):
            validate_bucket(bad)


def test_is_within_is_segment_wise() -> None:
    t1 = parse_s3_uri("s3://sr-dev/evidence/t1")
    assert parse_s3_uri("s3://sr-dev/evidence/t1/run").is_within(t1)
    assert parse_s3_uri("s3://sr-dev/evidence/t1/").is_within(t1)
    assert not parse_s3_uri("s3://sr-dev/evidence/t10").is_within(t1)
    assert not parse_s3_uri("s3://sr-dev/evidence/t10/x").is_within(t1)
    assert not parse_s3_uri("s3://sr-other/evidence/t1/x").is_within(t1)
    assert not parse_s3_uri("s3://sr-dev/evidence").is_within(t1)
    assert parse_s3_uri("s3://sr-dev/anything").is_within(parse_s3_uri("s3://sr-dev"))


def test_join_and_relative_to() -> None:
    root = parse_s3_uri("s3://sr-dev/evidence/t1")
    joined = root.join("gates/6B", "_passed.flag")
    assert joined.uri == "s3://sr-dev/evidence/t1/gates/6B/_passed.flag"
    assert joined.relative_to(root) == "gates/6B/_passed.flag"
    assert str(joined) == joined.uri
    for bad in ["../x", "/x", "x/", "", "a//b"]:
        with pytest.raises(UnsafeKeyError):
            root.join(bad)
    with pytest.raises(UnsafeKeyError):
        root.relative_to(parse_s3_uri("s3://sr-dev/other"))


def test_location_constructor_validates() -> None:
    with pytest.raises(UnsafeKeyError):
        S3Location("sr-dev", "../x")
    with pytest.raises(UnsafeKeyError):
        S3Location("x", "a")


@given(base=st.lists(safe_segment, max_size=3), extra=st.lists(safe_segment, min_size=1, max_size=3))
def test_join_stays_within(base: list[str], extra: list[str]) -> None:
    root = S3Location("sr-dev", "/".join(base))
    child = root.join(*extra)
    assert child.is_within(root)
    assert not root.is_within(child)
    assert child.relative_to(root) == "/".join(extra)


@given(st.text(max_size=30), st.text(max_size=30))
def test_hostile_join_never_escapes(a: str, b: str) -> None:
    root = S3Location("sr-dev", "evidence/t1")
    try:
        child = root.join(a, b)
    except UnsafeKeyError:
        return
    assert child.is_within(root)
    assert ".." not in child.segments
