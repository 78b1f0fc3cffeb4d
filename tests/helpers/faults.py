"""Faults for the resilience tests: a TCP proxy that delays, cuts and partitions; services
of a test's own to kill and restart (PostgreSQL, Mosquitto, Tansu on S3); gateways that
count what the broker acknowledged; the checks that what was accepted is stored once.

    with TcpProxy(upstream_port) as proxy:   # clients connect to proxy.port
        proxy.latency_s = 0.2                # each way
        proxy.cut()                          # every open connection dropped now
        proxy.partition()                    # nothing gets through ...
        proxy.heal()                         # ... until this
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from cityops.services import DEBIAN_PG_BIN, Service, free_port, wait_for_port
from infra import kafka as topics
from infra.settings import Settings
from tests.helpers.brokers import mqtt_client
from tests.helpers.builders import senml
from tests.helpers.db import count, event_counts, rows
from tests.helpers.waiting import wait_until

# -- the proxy ------------------------------------------------------------------------------

_CHUNK = 64 * 1024
# The command tags PostgreSQL answers a write with (CommandComplete): a COMMIT after one
# of these on the same connection ends a transaction that wrote something.
_WRITE_TAGS = (b"INSERT 0 ", b"UPDATE ", b"COPY ", b"DELETE ")
# A statement that is COMMIT or ROLLBACK alone, as the protocol carries it (its text ends
# with a NUL; "ON COMMIT DELETE ROWS" or "ROLLBACK TO SAVEPOINT" do not match).
_TRANSACTION_END = (b"COMMIT\x00", b"ROLLBACK\x00")
# How long a marked chunk has to reach the server and be acted on before the cut.
_SETTLE_S = 0.1


class _Link:
    """One proxied connection: client <-> upstream, each way through a delaying queue.

    Four pump threads (a reader and a writer each way) use the two sockets; only the
    last of them to end closes them. Closing a socket that another thread is inside
    ``recv`` or ``sendall`` on frees its descriptor for the next connection the process
    opens, and that thread then reads or writes that other connection. ``close()``
    therefore only shuts the sockets down, which ends every pump.
    """

    def __init__(self, proxy: TcpProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = threading.Event()
        self.wrote = False  # the server answered a write since the last transaction end
        self.muted = False  # nothing more goes back to the client
        self._lock = threading.Lock()
        self._pumps = 0

    def run(self) -> None:
        # A blackholed proxy accepts and holds a new connection until it heals.
        while self.proxy.blackholed.is_set() and not self.closed.is_set():
            time.sleep(0.05)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.proxy.upstream_port), 5)
        except OSError:
            self.close()
            return
        with self._lock:
            if self.closed.is_set():  # cut while connecting: the client is closed already
                _reset(upstream)
                return
            self.upstream = upstream
            self._pumps = 4
        for src, dst, up in (
            (self.client, upstream, True),
            (upstream, self.client, False),
        ):
            pipe: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
            threading.Thread(target=self._read, args=(src, pipe, up), daemon=True).start()
            threading.Thread(target=self._write, args=(dst, pipe, up), daemon=True).start()

    def _read(
        self, src: socket.socket, pipe: queue.Queue[tuple[float, bytes] | None], up: bool
    ) -> None:
        try:
            while not self.closed.is_set():
                data = src.recv(_CHUNK)
                if not data:
                    break
                if not up and any(tag in data for tag in _WRITE_TAGS):
                    self.wrote = True
                pipe.put((time.monotonic() + self.proxy.latency_s, data))
        except OSError:
            pass
        finally:
            pipe.put(None)
            self._pump_done()

    def _write(
        self, dst: socket.socket, pipe: queue.Queue[tuple[float, bytes] | None], up: bool
    ) -> None:
        try:
            self._forward(dst, pipe, up)
        except OSError:
            pass
        finally:
            self.close()
            self._pump_done()

    def _forward(
        self, dst: socket.socket, pipe: queue.Queue[tuple[float, bytes] | None], up: bool
    ) -> None:
        while True:
            item = pipe.get()
            if item is None:
                return
            due, data = item
            while (wait := due - time.monotonic()) > 0 or self.proxy.blackholed.is_set():
                if self.closed.is_set():
                    return
                time.sleep(min(max(wait, 0.0), 0.05) or 0.05)
            if self.closed.is_set():
                return
            if self.muted and not up:
                continue
            cutting = up and self._ends_a_write(data) and self.proxy.take_marker_cut()
            if cutting:
                self.muted = True  # before the server can answer
            dst.sendall(data)
            if cutting:
                threading.Timer(_SETTLE_S, self.proxy.cut).start()

    def _ends_a_write(self, data: bytes) -> bool:
        """Whether ``data`` (client to server) holds the proxy's marker and ends a
        transaction that wrote; the next transaction starts afresh."""
        marker = self.proxy.cut_after
        hit = marker is not None and marker in data and self.wrote
        if any(end in data for end in _TRANSACTION_END):
            self.wrote = False
        return hit

    def close(self) -> None:
        """Drop the connection both ways (an RST once the pumps have ended)."""
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
            pumping = self._pumps > 0
        socks = [s for s in (self.client, self.upstream) if s is not None]
        for sock in socks:
            if pumping:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            else:
                _reset(sock)
        self.proxy.forget(self)

    def _pump_done(self) -> None:
        with self._lock:
            self._pumps -= 1
            last = self._pumps == 0
        if last:
            for sock in (self.client, self.upstream):
                if sock is not None:
                    _reset(sock)


_LINGER_0 = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # on, 0 s: close() sends an RST


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST, as a network that loses the connection leaves it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream_port``, with faults on demand.

    ``latency_s`` delays every chunk each way; ``cut()`` drops every open connection;
    ``partition()`` drops them and refuses new ones until ``heal()``;
    ``blackhole()`` forwards nothing (connections stay open, new ones are held) until
    ``heal()``, then delivers what was held; ``cut_after_marker(b"COMMIT\\x00", n)``: the
    next ``n`` times a client sends the marker to end a transaction that wrote (the
    server answered INSERT, UPDATE, COPY or DELETE on that connection since its last
    COMMIT or ROLLBACK), the chunk goes through, nothing comes back on that connection,
    and every connection is cut once the server has had it (a commit that went through,
    its acknowledgement lost). ``marker_cuts`` counts those cuts.
    """

    def __init__(self, upstream_port: int, port: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.latency_s = 0.0
        self.blackholed = threading.Event()
        self.refusing = threading.Event()
        self.cut_after: bytes | None = None
        self.cuts_left = 0
        self.marker_cuts = 0
        self.accepted = 0
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._server.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.refusing.is_set():
                _reset(client)
                continue
            link = _Link(self, client)
            with self._lock:
                self._links.add(link)
                self.accepted += 1
            threading.Thread(target=link.run, daemon=True).start()

    def forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._links)

    def cut(self) -> int:
        """Drop every open connection; return how many."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        return len(links)

    def partition(self) -> None:
        self.refusing.set()
        self.cut()

    def blackhole(self) -> None:
        self.blackholed.set()

    def heal(self) -> None:
        self.refusing.clear()
        self.blackholed.clear()

    def cut_after_marker(self, marker: bytes, times: int) -> None:
        self.cuts_left = times
        self.cut_after = marker

    def take_marker_cut(self) -> bool:
        """Whether a marker just seen is one of the cuts asked for (and count it)."""
        with self._lock:
            if self.cuts_left <= 0:
                return False
            self.cuts_left -= 1
            self.marker_cuts += 1
            if self.cuts_left == 0:
                self.cut_after = None
            return True

    def close(self) -> None:
        self._closing.set()
        # The accept loop ends within its 0.2 s timeout; closing the socket under it
        # would hand its descriptor to whatever the process opens next (see _Link).
        if self._thread.is_alive():
            self._thread.join(5)
        with contextlib.suppress(OSError):
            self._server.close()
        self.cut()


# -- services of a test's own ---------------------------------------------------------------


@contextlib.contextmanager
def service_dir(prefix: str) -> Iterator[Path]:
    """A temp dir that the postgres and mosquitto users can reach; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)  # noqa: S103 - the service users must reach their data dirs
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _pg_ctl(workdir: Path, *args: str) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [*prefix, str(DEBIAN_PG_BIN / "pg_ctl"), "-D", str(workdir / "pgdata"), *args],
        check=True,
        capture_output=True,
        timeout=120,
    )


