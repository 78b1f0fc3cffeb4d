"""The bridge picks each record's partition as kafka-python's default partitioner would."""

from __future__ import annotations

from typing import Any

from kafka.partitioner.default import murmur2

from infra.settings import Settings
from sensors.bridge import MqttBridge, _Outgoing


class FakeProducer:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def send(self, topic: str, value: Any = None, key: Any = None, partition: Any = None) -> Any:
        raise AssertionError("not sent in this test")

    def flush(self, timeout: float | None = None) -> None:
        return None


def expected(key: bytes, n: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % n


def test_partitions_match_the_default_partitioner_and_follow_a_count_change() -> None:
    producer = FakeProducer(4)
    bridge = MqttBridge(Settings(), producer, lambda _: None, client_id="t")
    keys = [f"wl-{i:05d}".encode() for i in range(500)]
    choose = bridge._partitions()
    got = [choose(_Outgoing("t.telemetry", k, b"{}", "forwarded")) for k in keys]
    assert got == [expected(k, 4) for k in keys]
    assert len(set(got)) == 4
    producer.partitions = 6  # the topic grew: the next window hashes again
    choose = bridge._partitions()
    got = [choose(_Outgoing("t.telemetry", k, b"{}", "forwarded")) for k in keys]
    assert got == [expected(k, 6) for k in keys]
