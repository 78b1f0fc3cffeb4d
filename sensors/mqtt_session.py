"""A subscriber's MQTT connection for the bridge: messages in, acknowledgements out in batches.

The bridge receives every gateway message and acknowledges each one itself, later, once
Kafka holds it. paho-mqtt does that too, but its receive path costs more than the rest
of the bridge together (it reads the fixed header byte by byte, builds an MQTT 5
``Properties`` object per message and a socket write per PUBACK). This session reads
the socket in large chunks, parses every complete packet in the buffer, hands the
PUBLISHes over as a list, and writes the acknowledgements of a whole window with one
``sendall``.

Only what a subscriber needs: CONNECT (MQTT 5 or 3.1.1, persistent session, user and
password, MQTT 5 session expiry and receive maximum), SUBSCRIBE, UNSUBSCRIBE, PUBLISH
at QoS 0/1 in, PUBACK and PINGREQ out, DISCONNECT; reconnects with backoff. A packet id
is acknowledged only on the connection that delivered it: ``ack`` takes the
connection's number (``Incoming.connection``) and drops acks of a connection that is
gone, since the broker delivers those messages again on the new one.

    session = MqttSession(host, port, "bridge-1", ["cityops/#"], on_messages=handle)
    session.start()
    ...  # handle(list[Incoming]) runs on the network thread; acknowledge later:
    session.ack(window[0].connection, [m.packet_id for m in window if m.qos])
    session.stop()
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 0x82, 0x90, 0xA2, 0xB0
PINGREQ, PINGRESP, DISCONNECT = 0xC0, 0xD0, 0xE0

# CONNACK refusals a login causes (the rest are reported by number). The password is
# never part of a message here: the broker's answer is all that is said.
_REFUSALS_V5 = {0x86: "bad user name or password", 0x87: "not authorized"}
_REFUSALS_V311 = {4: "bad user name or password", 5: "not authorized"}

_PROP_SESSION_EXPIRY = 0x11
_PROP_RECEIVE_MAXIMUM = 0x21
# One read: large enough to carry hundreds of messages, small enough that a paused
# session holds little beyond its limit.
READ_BYTES = 64 * 1024
# Back soon after a broker restart: until the bridge has subscribed again, a broker
# that lost its sessions (restarted without a save since the bridge subscribed) drops
# what gateways publish to it, acknowledged.
_MIN_BACKOFF_S, _MAX_BACKOFF_S = 0.25, 10.0
_HOLD_POLL_S = 0.002


class MqttProtocolError(ConnectionError):
    """The broker sent something this session cannot follow; the connection is dropped."""


@dataclass(slots=True)
class Incoming:
    """One PUBLISH received: raw topic bytes, payload, QoS, packet id, connection number."""

    topic: bytes
    payload: bytes
    qos: int
    packet_id: int
    connection: int


def varint(n: int) -> bytes:
    """MQTT's variable byte integer (0 .. 268,435,455)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"{n} does not fit a variable byte integer")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def puback(packet_id: int) -> bytes:
    # Remaining length 2: reason "success" and no properties (valid in 3.1.1 and 5).
    return struct.pack("!BBH", PUBACK, 2, packet_id)


