"""Parsing Canonical Forms of a schema as the spec and the mainstream Avro libraries compute them.

Single-object encoding names a message's schema by the CRC-64-AVRO fingerprint of the schema's
*Parsing Canonical Form* (PCF). The spec strips every attribute that does not affect parsing,
``logicalType`` included, so ``{"type": "long", "logicalType": "timestamp-millis"}`` becomes
``"long"``. Libraries disagree on that one rule, and one disagrees on namespaces, so the same
schema has several fingerprints in the wild (contract §2). Each variant is one combination of:

* **logical types** — ``strip`` (spec: the simple form ``"long"``), ``wrap`` (the attribute is
  dropped but the object kept: ``{"type":"long"}``) or ``keep`` (``{"type":"long",
  "logicalType":"timestamp-millis"}``, decimal precision and scale kept too);
* **namespaces** — whether a nested named type without a ``namespace`` of its own inherits
  the enclosing one (spec) or keeps its short name.

:data:`VARIANTS` lists the combinations known to be produced, with the libraries that produce
them. Nothing here is hard-coded per schema: every form is computed from the schema document.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = ["PRIMITIVES", "VARIANTS", "CanonicalVariant", "crc64_avro", "parsing_canonical_form"]

LogicalRule = Literal["strip", "wrap", "keep"]

PRIMITIVES: Final = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED: Final = frozenset({"record", "error", "enum", "fixed"})
# [ORDER] of the spec; logical-type attributes (kept by the ``keep`` rule only) come last.
_ORDER: Final = ("name", "type", "fields", "symbols", "items", "values", "size")
_LOGICAL_ATTRS: Final = ("logicalType", "precision", "scale")


@dataclass(frozen=True)
class CanonicalVariant:
    """One way of computing a schema's canonical form, and who computes it that way."""

    name: str
    logical: LogicalRule
    inherit_namespace: bool
    produced_by: str


#: The canonical-form variants SR recognises. The first is the spec's, the one SR writes.
VARIANTS: Final = (
    CanonicalVariant("spec", "strip", True, "the Avro specification, Java, fastavro, C#, current apache-avro (Rust)"),
    CanonicalVariant("logical-wrapped", "wrap", True, "the official Python `avro` package (1.10-1.12)"),
    CanonicalVariant("logical-kept", "keep", True, "hamba/avro (Go); apache-avro (Rust) before AVRO-4004"),
    CanonicalVariant("goavro", "wrap", False, "linkedin/goavro (nested names not qualified, goavro#174)"),
)


def parsing_canonical_form(schema: Any, *, logical: LogicalRule = "strip", inherit_namespace: bool = True) -> str:
    """The canonical form of a parsed JSON schema document under one variant's rules.

    ``logical="strip", inherit_namespace=True`` is the spec's Parsing Canonical Form.

    Raises:
        ValueError: the document is not shaped like an Avro schema (a value that is not a
            string, list or object where a schema is expected, a field without a name...).
    """
    return _form(schema, "", logical, inherit_namespace)


def _fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _form(node: Any, namespace: str, logical: LogicalRule, inherit: bool) -> str:
    if isinstance(node, str):
        # A primitive, or a reference to a named type defined earlier ([FULLNAMES]).
        if node in PRIMITIVES or not inherit:
            return json.dumps(node)
        return json.dumps(_fullname(node, namespace))
    if isinstance(node, list):
        return "[" + ",".join(_form(branch, namespace, logical, inherit) for branch in node) + "]"
    if not isinstance(node, Mapping):
        # ValueError like every other malformation: callers catch one type for "bad document".
        raise ValueError(f"not an Avro schema node: {type(node).__name__}")  # noqa: TRY004
    kind = node.get("type")
    if not isinstance(kind, str):
        # {"type": <schema>} wraps another schema; only its type matters for parsing.
        if "type" not in node:
            raise ValueError("a schema object without 'type'")
        return _form(kind, namespace, logical, inherit)
    if kind in PRIMITIVES:
        return _primitive(node, kind, logical)
    return _complex(node, kind, namespace, logical, inherit)


def _primitive(node: Mapping[str, Any], kind: str, logical: LogicalRule) -> str:
    extra = [k for k in node if k != "type"]
    if logical == "strip" or not extra:
        return json.dumps(kind)
    parts = [f'"type":{json.dumps(kind)}']
    if logical == "keep":
        parts += [f"{json.dumps(k)}:{json.dumps(node[k])}" for k in _LOGICAL_ATTRS if k in node]
    return "{" + ",".join(parts) + "}"


def _complex(node: Mapping[str, Any], kind: str, namespace: str, logical: LogicalRule, inherit: bool) -> str:
    inner_namespace = namespace
    parts: dict[str, str] = {}
    if kind in _NAMED:
        name = node.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {kind} without a name")
        own = node.get("namespace")
        scope = own if isinstance(own, str) else (namespace if inherit else "")
        full = _fullname(name, scope)
        parts["name"] = json.dumps(full)
        inner_namespace = full.rpartition(".")[0]
    parts["type"] = json.dumps(kind)
    if kind in ("record", "error"):
        fields = node.get("fields")
        if not isinstance(fields, list):
            raise ValueError(f"record {parts.get('name')} has no field list")
        parts["fields"] = "[" + ",".join(_field(f, inner_namespace, logical, inherit) for f in fields) + "]"
    if kind == "enum":
        parts["symbols"] = json.dumps(list(node.get("symbols", [])), separators=(",", ":"))
    if kind == "array":
        parts["items"] = _form(node.get("items"), inner_namespace, logical, inherit)
    if kind == "map":
        parts["values"] = _form(node.get("values"), inner_namespace, logical, inherit)
    if kind == "fixed":
        parts["size"] = str(int(node.get("size", 0)))
    body = [f'"{key}":{parts[key]}' for key in _ORDER if key in parts]
    if logical == "keep":
        body += [f"{json.dumps(k)}:{json.dumps(node[k])}" for k in _LOGICAL_ATTRS if k in node]
    return "{" + ",".join(body) + "}"


def _field(field: Any, namespace: str, logical: LogicalRule, inherit: bool) -> str:
    if not isinstance(field, Mapping) or not isinstance(field.get("name"), str) or "type" not in field:
        raise ValueError("a record field must be an object with a name and a type")
    return f'{{"name":{json.dumps(field["name"])},"type":{_form(field["type"], namespace, logical, inherit)}}}'


# CRC-64-AVRO (the Rabin fingerprint of the spec), table built once.
_EMPTY: Final = 0xC15D213AA4D7A795


def _table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return tuple(table)


_TABLE: Final = _table()


def crc64_avro(text: str) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint of ``text`` (UTF-8), little-endian as on the wire."""
    fp = _EMPTY
    for byte in text.encode("utf-8"):
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")
