"""The murmur2 partitioner (contract §2), checked against the vectors of Kafka's own
``UtilsTest.testMurmur2`` (the Java client's documented results), and SR's producer config."""

from __future__ import annotations

import pytest

from worker.adapters.kafka import KafkaConfig
from worker.adapters.kafka.producer import EventProducer
from worker.core.partitioning import murmur2, partition_for

JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "expected"), JAVA_VECTORS.items(), ids=[k.decode() for k in JAVA_VECTORS])
def test_murmur2_matches_the_java_client(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_every_tail_length_and_the_sign() -> None:
    # 0-3 trailing bytes take different branches; results stay signed 32-bit.
    for n in range(12):
        value = murmur2(bytes(range(n)))
        assert -(2**31) <= value < 2**31
    assert len({murmur2(b"x" * n) for n in range(1, 9)}) == 8


def test_partition_for_is_the_positive_hash_modulo() -> None:
    # Java: Utils.toPositive(murmur2("foobar")) % 50 = (-790332482 & 0x7fffffff) % 50 = 1357151166 % 50.
    assert partition_for(b"foobar", 50) == 1357151166 % 50 == 16
    assert partition_for("foobar", 50) == 16
    assert all(0 <= partition_for(f"run-{i}", 7) < 7 for i in range(200))
    assert {partition_for(f"run-{i}", 4) for i in range(200)} == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        partition_for(b"k", 0)


def test_srs_producer_asks_librdkafka_for_murmur2_random(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, object]] = []

    class Recorder:
        def __init__(self, conf: dict[str, object]) -> None:
            seen.append(conf)

        def poll(self, timeout: float) -> int:
            return 0

        def flush(self, timeout: float) -> int:
            return 0

    monkeypatch.setattr("worker.adapters.kafka.producer.Producer", Recorder)
    with EventProducer(KafkaConfig(bootstrap="127.0.0.1:1")):
        pass
    assert seen[0]["partitioner"] == "murmur2_random"
    # An operator who must keep an existing topic's placement can still choose another one.
    with EventProducer(KafkaConfig(bootstrap="127.0.0.1:1", client_extra={"partitioner": "consistent_random"})):
        pass
    assert seen[1]["partitioner"] == "consistent_random"
