"""Avro codec for SR's Kafka values (contract §2).

Two framings:

* **single-object encoding** (default): ``0xC3 0x01`` + 8-byte little-endian CRC-64-AVRO
  fingerprint of the schema's Parsing Canonical Form + Avro binary body. A message names its
  own schema; no registry needed.
* **Confluent wire format** (when a :class:`SchemaRegistry` is given): ``0x00`` + 4-byte
  big-endian schema id + body. Subjects follow TopicNameStrategy (``<topic>-value``), so
  :meth:`AvroCodec.encode` takes the subject from the caller. With a registry configured,
  single-object frames are still *decoded* (useful while migrating).

Decoding is strict and total: oversize input is refused before parsing, and every malformed
frame or body becomes a typed :mod:`worker.errors` exception — no fastavro, struct or
Unicode exception escapes. After the datum is read the whole body must have been consumed.

Timestamps travel as ``long`` with ``logicalType: timestamp-millis``; the codec reads and
writes them as plain epoch-millis ``int`` (the models convert), because logical types are
not part of the Parsing Canonical Form and the dict shape then matches ``to_avro()`` exactly.
"""

from __future__ import annotations

from worker.adapters.avro.codec import (
    CONFLUENT_MAGIC,
    DEFAULT_MAX_MESSAGE_BYTES,
    RECORD_NAMES,
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    default_schema_dir,
)
from worker.adapters.avro.registry import HttpSchemaRegistry, SchemaRegistry

__all__ = [
    "CONFLUENT_MAGIC",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "RECORD_NAMES",
    "SINGLE_OBJECT_MAGIC",
    "AvroCodec",
    "HttpSchemaRegistry",
    "SchemaRegistry",
    "default_schema_dir",
]
