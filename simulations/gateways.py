"""Simulated sensor gateways publishing SenML (RFC 8428) telemetry over MQTT.

Topic and payload follow the MQTT contract (DESIGN 3.1): QoS 1 on
``cityops/{gateway_id}/{device_id}/telemetry``, one SenML array per message, with the
device id as base name and the reading time as base time.

Connections: a real gateway holds one MQTT connection for its devices. The simulator
opens one connection per gateway up to ``max_connections`` (default 4) and shares them
beyond that; a gateway always uses the same one. More connections are slower, not
faster, in one Python process: each has a network thread contending for the GIL.
Measured against a local mosquitto on 2 cores, 40,000 messages: about 16,000 msg/s on
1 connection, 10,000 on 4, 6,800 on 13. A load test wanting the most from one process
passes ``max_connections=1``, or runs several processes.

Accounts: by default every connection logs in as one account that may publish for every
gateway (``cityops-simulator`` in deploy/mosquitto/acl). Given a gateway secret
(``MqttParams.gateway_secret``), each gateway logs in as itself instead, username = its
gateway id, on a connection of its own, so the broker's per-gateway ACL applies to every
reading; its password is :func:`gateway_password` of the secret, which is also how the
embedded Mosquitto registers the simulated gateways (``cityops.services``).

No last will is set: MQTT carries one will per connection, and the contract's status
topic is per device. Devices are announced ``online`` at start and ``offline`` at a
clean stop instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson
import pandas as pd
from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.sensor.telemetry import CANONICAL_UNITS, SENSOR_TYPES
from gis.china import from_wgs84
from infra.settings import Settings
from simulations.scenarios import Fleet, Scenario

log = logging.getLogger(__name__)

QOS = 1
# SenML's registered symbol for a battery level is "%EL" (RFC 8428, section 12.1);
# core.sensor.telemetry accepts it for the canonical "%".
SENML_UNITS: dict[str, str] = {**CANONICAL_UNITS, "battery": "%EL"}

_PROTOCOLS = {
    5: MQTTProtocolVersion.MQTTv5,
    4: MQTTProtocolVersion.MQTTv311,
    3: MQTTProtocolVersion.MQTTv311,  # settings spell 3.1.1 as 3
}
_QUEUED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)

ClientFactory = Callable[[str], mqtt.Client]


def telemetry_topic(gateway_id: str, device_id: str) -> str:
    """MQTT topic of a device's readings."""
    return f"cityops/{gateway_id}/{device_id}/telemetry"


def status_topic(gateway_id: str, device_id: str) -> str:
    """MQTT topic of a device's ``online`` / ``offline`` status."""
    return f"cityops/{gateway_id}/{device_id}/status"


def location_topic(gateway_id: str, device_id: str) -> str:
    """MQTT topic of where a device is."""
    return f"cityops/{gateway_id}/{device_id}/location"


def location_payload(lon: float, lat: float, ts: float, coord_system: str) -> bytes:
    """A device's position, WGS-84 ``lon``/``lat`` given in ``coord_system`` as a Chinese
    GNSS module or map SDK would report it.

    Examples
    --------
    >>> location_payload(121.4737, 31.2304, 1763700000.0, "gcj02")
    b'{"lon":121.478223,"lat":31.228458,"coord_system":"gcj02","ts":1763700000.0}'
    """
    x, y = from_wgs84(lon, lat, coord_system)
    body = {"lon": round(x, 6), "lat": round(y, 6), "coord_system": coord_system, "ts": ts}
    return orjson.dumps(body)


