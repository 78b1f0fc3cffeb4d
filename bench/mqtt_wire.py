"""The few MQTT packets the load generator needs, encoded and decoded by hand.

CONNECT, CONNACK, PUBLISH (QoS 1), PUBACK and DISCONNECT, for MQTT 5 (protocol level 5)
and MQTT 3.1.1 (level 4). No I/O here: :mod:`bench.mqtt_load` owns the socket.

Variable byte integers and strings come from ``sensors.mqtt_session``, the bridge's own
client: the two sides frame packets alike. A PUBLISH is built once per topic and payload
as a :class:`PublishTemplate`; the sender patches its packet id (and whatever fixed-width
fields its payload has) in place and copies the bytes out, so no packet is encoded per
message.

    packet = connect_packet("pub-1", version=5)
    ack = parse_connack(body, version=5)      # body: the bytes after the fixed header
    tmpl = publish_template("cityops/gw/dev/telemetry", b"...", version=5)
    tmpl.packet[tmpl.pid_at : tmpl.pid_at + 2] = (7).to_bytes(2, "big")
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# The framing both sides share: the same encodings as the bridge's MQTT session.
from sensors.mqtt_session import utf8, varint

CONNECT = 0x10
CONNACK = 0x20
PUBLISH_QOS1 = 0x32  # PUBLISH, DUP 0, QoS 1, RETAIN 0
PUBACK = 0x40
DISCONNECT = 0xE0

MQTT5 = 5
MQTT311 = 4

RECEIVE_MAXIMUM = 0x21
NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT 5 PUBACK: accepted, but nobody subscribes to it
MAX_PACKET_ID = 65535

# MQTT 5 property identifiers by the type of their value.
_BYTE_PROPS = frozenset({0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A})
_TWO_BYTE_PROPS = frozenset({0x13, 0x21, 0x22, 0x23})
_FOUR_BYTE_PROPS = frozenset({0x02, 0x11, 0x18, 0x27})
_VARINT_PROPS = frozenset({0x0B})
_STRING_PROPS = frozenset({0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F})
_BINARY_PROPS = frozenset({0x09, 0x16})
_PAIR_PROPS = frozenset({0x26})

PropertyValue = int | str | bytes | tuple[str, str]


class ProtocolError(Exception):
    """The broker sent something this encoder does not accept."""


def read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """Decode a variable byte integer at ``pos``: (value, next position), None if cut short."""
    value = 0
    for shift in range(0, 28, 7):
        if pos >= len(buf):
            return None
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise ProtocolError("variable byte integer longer than 4 bytes")


def next_packet(buf: bytes | bytearray, pos: int) -> tuple[int, int, int] | None:
    """The packet starting at ``pos``: (first byte, body start, body end), None if incomplete."""
    if pos >= len(buf):
        return None
    length = read_varint(buf, pos + 1)
    if length is None:
        return None
    size, start = length
    end = start + size
    if end > len(buf):
        return None
    return buf[pos], start, end


def _binary(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def connect_packet(
    client_id: str,
    *,
    version: int = MQTT5,
    keepalive_s: int = 0,
    clean_start: bool = True,
    username: str = "",
    password: str = "",
) -> bytes:
    """A CONNECT packet (keep alive 0 means the broker never times the client out)."""
    flags = 0x02 if clean_start else 0
    payload = utf8(client_id)
    if username:
        flags |= 0x80
        payload += utf8(username)
        if password:
            flags |= 0x40
            payload += _binary(password.encode())
    variable = utf8("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive_s)
    if version == MQTT5:
        variable += varint(0)  # no properties
    body = variable + payload
    return bytes([CONNECT]) + varint(len(body)) + body


def disconnect_packet() -> bytes:
    """A normal DISCONNECT (MQTT 5: reason 0 and no properties, the same two bytes as 3.1.1)."""
    return bytes([DISCONNECT, 0])


@dataclass(frozen=True)
class ConnAck:
    """What the broker said to CONNECT."""

    session_present: bool
    reason_code: int
    properties: dict[int, PropertyValue] = field(default_factory=dict)

    @property
    def receive_maximum(self) -> int:
        """How many QoS 1 PUBLISHes the broker takes unacknowledged (65,535 if it sets none)."""
        value = self.properties.get(RECEIVE_MAXIMUM, MAX_PACKET_ID)
        return value if isinstance(value, int) else MAX_PACKET_ID


def parse_connack(body: bytes | bytearray, version: int = MQTT5) -> ConnAck:
    """Decode a CONNACK's body (the bytes after its fixed header)."""
    if len(body) < 2:
        raise ProtocolError("CONNACK shorter than 2 bytes")
    properties: dict[int, PropertyValue] = {}
    if version == MQTT5 and len(body) > 2:
        properties = parse_properties(body, 2)
    return ConnAck(bool(body[0] & 1), body[1], properties)


