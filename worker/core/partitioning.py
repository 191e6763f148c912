"""Which partition a keyed record lands on (contract §2): the Java client's murmur2 partitioner.

SR's producers set librdkafka's ``murmur2_random`` partitioner, which hashes a key exactly as
Java's default partitioner does, so a trigger that ``sr trigger`` keys by run_id and one that
a Java service keys the same way land on the same partition and stay in order. This module is
the same algorithm in Python, for operators (which partition holds a run's events, to replay
it) and for the tests that check SR's producers against it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["murmur2", "partition_for"]

_SEED: Final = 0x9747B28C
_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 (32-bit) of ``data`` as Kafka's Java client computes it (``Utils.murmur2``):
    signed, in ``[-2**31, 2**31)``."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length % 4
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes | str, partitions: int) -> int:
    """The partition of a non-empty ``key`` (a str is UTF-8 encoded) on a topic of
    ``partitions`` partitions: ``(murmur2(key) & 0x7fffffff) % partitions``.

    Raises:
        ValueError: ``partitions`` < 1.
    """
    if partitions < 1:
        raise ValueError("a topic has at least one partition")
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % partitions