def senml_payload(device_id: str, ts: float, metrics: Mapping[str, tuple[float, str]]) -> bytes:
    """One SenML pack (RFC 8428 JSON) with a reading per metric, all taken at ``ts``.

    The first record carries the base name ``"<device_id>:"`` and the base time, so
    each record's full name is ``<device_id>:<metric>`` and its time is ``ts``.

    Parameters
    ----------
    device_id : str
        The device, e.g. ``"wl-000042"``.
    ts : float
        Reading time, epoch seconds (UTC).
    metrics : mapping
        Metric name -> (value, SenML unit), in the order the records should appear.

    Raises
    ------
    ValueError
        If there is no metric or a value is not a finite number (JSON has no NaN).

    Examples
    --------
    >>> senml_payload("wl-000042", 1763700000.0, {"water_level": (38.5, "cm")})
    b'[{"bn":"wl-000042:","bt":1763700000.0,"n":"water_level","u":"cm","v":38.5}]'
    """
    if not metrics:
        raise ValueError("a SenML pack needs at least one metric")
    records: list[dict[str, Any]] = []
    for name, (value, unit) in metrics.items():
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"{device_id}: {name} value {value!r} is not a finite number")
        records.append({"n": name, "u": unit, "v": v})
    records[0] = {"bn": f"{device_id}:", "bt": float(ts), **records[0]}
    return orjson.dumps(records)


def publish_senml(
    client: mqtt.Client,
    gateway_id: str,
    device_id: str,
    records: bytes | Sequence[Mapping[str, Any]],
) -> mqtt.MQTTMessageInfo:
    """Publish a SenML pack (bytes as is, or records to serialise) on the device's topic.

    Raw bytes go out unchanged, so tests can send deliberately malformed payloads.

    Examples
    --------
    >>> payload = senml_payload("wl-000042", 1763700000.0, {"water_level": (38.5, "cm")})
    >>> info = publish_senml(client, "gw-310101-01", "wl-000042", payload)  # doctest: +SKIP
    >>> info.wait_for_publish(timeout=5)  # doctest: +SKIP
    """
    payload = records if isinstance(records, bytes) else orjson.dumps(list(records))
    return client.publish(telemetry_topic(gateway_id, device_id), payload, qos=QOS)


