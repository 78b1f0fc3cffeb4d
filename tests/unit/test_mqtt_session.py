"""The bridge's MQTT session: packet framing (pure functions, no broker)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensors.mqtt_session import (
    PUBACK,
    PUBLISH,
    MqttProtocolError,
    packet,
    puback,
    split_packets,
    varint,
)


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
    ],
)
def test_variable_byte_integers_as_the_standard_writes_them(n: int, encoded: bytes) -> None:
    assert varint(n) == encoded


def test_a_puback_is_four_bytes_with_the_packet_id() -> None:
    assert puback(0x1234) == bytes((PUBACK, 2, 0x12, 0x34))


@given(st.lists(st.binary(max_size=400), min_size=1, max_size=20), st.integers(0, 50))
def test_split_returns_every_complete_packet_and_keeps_the_rest(
    bodies: list[bytes], cut: int
) -> None:
    stream = b"".join(packet(PUBLISH, b) for b in bodies)
    partial = stream[: max(0, len(stream) - cut)]
    found, used = split_packets(partial)
    # Every packet found is one of the bodies, in order, and nothing past ``used``.
    assert [partial[s:e] for _, s, e in found] == bodies[: len(found)]
    assert used <= len(partial)
    if cut == 0:
        assert len(found) == len(bodies)
        assert used == len(stream)
    rest_found, _ = split_packets(partial[used:])
    assert rest_found == []


def test_a_remaining_length_over_four_bytes_is_refused() -> None:
    with pytest.raises(MqttProtocolError):
        split_packets(bytes((PUBLISH, 0xFF, 0xFF, 0xFF, 0xFF, 0x01)) + b"x" * 10)


def test_publish_topic_packet_id_and_payload_come_apart() -> None:
    from sensors.mqtt_session import MqttSession

    session = MqttSession("127.0.0.1", 1, "c", ["#"], lambda _: None, protocol=5)
    topic = b"cityops/gw/dev/telemetry"
    props = b"\x03\x23\x00\x05"  # three bytes of properties: topic alias 5
    body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", 77) + props + b"payload"
    m = session._publish(PUBLISH | 0x02, body, connection=3)
    assert (m.topic, m.packet_id, m.payload, m.qos, m.connection) == (topic, 77, b"payload", 1, 3)
    v3 = MqttSession("127.0.0.1", 1, "c", ["#"], lambda _: None, protocol=4)
    body3 = struct.pack("!H", len(topic)) + topic + struct.pack("!H", 9) + b"p"
    assert v3._publish(PUBLISH | 0x02, body3, connection=1).payload == b"p"
