"""Open-loop MQTT load generator: pre-encoded QoS 1 PUBLISHes over one raw TCP socket.

Message ``i`` is scheduled at ``start + i / rate`` and carries that instant as its SenML
base time ``bt``, so a consumer's publish-to-commit latency includes any time this
publisher was held back. Device ``i % len(devices)`` sends it, so each (device, bt) is
unique and loss and duplicates can be counted downstream.

Cheap per message: one PUBLISH template per device is encoded at start; per message the
2-byte packet id, the 17-character ``bt`` and one digit of the water level are patched in
place and the bytes appended to the send buffer; one ``send`` carries every message due
since the last one. At most ``min(--inflight, broker's Receive Maximum)`` PUBLISHes are
unacknowledged: a slow broker holds the publisher back, and the time it spends so is
reported. The result (counts, back pressure, schedule, own CPU time) is one JSON object.

    python -m bench.mqtt_load --host 127.0.0.1 --port 1883 --rate 5000 --duration 10 \\
        --device-prefix wl-bench- --devices 2000 [--index 0 --stride 1] [--pin 1]

``--rate 0`` sends as fast as the window allows. Only the standard library (and the
bench's own stdlib-only modules) is imported, so a publisher process starts fast and
stays small. Its CPU time is read from /proc/self/stat at the start and at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from bench import mqtt_wire as wire
from bench.procstat import CLK_TCK, read_stat

TOPIC_FORMAT = "cityops/{gateway}/{device}/telemetry"
GATEWAY = "gw-bench"
BT_WIDTH = 17  # "1763700000.123456": epoch seconds with microseconds until the year 2286
_ACK = wire.PUBACK
_MAX_PENDING_BYTES = 1 << 18  # stop encoding while this much waits for the socket
_WAIT_FOR_ACKS_S = 0.05


def device_names(prefix: str, devices: int, index: int = 0, stride: int = 1) -> list[str]:
    """Device ids ``<prefix><n:05d>`` for n in index, index + stride, ... < devices."""
    return [f"{prefix}{n:05d}" for n in range(index, devices, stride)]


def senml_payload(device_id: str) -> tuple[bytes, int, int]:
    """Three SenML records (water level, battery, temperature); the offsets of bt and a digit.

    The water level is ``2D.0`` cm: the digit at the second offset is patched per message.
    """
    head = b'[{"bn":"' + device_id.encode() + b':","bt":'
    middle = b',"n":"water_level","u":"cm","v":2'
    tail = b'0.0},{"n":"battery","u":"%EL","v":90.0},{"n":"temperature","u":"Cel","v":18.5}]'
    bt_at = len(head)
    digit_at = bt_at + BT_WIDTH + len(middle)
    return head + b"0" * BT_WIDTH + middle + tail, bt_at, digit_at


def format_bt(us: int) -> bytes:
    """Epoch microseconds as the fixed-width decimal seconds a payload carries."""
    text = b"%d.%06d" % divmod(us, 1_000_000)
    if len(text) != BT_WIDTH:
        raise ValueError(f"timestamp {us} does not fit {BT_WIDTH} characters")
    return text


def own_cpu() -> tuple[float, float]:
    """User and system CPU seconds of this process, from /proc/self/stat like the others'."""
    stat = read_stat(os.getpid())
    if stat is None:
        raise RuntimeError("cannot read /proc/self/stat")
    return stat.utime / CLK_TCK, stat.stime / CLK_TCK


def read_packet(sock: socket.socket, rx: bytearray) -> tuple[int, bytes]:
    """Read from a blocking ``sock`` into ``rx`` until it holds a packet; take that out."""
    while True:
        packet = wire.next_packet(rx, 0)
        if packet is not None:
            first, start, end = packet
            body = bytes(rx[start:end])
            del rx[:end]
            return first, body
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("broker closed the connection")
        rx += data