def gateway_password(secret: str, gateway_id: str) -> str:
    """A simulated gateway's MQTT password: HMAC-SHA256 of its id under ``secret``, base64url.

    Whoever holds the secret can log in as every simulated gateway (as the simulator
    account may publish for all of them); one gateway's password tells nothing of
    another's. Real gateways have passwords of their own (deploy/mosquitto/README.md).

    Examples
    --------
    >>> gateway_password("s3cret", "gw-310101-01")
    'xVxZbuVGO960pl9OphAKTT3uX2u7Cz9mSBAHCsaO-00'
    """
    digest = hmac.new(secret.encode(), gateway_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class MqttParams:
    """Where and how to connect to the MQTT broker, and as whom.

    ``gateway_secret``: each gateway logs in as itself (:meth:`for_gateway`) instead of
    as ``username``.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    username: str = ""
    password: str = field(default="", repr=False)
    protocol: int = 5  # 5 (MQTT 5) or 3/4 (MQTT 3.1.1)
    keepalive: int = 30
    gateway_secret: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.protocol not in _PROTOCOLS:
            raise ValueError(f"MQTT protocol must be 5, 4 or 3 (3.1.1), got {self.protocol}")

    @classmethod
    def from_settings(cls, settings: Settings, host: str | None = None) -> MqttParams:
        """The simulator's parameters from settings; ``host`` overrides an empty (embedded)
        broker host. Its account: CITYOPS_SIM_MQTT_USERNAME if set, else
        CITYOPS_MQTT_USERNAME; per gateway with CITYOPS_SIM_GATEWAY_SECRET."""
        secret = settings.sim_gateway_secret
        own = bool(settings.sim_mqtt_username)
        return cls(
            host=host or settings.mqtt_host or "127.0.0.1",
            port=settings.mqtt_port,
            username=settings.sim_mqtt_username if own else settings.mqtt_username,
            password=settings.sim_mqtt_password if own else settings.mqtt_password,
            protocol=settings.mqtt_protocol,
            gateway_secret=secret.get_secret_value() if secret is not None else "",
        )

    def for_gateway(self, gateway_id: str) -> MqttParams:
        """These parameters logged in as gateway ``gateway_id`` (needs ``gateway_secret``)."""
        if not self.gateway_secret:
            raise ValueError("per-gateway logins need a gateway secret")
        return replace(
            self,
            username=gateway_id,
            password=gateway_password(self.gateway_secret, gateway_id),
            gateway_secret="",
        )


def new_client(params: MqttParams, client_id: str = "") -> mqtt.Client:
    """A paho client of ``params``' protocol and account, not yet connected.

    Examples
    --------
    >>> client = new_client(MqttParams(username="gw-1", password="pw"), "gw-1")
    >>> client.connect("127.0.0.1", 1883)  # doctest: +SKIP
    """
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=_PROTOCOLS[params.protocol],
    )
    if params.username:
        client.username_pw_set(params.username, params.password or None)
    return client


def connect_client(params: MqttParams, client_id: str, timeout_s: float = 10.0) -> mqtt.Client:
    """A paho client connected to the broker (CONNACK received), its network loop running.

    Raises
    ------
    ConnectionError
        If the broker is unreachable, refuses the connection or does not answer.

    Examples
    --------
    >>> client = connect_client(MqttParams(port=1883), "cityops-test")  # doctest: +SKIP
    """
    client = new_client(params, client_id)
    connack = threading.Event()
    outcome: list[ReasonCode] = []

    def on_connect(
        _c: mqtt.Client,
        _u: object,
        _f: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _p: Properties | None,
    ) -> None:
        outcome.append(reason_code)
        connack.set()

    client.on_connect = on_connect
    where = f"MQTT broker {params.host}:{params.port}"
    try:
        client.connect(params.host, params.port, keepalive=params.keepalive)
    except OSError as exc:
        raise ConnectionError(f"cannot reach {where}: {exc}") from exc
    client.loop_start()
    if not connack.wait(timeout_s):
        client.loop_stop()
        raise ConnectionError(f"{where} did not acknowledge the connection in {timeout_s} s")
    if outcome[0].is_failure:
        client.disconnect()
        client.loop_stop()
        raise ConnectionError(f"{where} refused the connection: {outcome[0]}")
    return client


@dataclass(frozen=True, slots=True)
class SimulatorStats:
    """What one run of the simulator did."""

    published: int
    acked: int
    rejected: int
    elapsed_s: float  # publishing telemetry and waiting for its acknowledgements

    @property
    def rate(self) -> float:
        """Messages published per second."""
        return self.published / self.elapsed_s if self.elapsed_s > 0 else 0.0


class TokenBucket:
    """Paces work at ``rate`` per second, handing out tokens in batches.

    The caller wakes at most about every ``tick_s`` and takes the batch accumulated
    since, so a high rate costs one sleep per batch, not one per message. ``burst``
    caps the catch-up after a stall.
    """

    def __init__(
        self,
        rate: float,
        *,
        tick_s: float = 0.01,
        burst: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if rate <= 0 or tick_s <= 0:
            raise ValueError(f"rate and tick_s must be positive, got {rate}, {tick_s}")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate * 0.05)
        self._batch = max(1.0, min(self.burst, rate * tick_s))
        self._monotonic = monotonic
        self._sleep = sleep
        self._tokens = self._batch
        self._last = monotonic()

    def take(self, most: int) -> int:
        """Take up to ``most`` tokens, first waiting until a batch is available.

        Returns fewer (possibly 0) only if ``sleep`` returns early, as
        ``threading.Event.wait`` does when the event is set.
        """
        if most <= 0:
            return 0
        self._refill()
        batch = min(float(most), self._batch)
        if self._tokens < batch:
            self._sleep((batch - self._tokens) / self.rate)
            self._refill()
        # The epsilon absorbs rounding in the refill arithmetic.
        taken = min(most, int(self._tokens + 1e-9))
        self._tokens -= taken
        return taken

    def _refill(self) -> None:
        now = self._monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now


class GatewaySimulator:
    """Publishes every device's readings, one message per device per round.

    Parameters
    ----------
    fleet : Fleet
        The devices to simulate, with their gateways.
    scenario : Scenario
        What the devices read; evaluated once per round at the round's start.
    params : MqttParams
        Broker connection parameters. With a ``gateway_secret`` every gateway logs in as
        itself, on a connection of its own (a connection carries one login).
    rate : float
        Total messages per second over all devices.
    max_connections : int
        At most this many MQTT connections; gateways share them beyond that. Not
        applied to per-gateway logins.
    max_unacked : int
        Publishing pauses while this many messages wait for their PUBACK (paho's own
        queue is unbounded, so this is what bounds memory when the broker lags).
    clock : callable
        Wall clock for SenML base times and scenario time (``time.time``).
    client_factory : callable, optional
        ``client_id -> connected paho client``; defaults to :func:`connect_client` with
        the connection's parameters (``connection_params``).

    Examples
    --------
    >>> sim = GatewaySimulator(fleet, Rainstorm(seed=42), MqttParams(), rate=200)  # doctest: +SKIP
    >>> sim.run(duration_s=60).acked  # doctest: +SKIP
    12000
    """

    def __init__(
        self,
        fleet: Fleet,
        scenario: Scenario,
        params: MqttParams,
        *,
        rate: float,
        max_connections: int = 4,
        max_unacked: int = 10_000,
        announce_status: bool = True,
        location_coord_system: str | None = None,
        client_id_prefix: str | None = None,
        clock: Callable[[], float] = time.time,
        client_factory: ClientFactory | None = None,
    ) -> None:
        if len(fleet) == 0:
            raise ValueError("the fleet has no devices")
        if max_connections < 1 or max_unacked < 1:
            raise ValueError("max_connections and max_unacked must be at least 1")
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.fleet = fleet
        self.scenario = scenario
        self.rate = rate
        self.max_unacked = max_unacked
        self.announce_status = announce_status
        # With the "online" status, each device says where it is, in this system.
        self.location_coord_system = location_coord_system
        self._clock = clock
        self._client_factory = client_factory
        self._prefix = client_id_prefix or f"cityops-sim-{os.getpid()}"
        gateways = sorted(set(fleet.gateway_id.tolist()))
        if params.gateway_secret:
            self.connection_params = [params.for_gateway(g) for g in gateways]
        else:
            self.connection_params = [params] * min(len(gateways), max_connections)
        self.n_connections = len(self.connection_params)
        conn_of_gateway = {g: k % self.n_connections for k, g in enumerate(gateways)}
        self._conn_of_device = np.array(
            [conn_of_gateway[g] for g in fleet.gateway_id.tolist()], dtype=np.intp
        )
        self._order = _interleaved_order(fleet)
        self._telemetry_topics = [
            telemetry_topic(g, d)
            for g, d in zip(fleet.gateway_id.tolist(), fleet.device_id.tolist(), strict=True)
        ]
        self._lock = threading.Lock()
        self._published = 0
        self._acked = 0
        self._rejected = 0

    @property
    def published(self) -> int:
        """Telemetry messages of the current (or last) run handed to the MQTT client."""
        return self._published

    @property
    def acked(self) -> int:
        """Telemetry messages of the current (or last) run the broker acknowledged."""
        with self._lock:
            return self._acked

    def run(
        self,
        *,
        max_messages: int | None = None,
        duration_s: float | None = None,
        stop_event: threading.Event | None = None,
        drain_timeout_s: float = 10.0,
    ) -> SimulatorStats:
        """Connect, publish until a limit is reached or ``stop_event`` is set, disconnect.

        With neither ``max_messages`` nor ``duration_s`` it runs until stopped. Before
        returning it waits up to ``drain_timeout_s`` for outstanding PUBACKs.
        """
        stop = stop_event or threading.Event()
        with self._lock:
            self._published = self._acked = self._rejected = 0
        clients: list[mqtt.Client] = []
        try:
            for k, params in enumerate(self.connection_params):
                client_id = f"{self._prefix}-{k:02d}"
                if self._client_factory is not None:
                    clients.append(self._client_factory(client_id))
                else:
                    clients.append(connect_client(params, client_id))
            if self.announce_status:
                self._publish_status(clients, "online", drain_timeout_s)
                self._publish_locations(clients, drain_timeout_s)
            for client in clients:
                client.on_publish = self._on_publish
            start = time.monotonic()
            self._publish_telemetry(clients, max_messages, duration_s, stop)
            self._drain(drain_timeout_s)
            elapsed = time.monotonic() - start
            for client in clients:
                client.on_publish = None
            if self.announce_status:
                self._publish_status(clients, "offline", drain_timeout_s)
        finally:
            for client in clients:
                client.disconnect()
                client.loop_stop()
        with self._lock:
            stats = SimulatorStats(self._published, self._acked, self._rejected, elapsed)
        if stats.acked < stats.published:
            log.warning(
                "%d of %d messages not acknowledged by the broker",
                stats.published - stats.acked,
                stats.published,
            )
        return stats

    def _publish_telemetry(
        self,
        clients: list[mqtt.Client],
        max_messages: int | None,
        duration_s: float | None,
        stop: threading.Event,
    ) -> None:
        fleet, n = self.fleet, len(self.fleet)
        metrics_of = {t: [(m, SENML_UNITS[m]) for m in ms] for t, ms in SENSOR_TYPES.items()}
        types = fleet.sensor_type.tolist()
        devices = fleet.device_id.tolist()
        bucket = TokenBucket(self.rate, sleep=stop.wait)
        scenario_t0 = self._clock()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        values: dict[str, np.ndarray] = {}
        cursor = 0
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return
            budget = n if max_messages is None else max_messages - self._published
            if budget <= 0:
                return
            if self._published - self.acked >= self.max_unacked:
                stop.wait(0.005)
                continue
            for _ in range(bucket.take(min(budget, n))):
                if cursor == 0:
                    values = self.scenario.values(fleet, self._clock() - scenario_t0)
                i = int(self._order[cursor])
                cursor = (cursor + 1) % n
                payload = senml_payload(
                    devices[i],
                    self._clock(),
                    {m: (float(values[m][i]), unit) for m, unit in metrics_of[types[i]]},
                )
                client = clients[self._conn_of_device[i]]
                info = client.publish(self._telemetry_topics[i], payload, qos=QOS)
                if info.rc in _QUEUED:
                    self._published += 1
                else:
                    log.error("publish to %s failed: %s", self._telemetry_topics[i], info.rc)

    def _publish_status(self, clients: list[mqtt.Client], status: str, timeout_s: float) -> None:
        payload = status.encode()
        self._announce(clients, status_topic, lambda i: payload, f"{status!r} status", timeout_s)

    def _publish_locations(self, clients: list[mqtt.Client], timeout_s: float) -> None:
        system, lonlat = self.location_coord_system, self.fleet.lonlat
        if system is None or lonlat is None:
            return
        now = self._clock()
        self._announce(
            clients,
            location_topic,
            lambda i: location_payload(float(lonlat[i, 0]), float(lonlat[i, 1]), now, system),
            "location",
            timeout_s,
        )

    def _announce(
        self,
        clients: list[mqtt.Client],
        topic: Callable[[str, str], str],
        payload: Callable[[int], bytes],
        what: str,
        timeout_s: float,
    ) -> None:
        """One message per device (``payload(i)`` on ``topic(gateway, device)``), waited
        for up to ``timeout_s``."""
        infos = [
            clients[self._conn_of_device[i]].publish(topic(g, d), payload(i), qos=QOS)
            for i, (g, d) in enumerate(
                zip(self.fleet.gateway_id.tolist(), self.fleet.device_id.tolist(), strict=True)
            )
        ]
        # Messages queued while disconnected (NO_CONN) are resent on reconnection but
        # cannot be waited for; they count as pending.
        sent = [info for info in infos if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS]
        deadline = time.monotonic() + timeout_s
        for info in sent:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        pending = len(infos) - sum(info.is_published() for info in sent)
        if pending:
            log.warning("%d %s messages not acknowledged", pending, what)

    def _drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._acked + self._rejected >= self._published:
                    return
            time.sleep(0.01)

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _mid: int,
        reason_code: ReasonCode,
        _properties: Properties,
    ) -> None:
        with self._lock:
            if reason_code.is_failure:
                self._rejected += 1
            else:
                self._acked += 1


def _interleaved_order(fleet: Fleet) -> np.ndarray:
    """Device positions taking one device of each gateway in turn, spreading load."""
    frame = pd.DataFrame({"gateway": fleet.gateway_id, "device": fleet.device_id})
    frame["turn"] = frame.groupby("gateway", sort=True).cumcount()
    return frame.sort_values(["turn", "gateway", "device"], kind="stable").index.to_numpy()
