"""canonical_json / sha256_hex / parse_json_strict."""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.canonical import canonical_json, parse_json_strict, sha256_hex
from worker.errors import CanonicalJSONError, InputError, InvalidJSONError, MessageTooLargeError

json_scalars = st.none() | st.booleans() | st.integers() | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


class Colour(Enum):
    RED = "red"


def test_sorted_keys_no_whitespace() -> None:
    assert canonical_json({"b": 1, "a": [True, None, "x"]}) == b'{"a":[true,null,"x"],"b":1}'


def test_unicode_is_utf8_not_escaped() -> None:
    assert canonical_json({"k": "é€😀"}) == '{"k":"é€😀"}'.encode()


def test_control_chars_escaped_lowercase() -> None:
    assert canonical_json('\x01\n"\\') == b'"\\u0001\\n\\"\\\\"'


def test_keys_sorted_by_code_point() -> None:
    assert canonical_json({"b": 0, "B": 0, "a": 0, "é": 0, "_": 0}) == '{"B":0,"_":0,"a":0,"b":0,"é":0}'.encode()


def test_tuples_are_arrays_and_bools_stay_bools() -> None:
    assert canonical_json((1, True, False, 0)) == b"[1,true,false,0]"


def test_enum_becomes_value() -> None:
    assert canonical_json({"c": Colour.RED}) == b'{"c":"red"}'


def test_big_ints_exact() -> None:
    assert canonical_json(2**70) == str(2**70).encode()
    assert canonical_json(-(2**63)) == b"-9223372036854775808"


@pytest.mark.parametrize(
    "bad", [1.0, float("nan"), float("inf"), {"a": [0.5]}, {1: "x"}, {("a",): 1}, b"x", {1, 2}, object()]
)
def test_rejects_unsupported(bad: Any) -> None:
    with pytest.raises(CanonicalJSONError):
        canonical_json(bad)


def test_rejects_lone_surrogate() -> None:
    with pytest.raises(CanonicalJSONError):
        canonical_json("\ud800")


def test_rejects_cycles_and_deep_nesting() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(CanonicalJSONError):
        canonical_json(cyclic)
    deep: Any = 0
    for _ in range(500):
        deep = [deep]
    with pytest.raises(CanonicalJSONError):
        canonical_json(deep)


def test_sha256_hex() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@given(json_values)
def test_roundtrip_through_strict_parser(value: Any) -> None:
    encoded = canonical_json(value)
    parsed = parse_json_strict(encoded, max_bytes=10**7)
    assert canonical_json(parsed) == encoded
    # Agrees with the stdlib on content.
    assert json.loads(encoded) == parsed


@given(st.dictionaries(st.text(max_size=5), st.integers(), max_size=8))
def test_key_order_independent(d: dict[str, int]) -> None:
    reversed_d = dict(reversed(list(d.items())))
    assert canonical_json(d) == canonical_json(reversed_d)


# ----------------------------------------------------------------------- strict parsing
def test_parse_ok() -> None:
    assert parse_json_strict(b' {"a": [1, "x", null, true]} ', max_bytes=100) == {"a": [1, "x", None, True]}


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": NaN}',
        b"[Infinity]",
        b"[-Infinity]",
        b"[1.5]",
        b"[1e3]",
        b'{"a": 1, "a": 2}',
        b"\xff\xfe",
        b'"\xc3"',
        b"\xef\xbb\xbf{}",
        b"{",
        b"",
        b"[1,]",
        b"{'a': 1}",
        b'"\\ud800"',
        b'{"\\udc00": 1}',
        b"[1] [2]",
        b"1" * 5000,
    ],
)
def test_parse_rejects(data: bytes) -> None:
    with pytest.raises(InvalidJSONError):
        parse_json_strict(data, max_bytes=10**6)


def test_parse_oversize_before_parsing() -> None:
    with pytest.raises(MessageTooLargeError):
        parse_json_strict(b"[" * 2000, max_bytes=100)


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_parse_depth_limit(depth: int) -> None:
    with pytest.raises(InvalidJSONError):
        parse_json_strict(b"[" * depth + b"]" * depth, max_bytes=10**7)
    with pytest.raises(InvalidJSONError):
        parse_json_strict(b'{"a":' * depth + b"1" + b"}" * depth, max_bytes=10**7)


def test_parse_depth_at_limit_ok() -> None:
    assert parse_json_strict(b"[" * 64 + b"]" * 64, max_bytes=1000) is not None
    with pytest.raises(InvalidJSONError):
        parse_json_strict(b"[[[]]]", max_bytes=1000, max_depth=2)


def test_parse_rejects_non_bytes() -> None:
    with pytest.raises(InvalidJSONError):
        parse_json_strict("{}", max_bytes=10)  # type: ignore[arg-type]


@given(st.binary(max_size=200))
def test_parse_random_bytes_never_raw_exception(data: bytes) -> None:
    try:
        parse_json_strict(data, max_bytes=150)
    except InputError:
        pass
