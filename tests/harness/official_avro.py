"""Single-object frames made and read by the official Apache Avro library for Python (``avro``),
the way an upstream or downstream team that never saw SR's code would do it: the library's own
schema parser, its own ``fingerprint()`` (which keeps ``{"type":"long"}`` for logical types, so
it differs from the spec's) and its own ``DatumWriter`` / ``DatumReader``."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import avro.io
import avro.schema

from worker.adapters.avro import SINGLE_OBJECT_MAGIC, default_schema_dir

__all__ = ["avro_decode", "avro_encode", "avro_schema", "spec_fingerprint_with_avro", "with_datetimes"]

#: Fields of SR's records that are ``timestamp-millis`` (the avro library wants datetimes there).
_TIMESTAMPS = ("window_start", "window_end", "deadline", "submitted_at", "requested_at", "emitted_at",
               "attempt_deadline", "finished_at")


def avro_schema(record: str, path: Path | None = None) -> avro.schema.RecordSchema:
    """The official library's parse of ``schemas/<record>.avsc`` (or of ``path``)."""
    text = (path or default_schema_dir() / f"{record}.avsc").read_text(encoding="utf-8")
    parsed = avro.schema.parse(text)
    if not isinstance(parsed, avro.schema.RecordSchema):
        raise TypeError(f"{record} is not a record schema")
    return parsed


def with_datetimes(datum: dict[str, Any]) -> dict[str, Any]:
    """``datum`` (SR's ``to_avro()`` shape, epoch millis) with timestamps as aware datetimes."""
    out = dict(datum)
    for name in _TIMESTAMPS:
        if isinstance(out.get(name), int):
            out[name] = datetime.fromtimestamp(out[name] / 1000, tz=UTC)
    return out


def avro_encode(schema: avro.schema.RecordSchema, datum: dict[str, Any]) -> bytes:
    """A single-object frame: magic, the library's own CRC-64-AVRO fingerprint, the library's body."""
    buffer = io.BytesIO()
    avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(buffer))
    return SINGLE_OBJECT_MAGIC + schema.fingerprint("CRC-64-AVRO") + buffer.getvalue()


def avro_decode(schema: avro.schema.RecordSchema, frame: bytes, accepted: set[bytes]) -> dict[str, Any]:
    """Decode an SR frame with the library, after checking its fingerprint is one of ``accepted``
    (what a consumer takes from SR's published fingerprint table)."""
    if frame[:2] != SINGLE_OBJECT_MAGIC or frame[2:10] not in accepted:
        raise ValueError(f"not a frame of this schema: {frame[:10].hex()}")
    datum = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(frame[10:])))
    if not isinstance(datum, dict):
        raise TypeError("not a record")
    return datum


def spec_fingerprint_with_avro(record: str) -> bytes:
    """The recipe in docs/consumers.md: the spec fingerprint computed with the ``avro`` package
    alone, by fingerprinting the schema with its ``logicalType`` attributes removed."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "logicalType"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node
    doc = json.loads((default_schema_dir() / f"{record}.avsc").read_text(encoding="utf-8"))
    return avro.schema.parse(json.dumps(strip(doc))).fingerprint("CRC-64-AVRO")