def postgres_crash(workdir: Path) -> None:
    """Stop the cluster of ``start_postgres_cluster(workdir)`` as a crash would."""
    _pg_ctl(workdir, "-m", "immediate", "stop")


def postgres_start_again(workdir: Path) -> None:
    """Start it again, with the options it last ran with (crash recovery first)."""
    # restart on a stopped server starts it with the options of postmaster.opts.
    _pg_ctl(workdir, "-m", "immediate", "-w", "-l", str(workdir / "postgres.log"), "restart")


def postgres_restart_immediate(workdir: Path) -> None:
    """``pg_ctl restart -m immediate``: a crash and a start at once."""
    _pg_ctl(workdir, "-m", "immediate", "-w", "-l", str(workdir / "postgres.log"), "restart")


def sigkill_service(name: str, marker: str) -> None:
    """SIGKILL the process whose command line names ``name`` and ``marker`` (its config
    file, its port): one this test started, by its pid."""
    out = subprocess.run(["ps", "-wweo", "pid=,args="], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        pid, _, args = line.strip().partition(" ")
        if name in args and marker in args:
            os.kill(int(pid), signal.SIGKILL)
            return
    raise AssertionError(f"no {name} process with {marker}")


@dataclass
class S3Server:
    """A local S3 (moto's server mode): Tansu's log lives in it, so the log survives a
    restart of the broker. A process of its own: in this one it would share the GIL with
    the test's workers, and every produce waits on it."""

    bucket: str = "tansu"
    port: int = field(default_factory=free_port)
    _server: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> S3Server:
        import boto3

        self._server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # werkzeug's line per request
        )
        try:
            wait_for_port(self.port, 30, self._server)
            boto3.client("s3", **self.client_args()).create_bucket(Bucket=self.bucket)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.terminate()
            try:
                self._server.wait(10)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait(10)

    def client_args(self) -> dict[str, str]:
        return {
            "endpoint_url": f"http://127.0.0.1:{self.port}",
            "aws_access_key_id": "test",
            "aws_secret_access_key": "test",
            "region_name": "us-east-1",
        }

    @property
    def storage_engine(self) -> str:
        return f"s3://{self.bucket}/"

    @property
    def env(self) -> dict[str, str]:
        """What Tansu's object store reads from the environment."""
        return {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "AWS_ALLOW_HTTP": "true",
        }