@dataclass(frozen=True)
class Schedule:
    """Message ``i`` is due at ``t0_us + floor(i * num / den)`` microseconds since the epoch."""

    t0_us: int
    num: int
    den: int
    paced: bool = True

    @classmethod
    def of(cls, start_at: float, rate: float) -> Schedule:
        """``rate`` messages per second from ``start_at`` (epoch seconds); 0: unpaced."""
        t0_us = round(start_at * 1_000_000)
        if rate <= 0:
            return cls(t0_us, 1, 1, paced=False)
        period = Fraction(1_000_000) / Fraction(rate).limit_denominator(1_000_000)
        return cls(t0_us, period.numerator, period.denominator)

    def at_us(self, i: int) -> int:
        """When message ``i`` is due."""
        return self.t0_us + i * self.num // self.den

    def due(self, now_us: int, count: int) -> int:
        """How many of the first ``count`` messages are due at ``now_us``."""
        if not self.paced:
            return count
        elapsed = now_us - self.t0_us
        if elapsed < 0:
            return 0
        return min(count, ((elapsed + 1) * self.den + self.num - 1) // self.num)


@dataclass(frozen=True)
class LoadPlan:
    """What one publisher process sends, where, and how fast."""

    host: str
    port: int
    devices: list[str]
    count: int
    rate: float
    start_at: float
    version: int = wire.MQTT5
    inflight: int = 1000
    tick_s: float = 0.005
    ack_timeout_s: float = 120.0
    max_batch: int = 4096
    topic_format: str = TOPIC_FORMAT
    gateway: str = GATEWAY
    username: str = ""
    password: str = ""
    client_id: str = ""


@dataclass
class LoadStats:
    """What happened; ``Publisher.result`` adds the back pressure, schedule and CPU time."""

    sent: int = 0
    acked: int = 0
    unknown_acks: int = 0
    ack_reasons: Counter[int] = field(default_factory=Counter)
    window: int = 0
    receive_maximum: int = 0
    sends: int = 0
    bytes: int = 0
    batch_lags_us: list[int] = field(default_factory=list)
    error: str = ""


class _Episodes:
    """Counts and times the intervals during which a condition held."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.count = 0
        self.total = 0.0

    def update(self, holds: bool, now: float) -> None:
        if holds and self.since is None:
            self.since = now
            self.count += 1
        elif not holds and self.since is not None:
            self.total += now - self.since
            self.since = None


class Publisher:
    """Sends a :class:`LoadPlan` over one MQTT connection; ``run`` returns the result."""

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self.schedule = Schedule.of(plan.start_at, plan.rate)
        format_bt(self.schedule.at_us(max(plan.count - 1, 0)))  # every bt fits BT_WIDTH
        self.templates = [self._template(d) for d in plan.devices]
        self.stats = LoadStats()
        self.flags = bytearray(wire.MAX_PACKET_ID + 1)  # 1: packet id in flight
        self.inflight = 0
        self.pid = 0
        self.next_i = 0
        self.rx = bytearray()
        self.out = bytearray()
        self.blocked = _Episodes()
        self.tcp_blocked = _Episodes()

    def _template(self, device: str) -> tuple[bytearray, int, int, int]:
        payload, bt_at, digit_at = senml_payload(device)
        topic = self.plan.topic_format.format(gateway=self.plan.gateway, device=device)
        tmpl = wire.publish_template(topic, payload, self.plan.version)
        return tmpl.packet, tmpl.pid_at, tmpl.payload_at + bt_at, tmpl.payload_at + digit_at

    # -- connection -------------------------------------------------------------------

    def connect(self) -> socket.socket:
        """Connect, send CONNECT, read CONNACK; the window is set from its Receive Maximum."""
        plan = self.plan
        sock = socket.create_connection((plan.host, plan.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client_id = plan.client_id or f"bench-pub-{uuid.uuid4().hex[:10]}"
        sock.sendall(
            wire.connect_packet(
                client_id, version=plan.version, username=plan.username, password=plan.password
            )
        )
        first, body = read_packet(sock, self.rx)
        if first & 0xF0 != wire.CONNACK:
            raise wire.ProtocolError(f"expected CONNACK, got packet type 0x{first:02x}")
        ack = wire.parse_connack(body, plan.version)
        if ack.reason_code:
            raise wire.ProtocolError(f"broker refused CONNECT: reason 0x{ack.reason_code:02x}")
        self.stats.receive_maximum = ack.receive_maximum
        self.stats.window = min(plan.inflight, ack.receive_maximum, wire.MAX_PACKET_ID)
        sock.setblocking(False)
        return sock

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Connect, wait for the start, send everything, wait for every PUBACK."""
        sock = self.connect()
        time.sleep(max(0.0, self.plan.start_at - time.time()))
        cpu0, wall0 = own_cpu(), time.time()
        sent_at = done_at = wall0
        try:
            sent_at, done_at = self._pump(sock)
        except (OSError, wire.ProtocolError) as exc:
            self.stats.error = f"{type(exc).__name__}: {exc}"
            done_at = time.time()
        finally:
            cpu1 = own_cpu()
            self._close(sock)
        return self.result(wall0, sent_at, done_at, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])

    def _pump(self, sock: socket.socket) -> tuple[float, float]:
        count, window = self.plan.count, self.stats.window
        sent_at: float | None = None
        while True:
            now_us = time.time_ns() // 1000
            now = now_us / 1e6
            due = self.schedule.due(now_us, count)
            if due > self.next_i and self.inflight < window and len(self.out) < _MAX_PENDING_BYTES:
                self._encode(min(due - self.next_i, window - self.inflight), now_us)
            self.blocked.update(due > self.next_i and self.inflight >= window, now)
            if self.out:
                self._flush(sock)
            self.tcp_blocked.update(bool(self.out), now)
            self._read_acks(sock)
            if sent_at is None and self.next_i >= count and not self.out:
                sent_at = now
            if sent_at is not None and self.inflight == 0:
                return sent_at, time.time()
            if sent_at is not None and now - sent_at > self.plan.ack_timeout_s:
                self.stats.error = f"{self.inflight} PUBACKs missing {self.plan.ack_timeout_s} s"
                return sent_at, now
            self._wait(sock, now_us, window)

    def _encode(self, n: int, now_us: int) -> None:
        """Append the next ``n`` messages to the send buffer, patched in place."""
        n = min(n, self.plan.max_batch)
        templates, flags, out = self.templates, self.flags, self.out
        t0, num, den = self.schedule.t0_us, self.schedule.num, self.schedule.den
        m, first, pid = len(templates), self.next_i, self.pid
        self.stats.batch_lags_us.append(now_us - (t0 + first * num // den))
        for i in range(first, first + n):
            packet, pid_at, bt_at, digit_at = templates[i % m]
            pid += 1
            if pid > wire.MAX_PACKET_ID:
                pid = 1
            if flags[pid]:
                pid = self._free_pid(pid)
            flags[pid] = 1
            packet[pid_at] = pid >> 8
            packet[pid_at + 1] = pid & 0xFF
            packet[bt_at : bt_at + BT_WIDTH] = b"%d.%06d" % divmod(t0 + i * num // den, 1_000_000)
            packet[digit_at] = 48 + i % 7
            out += packet
        self.pid = pid
        self.next_i += n
        self.inflight += n
        self.stats.sent += n

    def _free_pid(self, pid: int) -> int:
        """The next packet id from ``pid`` on that is not in flight (the window is smaller)."""
        while self.flags[pid]:
            pid = pid % wire.MAX_PACKET_ID + 1
        return pid

    def _flush(self, sock: socket.socket) -> None:
        try:
            n = sock.send(self.out)
        except BlockingIOError:
            return
        del self.out[:n]
        self.stats.sends += 1
        self.stats.bytes += n

    def _read_acks(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionError("broker closed the connection")
        self.rx += data
        del self.rx[: self._take_acks(self.rx)]

    def _take_acks(self, rx: bytearray) -> int:
        """Release the packet ids acknowledged in ``rx``; return how many bytes were used."""
        flags, pos, end, released = self.flags, 0, len(rx), 0
        while pos < end:
            if rx[pos] == _ACK and pos + 3 < end and rx[pos + 1] == 2:
                pid = (rx[pos + 2] << 8) | rx[pos + 3]
                pos += 4
            else:
                packet = wire.next_packet(rx, pos)
                if packet is None:
                    break
                pid = self._other_packet(packet[0], rx[packet[1] : packet[2]])
                pos = packet[2]
            if pid and flags[pid]:
                flags[pid] = 0
                released += 1
            elif pid:
                self.stats.unknown_acks += 1
        self.inflight -= released
        self.stats.acked += released
        return pos

    def _other_packet(self, first: int, body: bytearray) -> int:
        """A PUBACK with a reason code (its packet id returned), or a DISCONNECT."""
        kind = first & 0xF0
        if kind == wire.PUBACK:
            pid, reason = wire.parse_puback(body)
            self.stats.ack_reasons[reason] += 1
            return pid
        if kind == wire.DISCONNECT:
            reason = body[0] if body else 0
            raise wire.ProtocolError(f"broker sent DISCONNECT, reason 0x{reason:02x}")
        raise wire.ProtocolError(f"unexpected packet type 0x{first:02x}")

    def _wait(self, sock: socket.socket, now_us: int, window: int) -> None:
        """Sleep until there is something to do; batch messages by waiting a tick at least."""
        tick = self.plan.tick_s
        if self.out:
            select.select([sock], [sock], [], tick)
        elif self.next_i < self.plan.count and self.inflight >= window:
            select.select([sock], [], [], tick)
        elif self.next_i >= self.plan.count:
            select.select([sock], [], [], _WAIT_FOR_ACKS_S)
        else:
            until_next = (self.schedule.at_us(self.next_i) - now_us) / 1e6
            time.sleep(min(max(tick, until_next), _WAIT_FOR_ACKS_S))

    def _close(self, sock: socket.socket) -> None:
        try:
            sock.setblocking(True)
            sock.sendall(wire.disconnect_packet())
        except OSError:
            pass
        sock.close()

    # -- the report -------------------------------------------------------------------

    def result(
        self, started_at: float, sent_at: float, done_at: float, user_s: float, sys_s: float
    ) -> dict[str, Any]:
        """Counts, back pressure, schedule and CPU time, ready for JSON."""
        now = time.time()
        self.blocked.update(False, now)
        self.tcp_blocked.update(False, now)
        stats = self.stats
        lags = sorted(stats.batch_lags_us)
        body = asdict(stats)
        del body["batch_lags_us"]
        wall = max(done_at - started_at, 1e-9)
        body.update(
            {
                "blocked_episodes": self.blocked.count,
                "blocked_s": self.blocked.total,
                "tcp_blocked_episodes": self.tcp_blocked.count,
                "tcp_blocked_s": self.tcp_blocked.total,
                "pid": os.getpid(),
                "cpus": sorted(os.sched_getaffinity(0)),
                "count": self.plan.count,
                "devices": len(self.plan.devices),
                "unacked": self.inflight,
                "ack_reasons": {f"0x{k:02x}": v for k, v in stats.ack_reasons.items()},
                "lag_p99_ms": lags[int(0.99 * (len(lags) - 1))] / 1000 if lags else 0.0,
                "lag_max_ms": lags[-1] / 1000 if lags else 0.0,
                "t0_us": self.schedule.t0_us,
                "period_num": self.schedule.num,
                "period_den": self.schedule.den,
                "paced": self.schedule.paced,
                "started_at": started_at,
                "sent_at": sent_at,
                "done_at": done_at,
                "wall_s": wall,
                "cpu_user_s": user_s,
                "cpu_sys_s": sys_s,
                "cpu_s": user_s + sys_s,
                "cpu_share_of_machine": (user_s + sys_s) / (wall * (os.cpu_count() or 1)),
            }
        )
        return body


def drop_session(
    host: str,
    port: int,
    client_id: str,
    *,
    version: int = wire.MQTT5,
    username: str = "",
    password: str = "",
) -> None:
    """End the broker's session of ``client_id``: connect with clean start, leave at once."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            wire.connect_packet(client_id, version=version, username=username, password=password)
        )
        first, _ = read_packet(sock, bytearray())
        if first & 0xF0 != wire.CONNACK:
            raise wire.ProtocolError(f"expected CONNACK, got packet type 0x{first:02x}")
        sock.sendall(wire.disconnect_packet())


def publisher_command(host: str, port: int, protocol: int, *args: str) -> list[str]:
    """The command that runs one raw-socket publisher process."""
    return [
        sys.executable,
        "-m",
        "bench.mqtt_load",
        "--host",
        host,
        "--port",
        str(port),
        "--protocol",
        str(protocol),
        *args,
    ]


def env_login() -> tuple[str, str]:
    """The test environment's full-access MQTT account when there is one (as
    ``cityops.services.throwaway_services`` exports it), else this process's own."""
    for prefix in ("CITYOPS_TEST_MQTT_", "CITYOPS_MQTT_"):
        if os.environ.get(prefix + "USERNAME"):
            return os.environ[prefix + "USERNAME"], os.environ.get(prefix + "PASSWORD", "")
    return "", ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--protocol", type=int, choices=(3, 5), default=5, help="MQTT 3.1.1 or 5")
    ap.add_argument("--rate", type=float, default=1000, help="msg/s of this process; 0: unpaced")
    ap.add_argument("--duration", type=float, default=10, help="seconds of schedule")
    ap.add_argument("--count", type=int, default=0, help="messages (default: rate x duration)")
    ap.add_argument("--device-prefix", default="wl-bench-")
    ap.add_argument("--devices", type=int, default=2000, help="device ids in the whole fleet")
    ap.add_argument("--index", type=int, default=0, help="this process takes device index,")
    ap.add_argument("--stride", type=int, default=1, help="index + stride, ...")
    ap.add_argument("--start-at", type=float, default=0.0, help="epoch s of message 0")
    ap.add_argument("--inflight", type=int, default=1000, help="own limit of unacked PUBLISHes")
    ap.add_argument("--tick-ms", type=float, default=5.0, help="least pause between sends")
    ap.add_argument("--ack-timeout", type=float, default=120.0)
    ap.add_argument("--topic-format", default=TOPIC_FORMAT)
    ap.add_argument("--gateway", default=GATEWAY)
    ap.add_argument("--username", default=env_login()[0], help="password: from the environment")
    ap.add_argument("--pin", type=int, default=None, help="run on this CPU only")
    return ap.parse_args(argv)


def plan_of(args: argparse.Namespace) -> LoadPlan:
    """The plan the command line describes."""
    count = args.count or round(args.rate * args.duration)
    username, password = env_login()
    if args.username != username:
        password = os.environ.get("CITYOPS_MQTT_PASSWORD", "")
    return LoadPlan(
        host=args.host,
        port=args.port,
        devices=device_names(args.device_prefix, args.devices, args.index, args.stride),
        count=count,
        rate=args.rate,
        start_at=args.start_at or time.time() + 0.2,
        version=wire.MQTT5 if args.protocol == 5 else wire.MQTT311,
        inflight=args.inflight,
        tick_s=args.tick_ms / 1000,
        ack_timeout_s=args.ack_timeout,
        topic_format=args.topic_format,
        gateway=args.gateway,
        username=args.username,
        password=password,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    result = Publisher(plan_of(args)).run()
    result["index"] = args.index
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