def parse_properties(buf: bytes | bytearray, pos: int) -> dict[int, PropertyValue]:
    """Decode an MQTT 5 property list (its length first) at ``pos``."""
    length = read_varint(buf, pos)
    if length is None:
        raise ProtocolError("property length cut short")
    size, pos = length
    end = pos + size
    properties: dict[int, PropertyValue] = {}
    while pos < end:
        ident = buf[pos]
        value, pos = _property_value(buf, pos + 1, ident)
        properties[ident] = value
    return properties


def _property_value(buf: bytes | bytearray, pos: int, ident: int) -> tuple[PropertyValue, int]:
    if ident in _BYTE_PROPS:
        return buf[pos], pos + 1
    if ident in _TWO_BYTE_PROPS:
        return int.from_bytes(buf[pos : pos + 2], "big"), pos + 2
    if ident in _FOUR_BYTE_PROPS:
        return int.from_bytes(buf[pos : pos + 4], "big"), pos + 4
    if ident in _VARINT_PROPS:
        decoded = read_varint(buf, pos)
        if decoded is None:
            raise ProtocolError("property cut short")
        return decoded
    if ident in _STRING_PROPS or ident in _BINARY_PROPS:
        data, pos = _length_prefixed(buf, pos)
        return (data.decode() if ident in _STRING_PROPS else data), pos
    if ident in _PAIR_PROPS:
        key, pos = _length_prefixed(buf, pos)
        value, pos = _length_prefixed(buf, pos)
        return (key.decode(), value.decode()), pos
    raise ProtocolError(f"unknown property 0x{ident:02x}")


def _length_prefixed(buf: bytes | bytearray, pos: int) -> tuple[bytes, int]:
    size = int.from_bytes(buf[pos : pos + 2], "big")
    return bytes(buf[pos + 2 : pos + 2 + size]), pos + 2 + size


def parse_puback(body: bytes | bytearray) -> tuple[int, int]:
    """(packet id, reason code) of a PUBACK body; 3.1.1 and short MQTT 5 ones mean success."""
    if len(body) < 2:
        raise ProtocolError("PUBACK shorter than 2 bytes")
    reason = body[2] if len(body) > 2 else 0
    return (body[0] << 8) | body[1], reason


@dataclass(frozen=True)
class PublishTemplate:
    """A QoS 1 PUBLISH packet with its packet id at ``pid_at`` and payload at ``payload_at``."""

    packet: bytearray
    pid_at: int
    payload_at: int


def publish_template(topic: str, payload: bytes, version: int = MQTT5) -> PublishTemplate:
    """A QoS 1 PUBLISH of ``payload`` on ``topic`` with packet id 0, to be patched."""
    topic_bytes = utf8(topic)
    properties = varint(0) if version == MQTT5 else b""
    remaining = len(topic_bytes) + 2 + len(properties) + len(payload)
    header = bytes([PUBLISH_QOS1]) + varint(remaining)
    pid_at = len(header) + len(topic_bytes)
    packet = bytearray(header + topic_bytes + b"\0\0" + properties + payload)
    return PublishTemplate(packet, pid_at, pid_at + 2 + len(properties))
