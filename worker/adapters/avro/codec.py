"""Avro codec for SR's Kafka values (contract §2).

Two framings:

* **single-object encoding** (default): ``0xC3 0x01`` + 8-byte little-endian CRC-64-AVRO
  fingerprint of the schema's Parsing Canonical Form + Avro binary body. A message names its
  own schema; no registry needed.
* **Confluent wire format** (when a :class:`SchemaRegistry` is given): ``0x00`` + 4-byte
  big-endian schema id + body. Subjects follow TopicNameStrategy (``<topic>-value``), so
  :meth:`AvroCodec.encode` takes the subject from the caller. With a registry configured,
  single-object frames are still *decoded* (useful while migrating).

What a single-object frame may name (contract §2): every version of each record — the current
schema in ``schemas/`` and the earlier ones in ``schemas/history/<Record>.v<N>.avsc``, resolved
into the current schema by Avro schema resolution — in every known canonical-form variant
(:mod:`.canonical_forms`: the official Python ``avro`` package, goavro and hamba/avro
fingerprint the same schema differently). All variants are computed from the schemas at
start-up. The encoder always writes the current schema with the spec's fingerprint.

Decoding is strict and total: oversize input is refused before parsing, and every malformed
frame or body becomes a typed :mod:`worker.errors` exception — no fastavro, struct or
Unicode exception escapes. After the datum is read the whole body must have been consumed.

Timestamps travel as ``long`` with ``logicalType: timestamp-millis``; the codec reads and
writes them as plain epoch-millis ``int`` (the models convert), because logical types are
not part of the Parsing Canonical Form and the dict shape then matches ``to_avro()`` exactly.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import fastavro
import fastavro.schema
import fastavro.validation

from worker.adapters.avro.canonical_forms import VARIANTS, crc64_avro, parsing_canonical_form
from worker.adapters.avro.registry import SchemaRegistry
from worker.core.engine import EngineRequest, EngineResult
from worker.core.models import ReadyEvent, RunIntent, RunStatusEvent, RunTrigger
from worker.errors import (
    ConfigError,
    DecodeError,
    EncodeError,
    MessageTooLargeError,
    UnknownSchemaError,
)

__all__ = [
    "CONFLUENT_MAGIC",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "HISTORY_DIR",
    "RECORD_NAMES",
    "SINGLE_OBJECT_MAGIC",
    "AvroCodec",
    "SchemaFingerprint",
    "SchemaRegistry",
    "default_schema_dir",
]

SINGLE_OBJECT_MAGIC: Final = b"\xc3\x01"
CONFLUENT_MAGIC: Final = b"\x00"
RECORD_NAMES: Final = ("RunIntent", "RunTrigger", "ReadyEvent", "RunStatusEvent", "EngineRequest", "EngineResult")
DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_576
#: Sub-directory of the schema directory holding earlier versions, ``<Record>.v<N>.avsc``.
HISTORY_DIR: Final = "history"
_SO_HEADER: Final = len(SINGLE_OBJECT_MAGIC) + 8
_CONFLUENT_HEADER: Final = 5


def default_schema_dir() -> Path:
    """The ``schemas/`` directory shipped with the package (``worker/schemas``)."""
    return Path(__file__).resolve().parents[2] / "schemas"


# --------------------------------------------------------------------------- codec
def _strip_logical_types(node: Any) -> Any:
    """Copy of a schema without ``logicalType`` attributes (read/write timestamps as ints)."""
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


@dataclass(frozen=True)
class _Schema:
    name: str  # short record name, e.g. "RunIntent"
    fullname: str  # e.g. "sr.v1.RunIntent"
    version: int  # 1-based; the file in schemas/ is the highest
    json_text: str  # full schema (with docs and logical types) as registered
    parsed: Any  # fastavro-parsed schema without logical types
    pcf: str  # Parsing Canonical Form
    fingerprint: bytes  # CRC-64-AVRO of the spec PCF, little-endian, as in single-object encoding
    variants: tuple[tuple[str, bytes], ...]  # (variant name, fingerprint) for every known variant


@dataclass(frozen=True)
class SchemaFingerprint:
    """One fingerprint SR recognises: ``record`` version ``version`` in canonical-form ``variant``
    (see :data:`worker.adapters.avro.canonical_forms.VARIANTS`); ``hex`` as on the wire."""

    record: str
    version: int
    current: bool
    variant: str
    hex: str


def _fullname(schema: Mapping[str, Any]) -> str:
    name = str(schema.get("name", ""))
    namespace = schema.get("namespace")
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _compile(schema_doc: Any) -> tuple[Any, str]:
    """Parse a schema document; return (parsed, parsing canonical form)."""
    parsed = fastavro.parse_schema(_strip_logical_types(schema_doc))
    return parsed, fastavro.schema.to_parsing_canonical_form(schema_doc)


def _variants(doc: Any) -> tuple[tuple[str, bytes], ...]:
    return tuple(
        (v.name, crc64_avro(parsing_canonical_form(doc, logical=v.logical, inherit_namespace=v.inherit_namespace)))
        for v in VARIANTS)


def _load_schema(path: Path, name: str, version: int) -> _Schema:
    try:
        text = path.read_text(encoding="utf-8")
        doc = json.loads(text)
        parsed, pcf = _compile(doc)
        variants = _variants(doc)
    except (OSError, ValueError, fastavro.schema.SchemaParseException, fastavro.schema.UnknownType) as exc:
        raise ConfigError(f"cannot load Avro schema {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("type") != "record" or doc.get("name") != name:
        raise ConfigError(f"Avro schema {path} must define record {name!r}")
    compact = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    # The fingerprint SR writes is the spec variant's: one source for writing and for the
    # decode index (tests check it equals fastavro's for every schema file).
    fingerprint = dict(variants)["spec"]
    return _Schema(name, _fullname(doc), version, compact, parsed, pcf, fingerprint, variants)


def _history_paths(directory: Path, name: str) -> list[Path]:
    """``history/<name>.v<N>.avsc`` files, oldest first; versions must run 1, 2, ... without gaps."""
    found: dict[int, Path] = {}
    history = directory / HISTORY_DIR
    for path in history.glob(f"{name}.v*.avsc") if history.is_dir() else ():
        number = path.name[len(name) + 2:-len(".avsc")]
        if not (number.isascii() and number.isdigit()) or int(number) < 1:
            raise ConfigError(f"schema history file {path} must be named {name}.v<N>.avsc (N >= 1)")
        found[int(number)] = path
    if sorted(found) != list(range(1, len(found) + 1)):
        raise ConfigError(f"schema history of {name} in {history} must be versions 1..N, found {sorted(found)}")
    return [found[n] for n in sorted(found)]


def _load_versions(directory: Path, name: str) -> tuple[_Schema, ...]:
    """Every version of record ``name``, oldest first; the last is the current schema."""
    older = [_load_schema(path, name, n) for n, path in enumerate(_history_paths(directory, name), start=1)]
    current = _load_schema(directory / f"{name}.avsc", name, len(older) + 1)
    for old in older:
        if old.fullname != current.fullname:
            raise ConfigError(f"schema history of {name}: version {old.version} is {old.fullname}, "
                              f"the current schema is {current.fullname}")
        if old.pcf == current.pcf:
            raise ConfigError(f"schema history of {name}: version {old.version} parses like the current schema")
    return (*older, current)


def _index_fingerprints(versions: list[_Schema]) -> dict[bytes, _Schema]:
    """Every known fingerprint of every version -> that version; a fingerprint two different
    schemas share would make decoding ambiguous, so it is refused at start-up."""
    index: dict[bytes, _Schema] = {}
    for schema in versions:
        for variant, fingerprint in schema.variants:  # includes "spec", the one SR writes
            other = index.setdefault(fingerprint, schema)
            if other is not schema and other.pcf != schema.pcf:
                raise ConfigError(f"fingerprint {fingerprint.hex()} ({variant}) of {schema.name} v{schema.version} "
                                  f"is also that of {other.name} v{other.version}")
    return index


class AvroCodec:
    """Encode/decode SR's record types (:data:`RECORD_NAMES`) with strict, typed error handling.

    Thread-safe for concurrent use (caches are only ever added to).
    """

    def __init__(
        self,
        schema_dir: Path | None = None,
        *,
        registry: SchemaRegistry | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        """Load the ``.avsc`` files of :data:`RECORD_NAMES` from ``schema_dir``.

        Raises:
            ConfigError: a schema file is missing or invalid, or ``max_message_bytes`` < 16.
        """
        if max_message_bytes < 16:
            raise ConfigError("max_message_bytes must be at least 16")
        directory = schema_dir if schema_dir is not None else default_schema_dir()
        self._versions = {name: _load_versions(directory, name) for name in RECORD_NAMES}
        self._schemas = {name: versions[-1] for name, versions in self._versions.items()}
        self._by_fingerprint = _index_fingerprints([s for vs in self._versions.values() for s in vs])
        self._by_fullname = {s.fullname: s for s in self._schemas.values()}
        self._registry = registry
        self._max = max_message_bytes
        self._registered: dict[tuple[str, str], int] = {}
        # id -> (writer schema parsed, writer PCF, local reader schema)
        self._writers: dict[int, tuple[Any, str, _Schema]] = {}

    @property
    def max_message_bytes(self) -> int:
        """Largest frame :meth:`decode` accepts and :meth:`encode` produces."""
        return self._max

    def fingerprint(self, record: str) -> bytes:
        """The 8-byte CRC-64-AVRO fingerprint of a record's schema.

        Raises:
            EncodeError: unknown record name.
        """
        return self._schema(record).fingerprint

    def fingerprints(self) -> list[SchemaFingerprint]:
        """Every single-object fingerprint :meth:`decode` accepts: each version of each record
        in each known canonical-form variant (duplicates of one version folded), current first."""
        rows: list[SchemaFingerprint] = []
        for name in RECORD_NAMES:
            for schema in reversed(self._versions[name]):
                seen: set[bytes] = set()
                for variant, fingerprint in schema.variants:
                    if fingerprint not in seen:
                        seen.add(fingerprint)
                        rows.append(SchemaFingerprint(name, schema.version, schema is self._schemas[name],
                                                      variant, fingerprint.hex()))
        return rows

    def schema_json(self, record: str) -> str:
        """The full schema JSON of a record (what gets registered with a registry).

        Raises:
            EncodeError: unknown record name.
        """
        return self._schema(record).json_text

    def _schema(self, record: str) -> _Schema:
        schema = self._schemas.get(record)
        if schema is None:
            raise EncodeError(f"unknown record {record!r}; expected one of {RECORD_NAMES}")
        return schema

    # ------------------------------------------------------------------ encode
    def encode(self, record: str, datum: Mapping[str, Any], *, subject: str | None = None) -> bytes:
        """Encode ``datum`` (the ``to_avro()`` dict shape) as record ``record``.

        Without a registry the frame is single-object encoding; with one it is the Confluent
        wire format and ``subject`` (``<topic>-value``) is required.

        Raises:
            EncodeError: unknown record or the datum does not conform to the schema.
            ConfigError: a registry is configured but no subject was given, or the schema is
                not registered under it and the registry may not register it.
            MessageTooLargeError: the frame would exceed ``max_message_bytes``.
            SchemaRegistryUnavailableError / SchemaRegistryRejectedError: the id could not be
                had (see :meth:`SchemaRegistry.schema_id_for`).
        """
        schema = self._schema(record)
        try:
            fastavro.validation.validate(dict(datum), schema.parsed, raise_errors=True)
            out = io.BytesIO()
            fastavro.schemaless_writer(out, schema.parsed, dict(datum))
        except Exception as exc:  # fastavro raises many types; all mean "bad datum"
            raise EncodeError(f"datum does not conform to {record}: {str(exc)[:500]}") from exc
        if self._registry is None:
            frame = SINGLE_OBJECT_MAGIC + schema.fingerprint + out.getvalue()
        else:
            if not subject:
                raise ConfigError("a schema registry is configured: encode() needs subject='<topic>-value'")
            schema_id = self._schema_id(subject, schema)
            frame = CONFLUENT_MAGIC + schema_id.to_bytes(4, "big") + out.getvalue()
        if len(frame) > self._max:
            raise MessageTooLargeError(f"{record} frame is {len(frame)} bytes, cap is {self._max}")
        return frame

    def preflight(self, subjects: Mapping[str, str]) -> None:
        """Resolve (and, if allowed, register) the registry id of each record SR will write.

        ``subjects`` maps a record name (``ReadyEvent``) to its subject (``sr.ready-value``).
        Without a registry this does nothing. A worker calls it before consuming, so wrong
        registry credentials or an unregistered schema stop it at start-up in one line,
        instead of failing every decision it would later publish.

        Raises:
            EncodeError: an unknown record name.
            ConfigError / SchemaRegistryRejectedError / SchemaRegistryUnavailableError: as
                :meth:`encode` with a registry.
        """
        if self._registry is None:
            return
        for record, subject in subjects.items():
            self._schema_id(subject, self._schema(record))

    def _schema_id(self, subject: str, schema: _Schema) -> int:
        key = (subject, schema.name)
        cached = self._registered.get(key)
        if cached is not None:
            return cached
        if self._registry is None:  # pragma: no cover - guarded by the caller
            raise ConfigError("no schema registry configured")
        schema_id = self._registry.schema_id_for(subject, schema.json_text)
        self._registered[key] = schema_id
        self._writers.setdefault(schema_id, (schema.parsed, schema.pcf, schema))
        return schema_id

    # ------------------------------------------------------------------ decode
    def decode(self, data: bytes, *, expected: str | None = None) -> tuple[str, dict[str, Any]]:
        """Decode a frame; return ``(record_name, datum)`` with timestamps as epoch millis.

        Raises:
            MessageTooLargeError: more than ``max_message_bytes`` (checked before parsing).
            UnknownSchemaError: unknown fingerprint or registry id (or Confluent framing
                without a registry).
            DecodeError: bad magic, truncated header or body, trailing bytes, garbage body, or
                a valid message of a record other than ``expected``.
            SchemaRegistryUnavailableError: the registry could not be asked about a new id.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        raw = bytes(data)
        if len(raw) > self._max:
            raise MessageTooLargeError(f"message is {len(raw)} bytes, cap is {self._max}")
        if expected is not None and expected not in self._schemas:
            raise DecodeError(f"unknown expected record {expected!r}")
        if raw[:2] == SINGLE_OBJECT_MAGIC:
            if len(raw) < _SO_HEADER:
                raise DecodeError("truncated single-object header")
            writer = self._by_fingerprint.get(raw[2:_SO_HEADER])
            if writer is None:
                raise UnknownSchemaError(f"unknown schema fingerprint {raw[2:_SO_HEADER].hex()}")
            self._check_expected(writer, expected)
            reader = self._schemas[writer.name]
            # An older version is resolved into the current schema (Avro schema resolution).
            datum = _read_strict(raw[_SO_HEADER:], writer.parsed, None if writer is reader else reader.parsed)
            return writer.name, datum
        if raw[:1] == CONFLUENT_MAGIC:
            if self._registry is None:
                raise UnknownSchemaError("Confluent-framed message but no schema registry is configured")
            if len(raw) < _CONFLUENT_HEADER:
                raise DecodeError("truncated Confluent header")
            writer, writer_pcf, local = self._writer_for_id(int.from_bytes(raw[1:5], "big"))
            self._check_expected(local, expected)
            body = raw[_CONFLUENT_HEADER:]
            datum = _read_strict(body, writer, None)
            if writer_pcf != local.pcf:
                # An evolved writer schema: resolve into our reader schema.
                datum = _read_strict(body, writer, local.parsed)
            return local.name, datum
        raise DecodeError(f"unknown framing magic {raw[:2].hex() or '<empty>'}")

    @staticmethod
    def _check_expected(schema: _Schema, expected: str | None) -> None:
        if expected is not None and schema.name != expected:
            raise DecodeError(f"expected a {expected} message, got {schema.name}")

    def _writer_for_id(self, schema_id: int) -> tuple[Any, str, _Schema]:
        cached = self._writers.get(schema_id)
        if cached is not None:
            return cached
        if self._registry is None:  # pragma: no cover - guarded by the caller
            raise UnknownSchemaError("no schema registry configured")
        text = self._registry.get_schema(schema_id)
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise UnknownSchemaError(f"registry schema id {schema_id} is not JSON") from exc
        local = self._by_fullname.get(_fullname(doc)) if isinstance(doc, dict) else None
        if local is None:
            raise UnknownSchemaError(f"registry schema id {schema_id} is not an SR record")
        try:
            parsed, pcf = _compile(doc)
        except Exception as exc:  # any fastavro failure: a broken registry schema must not crash the worker
            raise UnknownSchemaError(f"registry schema id {schema_id} is not a usable Avro schema") from exc
        entry = (parsed, pcf, local)
        self._writers[schema_id] = entry
        return entry

    # ------------------------------------------------------------------ typed helpers
    def encode_intent(self, intent: RunIntent, *, subject: str | None = None) -> bytes:
        """Encode a :class:`RunIntent` (see :meth:`encode` for Raises)."""
        return self.encode("RunIntent", intent.to_avro(), subject=subject)

    def decode_intent(self, data: bytes) -> RunIntent:
        """Decode and validate a RunIntent message.

        Raises:
            MessageTooLargeError, UnknownSchemaError, DecodeError: see :meth:`decode`.
            IntentInvalidError: the datum decodes but is not a valid intent.
        """
        _, datum = self.decode(data, expected="RunIntent")
        return RunIntent.from_avro(datum)

    def encode_trigger(self, trigger: RunTrigger, *, subject: str | None = None) -> bytes:
        """Encode a :class:`RunTrigger` (see :meth:`encode` for Raises)."""
        return self.encode("RunTrigger", trigger.to_avro(), subject=subject)

    def decode_trigger(self, data: bytes) -> RunTrigger:
        """Decode and validate a RunTrigger message.

        Raises:
            MessageTooLargeError, UnknownSchemaError, DecodeError: see :meth:`decode`.
            IntentInvalidError: the datum decodes but is not a valid trigger.
        """
        _, datum = self.decode(data, expected="RunTrigger")
        return RunTrigger.from_avro(datum)

    def encode_ready(self, event: ReadyEvent, *, subject: str | None = None) -> bytes:
        """Encode a :class:`ReadyEvent` (see :meth:`encode` for Raises)."""
        return self.encode("ReadyEvent", event.to_avro(), subject=subject)

    def decode_ready(self, data: bytes) -> ReadyEvent:
        """Decode and validate a ReadyEvent message.

        Raises:
            MessageTooLargeError, UnknownSchemaError, DecodeError: see :meth:`decode`
                (invalid content is a DecodeError too).
        """
        _, datum = self.decode(data, expected="ReadyEvent")
        return ReadyEvent.from_avro(datum)

    def encode_status(self, event: RunStatusEvent, *, subject: str | None = None) -> bytes:
        """Encode a :class:`RunStatusEvent` (see :meth:`encode` for Raises)."""
        return self.encode("RunStatusEvent", event.to_avro(), subject=subject)

    def decode_status(self, data: bytes) -> RunStatusEvent:
        """Decode and validate a RunStatusEvent message.

        Raises:
            MessageTooLargeError, UnknownSchemaError, DecodeError: see :meth:`decode`
                (invalid content is a DecodeError too).
        """
        _, datum = self.decode(data, expected="RunStatusEvent")
        return RunStatusEvent.from_avro(datum)

    def encode_engine_request(self, request: EngineRequest, *, subject: str | None = None) -> bytes:
        """Encode an :class:`EngineRequest` (see :meth:`encode` for Raises)."""
        return self.encode("EngineRequest", request.to_avro(), subject=subject)

    def decode_engine_request(self, data: bytes) -> EngineRequest:
        """Decode and validate an EngineRequest message (what an engine reads).

        Raises:
            MessageTooLargeError, UnknownSchemaError, DecodeError: see :meth:`decode`
                (invalid content is a DecodeError too).
        """
        _, datum = self.decode(data, expected="EngineRequest")
        return EngineRequest.from_avro(datum)

    def encode_engine_result(self, result: EngineResult, *, subject: str | None = None) -> bytes:
        """Encode an :class:`EngineResult` (see :meth:`encode` for Raises)."""
        return self.encode("EngineResult", result.to_avro(), subject=subject)

    def decode_engine_result(self, data: bytes) -> EngineResult:
        """Decode and validate an EngineResult message (what SR reads from the engine).

        Raises:
            MessageTooLargeError, UnknownSchemaError, DecodeError: see :meth:`decode`
                (invalid content is a DecodeError too).
        """
        _, datum = self.decode(data, expected="EngineResult")
        return EngineResult.from_avro(datum)


def _read_strict(body: bytes, writer: Any, reader: Any) -> dict[str, Any]:
    """Read one datum and require that it consumes ``body`` exactly."""
    buffer = io.BytesIO(body)
    try:
        datum = fastavro.schemaless_reader(buffer, writer, reader)
    except Exception as exc:  # fastavro/struct/Unicode/EOF errors all mean "garbage"
        raise DecodeError(f"Avro body does not decode: {type(exc).__name__}") from exc
    if buffer.tell() != len(body):
        raise DecodeError(f"{len(body) - buffer.tell()} trailing byte(s) after the Avro datum")
    if not isinstance(datum, dict):
        raise DecodeError("Avro datum is not a record")
    return datum