@contextlib.contextmanager
def kafka_behind_a_proxy(settings: Settings, prefix: str) -> Iterator[tuple[Settings, TcpProxy]]:
    """A Kafka-protocol broker of the test's own, reached only through a ``TcpProxy`` (it
    advertises the proxy's address), its topics made: settings on it, and the proxy."""
    from cityops.services import start_kafka
    from infra.kafka import ensure_topics

    with service_dir(prefix) as workdir:
        broker_port = free_port()
        with TcpProxy(broker_port) as proxy:
            kafka = start_kafka(workdir, broker_port, advertised_port=proxy.port)
            try:
                on_kafka = settings_on(settings, kafka)
                ensure_topics(on_kafka)
                yield on_kafka, proxy
            finally:
                kafka.stop()


def settings_on(settings: Settings, *services: Service, **changes: Any) -> Settings:
    """``settings`` pointed at the given services (their CITYOPS_ variables)."""
    update: dict[str, Any] = dict(changes)
    for svc in services:
        for key, value in svc.env.items():
            name = key.removeprefix("CITYOPS_").lower()
            if name in Settings.model_fields:
                update[name] = int(value) if name in ("mqtt_port", "mqtt_protocol") else value
    return settings.model_copy(update=update)


def wait_port_free(port: int, timeout: float = 10) -> None:
    """Until nothing listens on ``port`` (a killed broker's port, before it starts again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"port {port} still in use")


def wait_port(port: int, timeout: float = 30) -> None:
    wait_for_port(port, timeout)


# -- gateways ---------------------------------------------------------------------------------


class Gateways:
    """QoS 1 publishers of water levels, one SenML reading per message, each at its own
    time stamp; ``accepted`` holds (device, ts) of the messages the broker acknowledged.

    paho keeps every unacknowledged QoS 1 message and sends it again when it reconnects
    (with a short reconnect delay here), as a gateway does.
    """

    def __init__(self, settings: Settings, devices: list[str], name: str) -> None:
        self.settings = settings
        self.devices = devices
        self.accepted: set[tuple[str, float]] = set()
        self.sent: dict[int, tuple[str, float]] = {}
        self._pending: dict[int, tuple[str, float]] = {}
        self._early: set[int] = set()
        self._lock = threading.Lock()
        self._seq = 0
        self.client = mqtt_client(settings, name)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_publish = self._on_publish
        self.client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=10)
        self.client.loop_start()
        self.t0 = time.time() - 3_000  # in the past: time stamps never collide with now

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        # paho calls this holding its own locks: never call into paho under ``_lock``.
        with self._lock:
            key = self._pending.pop(mid, None)
            if key is None:
                self._early.add(mid)  # acknowledged before publish() returned its mid
            else:
                self.accepted.add(key)

    def publish(self, n: int, pause_s: float = 0.0) -> None:
        """``n`` messages round-robin over the devices."""
        for _ in range(n):
            device = self.devices[self._seq % len(self.devices)]
            ts = round(self.t0 + self._seq * 0.001, 3)
            self._seq += 1
            info = self.client.publish(
                f"cityops/gw-t/{device}/telemetry", senml(device, 20.0, ts=ts), qos=1
            )
            with self._lock:
                self.sent[info.mid] = (device, ts)
                if info.mid in self._early:
                    self._early.discard(info.mid)
                    self.accepted.add((device, ts))
                else:
                    self._pending[info.mid] = (device, ts)
            if pause_s:
                time.sleep(pause_s)

    def in_flight(self) -> list[int]:
        """The message ids sent and not yet acknowledged."""
        with self._lock:
            return list(self._pending)

    @property
    def unacknowledged(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            self.client.disconnect()


class Publishing:
    """``gateways`` publishing ``batch`` messages at a time (``pause_s`` apart) from a
    thread of their own, until :meth:`stop`."""

    def __init__(self, gateways: Gateways, batch: int, pause_s: float) -> None:
        self.gateways = gateways
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(batch, pause_s), daemon=True)
        self._thread.start()

    def _run(self, batch: int, pause_s: float) -> None:
        while not self._stop.is_set():
            self.gateways.publish(batch, pause_s=pause_s)

    def stop(self) -> None:
        """Publish no more; wait until the broker has acknowledged every message."""
        self._stop.set()
        self._thread.join(30)
        wait_until(lambda: self.gateways.unacknowledged == 0, 60, "every reading acknowledged")


# -- what is stored -----------------------------------------------------------------------------


def stored_water_levels(settings: Settings) -> list[tuple[str, float]]:
    """(device, epoch ts rounded to ms) of every stored water level."""
    found = rows(
        settings,
        "SELECT device_id, round(extract(epoch FROM ts)::numeric, 3)::float8 FROM readings"
        " WHERE metric = 'water_level'",
    )
    return [(d, float(t)) for d, t in found]


@dataclass(frozen=True)
class Tally:
    """What was accepted against what is stored: lost, duplicated, stored but not
    accepted (the broker had it, its acknowledgement was lost)."""

    accepted: int
    stored: int
    lost: int
    duplicates: int
    extra: int


def tally(accepted: set[tuple[str, float]], stored: list[tuple[str, float]]) -> Tally:
    unique = set(stored)
    return Tally(
        accepted=len(accepted),
        stored=len(stored),
        lost=len(accepted - unique),
        duplicates=len(stored) - len(unique),
        extra=len(unique - accepted),
    )


def writer_positions(settings: Settings, group: str = "telemetry-writer") -> dict[int, int]:
    found = rows(
        settings,
        "SELECT partition, next_offset FROM telemetry_positions WHERE consumer = %s",
        group,
    )
    return {int(p): int(o) for p, o in found}


def tracked_positions(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """A tracked consumer's next offsets per partition of ``topic`` (its full name)."""
    found = rows(
        settings,
        "SELECT application_name, max(notification_id) FROM city_tracking"
        " WHERE application_name LIKE %s GROUP BY 1",
        f"{group}|{topic}|%",
    )
    return {int(name.rsplit("|", 1)[1]): int(n) for name, n in found}


