"""Canonical JSON, hashing and strict JSON parsing.

Everything SR hashes (equivalence keys, fingerprints, plans, facts views, ledger entries)
goes through :func:`canonical_json`, and everything SR reads back from object storage goes
through :func:`parse_json_strict`. Both are deliberately narrower than JSON itself:

* only ``null``, booleans, integers, strings, arrays and objects — **no floats**. SR's data
  has no fractional numbers, and excluding them removes the one part of RFC 8785 (number
  serialisation) where implementations disagree, so the bytes stay deterministic;
* object keys are sorted by Unicode code point (identical to RFC 8785's UTF-16 order for
  the BMP, which covers every identifier SR accepts);
* no insignificant whitespace, UTF-8 output, non-ASCII characters unescaped.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Final

from worker.errors import CanonicalJSONError, InvalidJSONError, MessageTooLargeError

__all__ = ["MAX_CANONICAL_DEPTH", "canonical_json", "parse_json_strict", "sha256_hex"]

#: Nesting limit for :func:`canonical_json`; also stops reference cycles cold.
MAX_CANONICAL_DEPTH: Final = 128


def sha256_hex(data: bytes) -> str:
    """Return the lowercase hex SHA-256 digest of ``data``.

    Raises:
        TypeError: ``data`` is not bytes-like (a caller bug).
    """
    return hashlib.sha256(data).hexdigest()


def _normalise(value: object, depth: int) -> object:
    """Return a plain-JSON copy of ``value`` or raise :class:`CanonicalJSONError`."""
    if depth > MAX_CANONICAL_DEPTH:
        raise CanonicalJSONError(f"value nests deeper than {MAX_CANONICAL_DEPTH} levels (or is cyclic)")
    # Enum first: a str-mixin enum is a str, but json would serialise it by its repr in
    # some paths; its value is the only stable representation.
    if isinstance(value, Enum):
        return _normalise(value.value, depth)
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        raise CanonicalJSONError(f"floats are not allowed in canonical JSON (got {value!r}); use integers or strings")
    if isinstance(value, list | tuple):
        return [_normalise(item, depth + 1) for item in value]
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJSONError(f"object keys must be strings, got {type(key).__name__}")
            out[key] = _normalise(item, depth + 1)
        return out
    raise CanonicalJSONError(f"type {type(value).__name__} cannot be represented as canonical JSON")


def canonical_json(value: object) -> bytes:
    """Serialise plain data to canonical JSON bytes (RFC 8785 style, integers only).

    Accepts ``None``, ``bool``, ``int``, ``str``, ``list``/``tuple`` (as arrays), ``dict``
    with ``str`` keys, and ``Enum`` members (as their value).

    Raises:
        CanonicalJSONError: a float, NaN/Infinity, non-string key, unsupported type, a lone
            surrogate that cannot be UTF-8 encoded, or nesting deeper than
            :data:`MAX_CANONICAL_DEPTH`.
    """
    plain = _normalise(value, 0)
    try:
        text = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError) as exc:
        raise CanonicalJSONError(f"value cannot be encoded as canonical JSON: {exc}") from exc


# --------------------------------------------------------------------------- strict parsing
def _reject_constant(name: str) -> object:
    raise InvalidJSONError(f"non-finite number literal {name!r} is not allowed")


def _reject_float(text: str) -> object:
    raise InvalidJSONError(f"fractional/exponent numbers are not allowed (got {text[:40]!r})")


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError as exc:  # Python's int-string digit limit on absurdly long literals
        raise InvalidJSONError(f"integer literal too long ({len(text)} digits)") from exc


def _object_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidJSONError(f"duplicate object key {key[:64]!r}")
        out[key] = value
    return out


def _check_tree(root: object, max_depth: int) -> None:
    """Iteratively enforce the depth limit and that every string is valid UTF-8.

    ``json`` happily decodes ``"\\ud800"`` escapes into lone surrogates, which cannot be
    re-encoded; rejecting them here keeps every parsed value canonicalisable.
    """
    stack: list[tuple[object, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_text(node)
            continue
        if isinstance(node, dict | list):
            if depth > max_depth:
                raise InvalidJSONError(f"JSON nests deeper than {max_depth} levels")
            if isinstance(node, dict):
                for key, item in node.items():
                    _check_text(key)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in node)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidJSONError("JSON string contains an unpaired surrogate escape") from exc


def parse_json_strict(data: bytes, *, max_bytes: int, max_depth: int = 64) -> object:
    """Parse untrusted JSON bytes strictly.

    Rules: at most ``max_bytes`` bytes; valid UTF-8 without BOM; standard JSON syntax;
    no NaN/Infinity literals; no floats (see module docstring); no duplicate object keys;
    arrays/objects nested at most ``max_depth`` levels; no unpaired surrogate escapes.

    Raises:
        MessageTooLargeError: ``len(data) > max_bytes`` (checked before any parsing).
        InvalidJSONError: any other violation. No raw ``json``/``UnicodeDecodeError``/
            ``RecursionError`` ever escapes.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidJSONError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise MessageTooLargeError(f"JSON document is {len(data)} bytes, cap is {max_bytes}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSONError(f"JSON is not valid UTF-8 at byte {exc.start}") from exc
    try:
        value: object = json.loads(
            text,
            object_pairs_hook=_object_pairs,
            parse_constant=_reject_constant,
            parse_float=_reject_float,
            parse_int=_parse_int,
        )
    except InvalidJSONError:
        raise
    except json.JSONDecodeError as exc:
        raise InvalidJSONError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise InvalidJSONError(f"JSON nests deeper than {max_depth} levels") from exc
    _check_tree(value, max_depth)
    return value
