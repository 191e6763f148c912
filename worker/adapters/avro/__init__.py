"""SR's Avro adapter: the codec (:mod:`.codec`, both framings, strict decoding) and the Confluent
Schema Registry behind it (:mod:`.registry`, on confluent-kafka's ``SchemaRegistryClient``).
See :mod:`worker.adapters.avro.codec` for the framings."""

from __future__ import annotations

from worker.adapters.avro.codec import (
    CONFLUENT_MAGIC,
    DEFAULT_MAX_MESSAGE_BYTES,
    RECORD_NAMES,
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    SchemaFingerprint,
    default_schema_dir,
)
from worker.adapters.avro.registry import ConfluentSchemaRegistry, RegistryConfig, SchemaRegistry

__all__ = [
    "CONFLUENT_MAGIC",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "RECORD_NAMES",
    "SINGLE_OBJECT_MAGIC",
    "AvroCodec",
    "ConfluentSchemaRegistry",
    "RegistryConfig",
    "SchemaFingerprint",
    "SchemaRegistry",
    "default_schema_dir",
]