def readings_count(settings: Settings) -> int:
    return count(settings, "SELECT count(*) FROM readings")


def database_up(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


# -- the pipeline under test ----------------------------------------------------------------


def _runs() -> dict[str, Callable[[Settings, threading.Event], None]]:
    from cityops import bootstrap

    return {
        "bridge": bootstrap.run_bridge,
        "writer": bootstrap.run_writer,
        "monitor": bootstrap.run_monitor,
        "telemetry": bootstrap.run_telemetry,
        "projector": bootstrap.run_projector,
        "intake": bootstrap.run_intake,
        "relay": bootstrap.run_relay,
        "brain": bootstrap.run_brain,
        "sla": bootstrap.run_sla,
    }


@dataclass
class Workers:
    """Workers in threads of this process, by name; ``dead()`` names those that ended."""

    threads: dict[str, tuple[threading.Thread, threading.Event]]

    def dead(self) -> list[str]:
        return [name for name, (thread, _) in self.threads.items() if not thread.is_alive()]


@contextlib.contextmanager
def workers(settings: Settings, *names: str, join_s: float = 20) -> Iterator[Workers]:
    """The named workers (bridge, writer, monitor, projector, intake, relay, brain, sla)
    on ``settings``, each in a thread; stopped and joined on the way out."""
    from cityops.bootstrap import run_in_thread

    runs = _runs()
    started = Workers(
        {name: run_in_thread(partial(runs[name], settings), f"w-{name}") for name in names}
    )
    try:
        yield started
    finally:
        for _, stop in started.threads.values():
            stop.set()
        for thread, _ in started.threads.values():
            thread.join(join_s)


class Hotline:
    """A hotline system sending cases to ``cityops.cases.inbound``; ``accepted`` holds the
    external ids Kafka acknowledged."""

    def __init__(self, settings: Settings, tag: str) -> None:
        from infra.kafka import Topics, make_producer

        self.settings = settings
        self.tag = tag
        self.topic = Topics.of(settings).cases_inbound
        self.producer = make_producer(settings, max_block_ms=5_000)
        self.accepted: set[str] = set()
        self.failed = 0
        self._n = 0

    def send(self, n: int) -> None:
        from infra.hotline_schema import HotlineCase, encode

        futures = []
        for _ in range(n):
            ext = f"H-{self.tag}-{self._n:05d}"
            self._n += 1
            key, value = encode(HotlineCase.model_validate(hotline_message(ext)))
            try:
                futures.append((ext, self.producer.send(self.topic, key=key, value=value)))
            except Exception:
                self.failed += 1
        for ext, future in futures:
            try:
                future.get(timeout=60)
                self.accepted.add(ext)
            except Exception:
                self.failed += 1

    def case_ids(self) -> set[Any]:
        from core.case import case_id

        return {case_id("hotline", f"12345:{ext}") for ext in self.accepted}

    def close(self) -> None:
        self.producer.close(timeout=5)


def hotline_message(external_id: str) -> dict[str, Any]:
    """A valid hotline case inside Xuhui of the demo city."""
    return {
        "external_id": external_id,
        "source": "12345",
        "service_code": "road_damage",
        "description": "路面塌陷 / pothole",
        "location": {"lon": 121.47, "lat": 31.215},
        "attributes": {"size": "medium"},
    }


SUBMITTED = "%ServiceCase.CaseSubmitted"


def views_equal_a_rebuild(settings: Settings) -> None:
    """The live views, caught up, equal the views rebuilt from the log."""
    from cityops.bootstrap import rebuild_projections
    from tests.helpers.db import checksums, project

    # The workers may have stopped after an event the live projector had not read yet
    # (the monitor's silence check): a projector brings the live views to the head first.
    project(settings)
    live = checksums(settings)
    rebuild_projections(settings)
    project(settings)
    assert checksums(settings) == live


# How long a fetch of ``kafka_ends`` may wait. Tansu 0.6 on S3 lists a partition's whole
# log for every fetch and answers with no records once the fetch's wait is up: with
# kafka-python's default (500 ms) a partition of a few thousand batches, or an object
# store slowed by a busy machine, answers empty before its end.
_ENDS_FETCH_WAIT_MS = 5_000


def kafka_ends(settings: Settings, topic: str, timeout: float = 30) -> dict[int, int]:
    """Per partition that has records, the offset after the last record the broker
    serves, found by reading it from offset 0 up to the high watermark the broker sends
    with its fetch answers (the offset its next record gets).

    Neither the end the broker reports (Tansu 0.6 on S3 answers the base offset + 1 of
    the batch it stored last by modification time, not the highest) nor a poll that
    brings nothing (see ``_ENDS_FETCH_WAIT_MS``) says a partition is read to its end.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=_ENDS_FETCH_WAIT_MS,
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return {}
        consumer.assign(tps)
        for tp in tps:
            # Not seek_to_beginning: Tansu 0.6 on S3 answers "earliest" with the batch it
            # stored first by modification time. Nothing here truncates a topic.
            consumer.seek(tp, 0)
        ends: dict[int, int] = {}
        highwaters: dict[int, int | None] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                ends[tp.partition] = records[-1].offset + 1
            highwaters = {tp.partition: consumer.highwater(tp) for tp in tps}
            if all(h is not None and ends.get(p, 0) >= h for p, h in highwaters.items()):
                return ends
        # Below a high watermark with nothing more served: offsets the broker gave a
        # batch it never stored (Tansu allocates them first), or a broker too slow.
        raise AssertionError(
            f"{topic}: not read to its high watermarks in {timeout} s "
            f"(read to {ends}, high watermarks {highwaters})"
        )
    finally:
        consumer.close()


def wait_more_stored(settings: Settings, more: int, timeout: float, what: str) -> None:
    """Until over ``more`` water levels more than now are stored."""
    before = len(stored_water_levels(settings))
    wait_until(lambda: len(stored_water_levels(settings)) > before + more, timeout, what)


def wait_all_stored(
    settings: Settings, gateways: Gateways, hotline: Hotline, timeout: float = 90
) -> None:
    """Until every reading the broker acknowledged and every case the hotline's broker
    acknowledged is stored."""

    def all_in() -> bool:
        return (
            tally(gateways.accepted, stored_water_levels(settings)).lost == 0
            and set(event_counts(settings, SUBMITTED)) >= hotline.case_ids()
        )

    wait_until(all_in, timeout, "every accepted reading and case stored")


def positions_off_the_ends(settings: Settings) -> list[str]:
    """Where the writer, the monitor or the intake has not recorded exactly every record
    of its topic as read (one line each: recorded and the topic's ends); empty when all
    are at the ends."""
    names = topics.Topics.of(settings)
    telemetry = kafka_ends(settings, names.telemetry)
    inbound = kafka_ends(settings, names.cases_inbound)
    recorded = {
        "writer": (writer_positions(settings), telemetry),
        "sensor-monitor": (
            tracked_positions(settings, "sensor-monitor", names.telemetry),
            telemetry,
        ),
        "case-intake": (tracked_positions(settings, "case-intake", names.cases_inbound), inbound),
    }
    return [
        f"{who}: recorded {got}, ends {ends}"
        for who, (got, ends) in recorded.items()
        if got != ends
    ]


def wait_positions_at_the_ends(settings: Settings, timeout: float = 60) -> None:
    """Until every consumer has caught up with its topic (the writer storing a reading
    does not mean the monitor has judged it)."""
    wait_until(
        lambda: not positions_off_the_ends(settings), timeout, "every consumer at its topic's ends"
    )


def assert_positions_at_the_ends(settings: Settings) -> None:
    """The writer, the monitor and the intake have recorded every record of their topics
    as read, and none beyond."""
    off = positions_off_the_ends(settings)
    assert not off, "; ".join(off)