def split_packets(data: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """Complete packets at the start of ``data`` as (first byte, body start, body end),
    and how many bytes they take."""
    end = len(data)
    out: list[tuple[int, int, int]] = []
    pos = 0
    while pos + 2 <= end:
        length = 0
        shift = 0
        i = pos + 1
        while True:
            if i >= end:
                return out, pos
            byte = data[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MqttProtocolError("malformed remaining length")
        if i + length > end:
            break
        out.append((data[pos], i, i + length))
        pos = i + length
    return out, pos


def _skip_properties(body: bytes, pos: int) -> int:
    length = 0
    shift = 0
    while True:
        byte = body[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return pos + length
        shift += 7


class MqttSession:
    """One subscriber connection, kept up by its own network thread until ``stop``."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        filters: Sequence[str],
        on_messages: Callable[[list[Incoming]], None],
        *,
        protocol: int = 5,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        session_expiry_s: int = 3600,
        receive_maximum: int = 4000,
        on_disconnected: Callable[[str], None] | None = None,
        hold: Callable[[], bool] | None = None,
    ) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.filters = list(filters)
        self.v5 = protocol == 5
        self._on_messages = on_messages
        self._on_disconnected = on_disconnected
        self._hold = hold
        self._username, self._password = username, password
        self._keepalive_s = keepalive_s
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._send_lock = threading.Lock()
        self._connection = 0
        self._next_packet_id = 0
        self.subscribed = threading.Event()
        self._unsubscribed = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{client_id}-mqtt", daemon=True)

    # --- what the bridge calls ----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def ack(self, connection: int, packet_ids: Sequence[int]) -> bool:
        """PUBACK ``packet_ids`` in this order, in one write; False if that connection is gone."""
        if not packet_ids:
            return True
        data = b"".join([puback(i) for i in packet_ids])
        with self._send_lock:
            if connection != self._connection or self._sock is None:
                return False
            try:
                self._sock.sendall(data)
            except OSError as exc:
                log.warning("MQTT %s: acknowledging failed (%s)", self.client_id, exc)
                return False
        return True

    def unsubscribe(self, timeout: float) -> bool:
        """Unsubscribe every filter; True once the broker has confirmed it."""
        self._unsubscribed.clear()
        self._send(self._filters_packet(UNSUBSCRIBE, b""))
        return self._unsubscribed.wait(timeout)

    def stop(self, *, end_session: bool = False, timeout: float = 5.0) -> None:
        """Disconnect cleanly; with ``end_session`` the broker also forgets the session."""
        self._stopping.set()
        body = b""
        if self.v5 and end_session:
            body = b"\x00" + varint(5) + bytes((_PROP_SESSION_EXPIRY,)) + struct.pack("!I", 0)
        with contextlib.suppress(OSError):
            self._send(packet(DISCONNECT, body))
        self._close()
        self._thread.join(timeout)

    # --- connection -----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = _MIN_BACKOFF_S
        while not self._stopping.is_set():
            try:
                self._connect()
                backoff = _MIN_BACKOFF_S
                self._read_loop()
                reason = "connection closed"
            except (OSError, MqttProtocolError) as exc:
                reason = str(exc) or type(exc).__name__
            self.subscribed.clear()
            self._close()
            if self._stopping.is_set():
                return
            if self._on_disconnected is not None:
                self._on_disconnected(reason)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        sock.sendall(self._connect_packet())
        first, body = self._read_one(sock, buffer)
        if first & 0xF0 != CONNACK or len(body) < 2:
            raise MqttProtocolError(f"expected CONNACK, got packet type {first >> 4}")
        session_present, code = bool(body[0] & 1), body[1]
        if code != 0:
            why = (_REFUSALS_V5 if self.v5 else _REFUSALS_V311).get(code, "refused")
            login = f"as {self._username!r}" if self._username else "without a login"
            raise MqttProtocolError(
                f"broker refused the connection {login}: {why} (reason code {code})"
            )
        with self._send_lock:
            self._connection += 1
            self._sock = sock
        self._buffer = buffer
        log.info("MQTT %s connected (session present: %s)", self.client_id, session_present)
        # Always subscribe: the broker may have lost the session (restart without persistence).
        # Options: QoS 1 (MQTT 5: also no-local 0, retain-as-published 0).
        self._send(self._filters_packet(SUBSCRIBE, b"\x01"))

    def _connect_packet(self) -> bytes:
        flags = 0  # clean start (clean session in 3.1.1) off: a persistent session
        if self._username:
            flags |= 0x80
            if self._password:
                flags |= 0x40
        header = utf8("MQTT") + bytes((5 if self.v5 else 4, flags))
        header += struct.pack("!H", self._keepalive_s)
        if self.v5:
            props = bytes((_PROP_SESSION_EXPIRY,)) + struct.pack("!I", self._session_expiry_s)
            props += bytes((_PROP_RECEIVE_MAXIMUM,)) + struct.pack("!H", self._receive_maximum)
            header += varint(len(props)) + props
        payload = utf8(self.client_id)
        if self._username:
            payload += utf8(self._username)
            if self._password:
                payload += utf8(self._password)
        return packet(CONNECT, header + payload)

    def _read_one(self, sock: socket.socket, buffer: bytearray) -> tuple[int, bytes]:
        """The first packet the broker sends; what came after it stays in ``buffer``."""
        while True:
            data = bytes(buffer)
            packets, _ = split_packets(data)
            if packets:
                first, start, end = packets[0]
                del buffer[:end]
                return first, data[start:end]
            chunk = sock.recv(READ_BYTES)
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buffer += chunk

    def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        # Blocking with a timeout: recv runs only after select saw data, and sendall (acks
        # from the window thread) waits for room instead of failing half-written.
        sock.settimeout(30.0)
        buffer = self._buffer
        self._dispatch(buffer)  # what came in behind the CONNACK
        last_ping = time.monotonic()
        ping_every = max(1.0, self._keepalive_s / 2)
        while not self._stopping.is_set():
            if self._hold is not None and self._hold():
                # Flow control that does not depend on the broker honouring Receive
                # Maximum (Mosquitto 2.0.11 sends past it once acks flow): stop reading,
                # and the broker keeps the rest queued in the session.
                readable: list[socket.socket] = []
                time.sleep(_HOLD_POLL_S)
            else:
                readable, _, _ = select.select([sock], [], [], min(ping_every, 1.0))
            now = time.monotonic()
            if now - last_ping >= ping_every:
                self._send(bytes((PINGREQ, 0)))
                last_ping = now
            if not readable:
                continue
            chunk = sock.recv(READ_BYTES)
            if not chunk:
                return
            buffer += chunk
            self._dispatch(buffer)

    def _dispatch(self, buffer: bytearray) -> None:
        # Only after new bytes came: a partial packet left in the buffer is not parsed
        # again while the session holds off reading.
        data = bytes(buffer)
        packets, used = split_packets(data)
        if not packets:
            return
        incoming: list[Incoming] = []
        connection = self._connection
        for first, start, end in packets:
            kind = first & 0xF0
            body = data[start:end]
            if kind == PUBLISH:
                incoming.append(self._publish(first, body, connection))
            elif kind == SUBACK:
                self._suback(body)
            elif kind == UNSUBACK:
                self._unsubscribed.set()
            elif kind == DISCONNECT:
                code = body[0] if len(body) else 0
                raise MqttProtocolError(f"broker disconnected us (reason code {code})")
            elif kind != PINGRESP:
                log.debug("MQTT %s: ignoring packet type %d", self.client_id, kind >> 4)
        del buffer[:used]
        if incoming:
            self._on_messages(incoming)

    def _publish(self, first: int, body: bytes, connection: int) -> Incoming:
        qos = (first >> 1) & 0x03
        topic_len = (body[0] << 8) | body[1]
        pos = 2 + topic_len
        topic = body[2:pos]
        packet_id = 0
        if qos:
            packet_id = (body[pos] << 8) | body[pos + 1]
            pos += 2
        if self.v5:
            pos = _skip_properties(body, pos)
        return Incoming(topic, body[pos:], qos, packet_id, connection)

    def _suback(self, body: bytes) -> None:
        pos = 2
        if self.v5:
            pos = _skip_properties(body, pos)
        codes = list(body[pos:])
        refused = [f"{f}: {c:#x}" for f, c in zip(self.filters, codes, strict=False) if c >= 0x80]
        if refused:
            log.error("MQTT broker refused subscriptions: %s", "; ".join(refused))
            return
        if any(c < 1 for c in codes):
            log.warning("MQTT broker granted only QoS 0: messages may be lost on a crash")
        self.subscribed.set()

    # --- sending ----------------------------------------------------------------------

    def _filters_packet(self, kind: int, options: bytes) -> bytes:
        """SUBSCRIBE or UNSUBSCRIBE of every filter: a new packet id, no properties."""
        self._next_packet_id = self._next_packet_id % 0xFFFF + 1
        body = struct.pack("!H", self._next_packet_id) + (b"\x00" if self.v5 else b"")
        return packet(kind, body + b"".join(utf8(f) + options for f in self.filters))

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            if self._sock is None:
                raise ConnectionError("not connected")
            self._sock.sendall(data)

    def _close(self) -> None:
        with self._send_lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
