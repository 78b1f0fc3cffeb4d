"""Mosquitto as the demo and the test environment start it: no anonymous clients, the ACL holds.

Checked from outside, with clients the project did not write: paho-mqtt used directly,
and Mosquitto's own ``mosquitto_pub`` / ``mosquitto_sub`` (Debian's mosquitto-clients;
those tests skip without them). The accounts are those of ``cityops.services``
(deploy/mosquitto/acl): ``cityops-bridge`` may only read telemetry, a gateway (username
= its gateway id) may only publish under its own id, ``cityops-simulator`` for any
gateway, ``cityops-test`` anything (the tests' own clients).

The anonymous, wrong-password and bridge tests run on the test environment's broker
itself; those that need gateway accounts start a Mosquitto of their own with the
gateways registered (``start_mosquitto(gateways=...)``), as the demo does for its city.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from cityops.services import (
    BRIDGE_USER,
    TEST_PASSWORD_ENV,
    TEST_USER,
    Service,
    mosquitto_clients_env,
    start_mosquitto,
)
from infra import kafka as topics
from infra.settings import Settings
from sensors.bridge import MqttBridge
from simulations.gateways import GatewaySimulator, MqttParams, gateway_password
from simulations.scenarios import Baseline, Fleet
from tests.helpers.brokers import bridge, read_topic, shared_logins, topic_size
from tests.helpers.builders import senml, sensor
from tests.helpers.city import city_with
from tests.helpers.faults import service_dir
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.integration

PROTOCOLS = {"mqtt-3.1.1": MQTTProtocolVersion.MQTTv311, "mqtt-5": MQTTProtocolVersion.MQTTv5}
NOT_AUTHORIZED = 135  # MQTT 5 reason code; paho maps 3.1.1's CONNACK return code 5 to it
MOSQUITTO_CLIENTS = shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")
# When absent: add mosquitto-clients to the `install_debs "the tests" ...` line of
# scripts/test.sh.
needs_clients = pytest.mark.skipif(
    not MOSQUITTO_CLIENTS, reason="mosquitto-clients (mosquitto_pub, mosquitto_sub) not installed"
)


def full_access_password() -> str:
    return os.environ[TEST_PASSWORD_ENV]


# -- paho, used directly ------------------------------------------------------------------


class Paho:
    """A paho client with ``login`` (None: anonymous); records CONNACKs and messages."""

    def __init__(
        self, settings: Settings, protocol: MQTTProtocolVersion, login: tuple[str, str] | None
    ) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        if login is not None:
            self.client.username_pw_set(*login)
        self.client.reconnect_delay_set(5, 5)  # a refused client does not hammer the broker
        self.connacks: list[ReasonCode] = []
        self.answered = threading.Event()
        self.subscribed = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self.arrived = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(settings.mqtt_host, settings.mqtt_port)
        self.client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connacks.append(reason)
        self.answered.set()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self.arrived:
            self.messages.append((message.topic, bytes(message.payload)))
            self.arrived.notify_all()

    def connack(self) -> ReasonCode:
        assert self.answered.wait(10), "no CONNACK"
        return self.connacks[0]

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """QoS 1; the PUBACK's reason code (always success in 3.1.1)."""
        acked: list[ReasonCode] = []
        done = threading.Event()

        def on_publish(_c: Any, _u: Any, _mid: int, reason: ReasonCode, _p: Any) -> None:
            acked.append(reason)
            done.set()

        self.client.on_publish = on_publish
        self.client.publish(topic, payload, qos=1)
        assert done.wait(10), f"no PUBACK for {topic}"
        return acked[0]

    def wait_for(self, payload: bytes) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: payload in [p for _, p in self.messages], 10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.parametrize("protocol", PROTOCOLS.values(), ids=PROTOCOLS.keys())
def test_anonymous_clients_are_refused(settings: Settings, protocol: MQTTProtocolVersion) -> None:
    anonymous = Paho(settings, protocol, None)
    tester = Paho(settings, protocol, (TEST_USER, full_access_password()))
    try:
        refused = anonymous.connack()
        assert refused.is_failure
        assert refused.value == NOT_AUTHORIZED, refused
        # The same client with a login is let in: the refusal is about the login.
        assert not tester.connack().is_failure
    finally:
        anonymous.close()
        tester.close()


@pytest.mark.parametrize("protocol", PROTOCOLS.values(), ids=PROTOCOLS.keys())
def test_a_wrong_password_or_an_unknown_user_is_refused(
    settings: Settings, protocol: MQTTProtocolVersion
) -> None:
    logins = {
        "wrong password": (BRIDGE_USER, settings.mqtt_password + "x"),
        "unknown user": ("cityops-nobody", settings.mqtt_password),
        "right password": (BRIDGE_USER, settings.mqtt_password),
    }
    clients = {name: Paho(settings, protocol, login) for name, login in logins.items()}
    try:
        answers = {name: c.connack() for name, c in clients.items()}
        assert answers["wrong password"].value == NOT_AUTHORIZED, answers
        assert answers["unknown user"].value == NOT_AUTHORIZED, answers
        assert not answers["right password"].is_failure, answers
    finally:
        for c in clients.values():
            c.close()


@pytest.mark.parametrize("protocol", PROTOCOLS.values(), ids=PROTOCOLS.keys())
def test_the_bridge_account_cannot_publish_telemetry(
    settings: Settings, unique: str, protocol: MQTTProtocolVersion
) -> None:
    """A message the bridge's account publishes under a gateway's topic is dropped by the
    broker (MQTT 5: PUBACK "not authorized"); the test account's, sent after it, arrives."""
    topic = f"cityops/gw-{unique}/wl-{unique}/telemetry"
    watcher = Paho(settings, MQTTProtocolVersion.MQTTv5, (TEST_USER, full_access_password()))
    publisher = Paho(settings, protocol, (BRIDGE_USER, settings.mqtt_password))
    tester = Paho(settings, protocol, (TEST_USER, full_access_password()))
    try:
        assert not watcher.connack().is_failure
        watcher.client.subscribe(f"cityops/gw-{unique}/#", qos=1)
        assert watcher.subscribed.wait(10)
        assert not publisher.connack().is_failure
        assert not tester.connack().is_failure
        answer = publisher.publish(topic, b"from the bridge")
        if protocol == MQTTProtocolVersion.MQTTv5:
            assert answer.value == NOT_AUTHORIZED, answer
        # Acknowledged (refused) before the marker is sent: had the broker routed it, it
        # would be in the watcher's session ahead of the marker.
        assert not tester.publish(topic, b"marker").is_failure
        watcher.wait_for(b"marker")
        assert [p for _, p in watcher.messages] == [b"marker"]
    finally:
        for c in (watcher, publisher, tester):
            c.close()


# -- mosquitto_pub / mosquitto_sub ------------------------------------------------------------


def cli(tool: str, settings: Settings, login: tuple[str, str] | None, *args: str) -> Any:
    """Run mosquitto_pub or mosquitto_sub against the broker; the password goes in the
    tool's option file, never on its command line."""
    with tempfile.TemporaryDirectory(prefix="mqtt-auth-cli-") as config:
        env = mosquitto_clients_env(*(login or ("", "")), Path(config))
        command = [tool, "-h", settings.mqtt_host, "-p", str(settings.mqtt_port), *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


@needs_clients
@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_mosquitto_clients_need_a_login(settings: Settings, unique: str, version: str) -> None:
    topic = f"cityops/gw-{unique}/wl-{unique}/telemetry"
    common = ["-V", version, "-q", "1", "-t", topic]
    anonymous_pub = cli("mosquitto_pub", settings, None, *common, "-m", "x")
    anonymous_sub = cli("mosquitto_sub", settings, None, *common, "-C", "1", "-W", "5")
    wrong = cli("mosquitto_pub", settings, (TEST_USER, "not-it"), *common, "-m", "x")
    for refused in (anonymous_pub, anonymous_sub, wrong):
        assert refused.returncode != 0
        assert "not authori" in refused.stderr.lower(), refused.stderr
    tester = (TEST_USER, full_access_password())
    accepted = cli("mosquitto_pub", settings, tester, *common, "-m", "x")
    assert accepted.returncode == 0, accepted.stderr


@needs_clients
def test_mosquitto_sub_as_the_bridge_reads_what_the_simulator_publishes(
    settings: Settings, unique: str
) -> None:
    """From the C clients too: the bridge's account may subscribe, the simulator's may
    publish, the bridge's may not (MQTT 5: its PUBACK says 135, not authorized).

    The subscriber subscribes in a persistent session and leaves (``-E``); what is
    published meanwhile waits in the session, and it comes back for it.
    """
    topic = f"cityops/gw-{unique}/wl-{unique}/telemetry"
    common = ["-V", "mqttv5", "-q", "1", "-t", topic]
    session = ["-c", "-i", f"sub-{unique}", "-x", "60"]
    as_bridge = (BRIDGE_USER, settings.mqtt_password)
    subscribed = cli("mosquitto_sub", settings, as_bridge, *common, *session, "-E")
    assert subscribed.returncode == 0, subscribed.stderr
    from_bridge = cli("mosquitto_pub", settings, as_bridge, *common, "-m", "from the bridge", "-d")
    as_simulator = (settings.sim_mqtt_username, settings.sim_mqtt_password)
    simulator = cli("mosquitto_pub", settings, as_simulator, *common, "-m", "from a gateway")
    # -C 2: had the bridge's message been routed, both would be waiting in the session.
    got = cli("mosquitto_sub", settings, as_bridge, *common, *session, "-C", "2", "-W", "3")
    assert "RC:135" in from_bridge.stdout, from_bridge.stdout
    assert simulator.returncode == 0, simulator.stderr
    assert simulator.stderr == ""  # mosquitto_pub warns here when a publish is refused
    assert got.stdout.splitlines() == ["from a gateway"], (got.stdout, got.stderr)


# -- gateways ------------------------------------------------------------------------------


@dataclass
class GatewayBroker:
    """A Mosquitto of the test's own with gateway accounts, and settings pointing at it."""

    service: Service
    workdir: Path
    gateways: list[str]
    settings: Settings  # the bridge's account; the simulator logs in per gateway

    def passwords(self) -> list[str]:
        env = self.service.env
        secret = env["CITYOPS_SIM_GATEWAY_SECRET"]
        return [
            env["CITYOPS_MQTT_PASSWORD"],
            env["CITYOPS_SIM_MQTT_PASSWORD"],
            env["CITYOPS_TEST_MQTT_PASSWORD"],
            secret,
            *(gateway_password(secret, g) for g in self.gateways),
        ]


@pytest.fixture
def gateway_broker(settings: Settings, unique: str) -> Iterator[GatewayBroker]:
    gateways = [f"gw-{unique}-{k}" for k in range(3)]
    with service_dir("cityops-mqtt-auth-") as workdir:
        # The test environment's logins (the helpers' and the settings' accounts work on it).
        service = start_mosquitto(workdir, accounts=shared_logins(), gateways=gateways)
        try:
            env = service.env
            on_broker = settings.model_copy(
                update={
                    "mqtt_port": int(env["CITYOPS_MQTT_PORT"]),
                    "mqtt_username": env["CITYOPS_MQTT_USERNAME"],
                    "mqtt_password": env["CITYOPS_MQTT_PASSWORD"],
                    "sim_gateway_secret": SecretStr(env["CITYOPS_SIM_GATEWAY_SECRET"]),
                }
            )
            yield GatewayBroker(service, workdir, gateways, on_broker)
        finally:
            service.stop()


def gateway_login(broker: GatewayBroker, gateway: str) -> tuple[str, str]:
    secret = broker.service.env["CITYOPS_SIM_GATEWAY_SECRET"]
    return gateway, gateway_password(secret, gateway)


@pytest.mark.parametrize("protocol", PROTOCOLS.values(), ids=PROTOCOLS.keys())
def test_a_gateway_cannot_publish_under_another_gateways_topic(
    gateway_broker: GatewayBroker, unique: str, protocol: MQTTProtocolVersion
) -> None:
    """Gateway A's reading for gateway B's device, on B's topic, never reaches the
    bridge's subscription (it would be a valid reading if it did); A's own one does."""
    settings = gateway_broker.settings
    gw_a, gw_b = gateway_broker.gateways[:2]
    dev_a, dev_b = f"wl-{unique}-a", f"wl-{unique}-b"
    app = city_with(settings, [sensor(dev_a, gateway_id=gw_a), sensor(dev_b, gateway_id=gw_b)])
    running = bridge(settings, app, f"b-{unique}")
    gateway_a = Paho(settings, protocol, gateway_login(gateway_broker, gw_a))
    try:
        assert running.wait_connected(15)
        assert not gateway_a.connack().is_failure
        foreign = gateway_a.publish(f"cityops/{gw_b}/{dev_b}/telemetry", senml(dev_b, 99.0))
        if protocol == MQTTProtocolVersion.MQTTv5:
            assert foreign.value == NOT_AUTHORIZED, foreign
        own = gateway_a.publish(f"cityops/{gw_a}/{dev_a}/telemetry", senml(dev_a, 1.0))
        assert not own.is_failure, own
        names = topics.Topics.of(settings)
        forwarded = read_topic(settings, names.telemetry, 1)
        assert [orjson.loads(r.value)["device_id"] for r in forwarded] == [dev_a]
        assert running.metrics_dict()["received"] == 1
        assert topic_size(settings, names.deadletter) == 0
    finally:
        gateway_a.close()
        running.stop()
        app.close()
    log_text = (gateway_broker.workdir / "mosquitto.log").read_text()
    assert f"u'{gw_a}'" in log_text  # the broker logs who logged in...
    assert not [p for p in gateway_broker.passwords() if p in log_text]  # ...never a password


def fleet_of(gateways: list[str], unique: str, per_gateway: int = 4) -> Fleet:
    devices = [(f"wl-{unique}-{g[-1]}{k}", g) for g in gateways for k in range(per_gateway)]
    n = len(devices)
    return Fleet(
        device_id=np.array([d for d, _ in devices], dtype=object),
        sensor_type=np.array(["water_level"] * n, dtype=object),
        gateway_id=np.array([g for _, g in devices], dtype=object),
        district_code=np.array(["310101"] * n, dtype=object),
    )


@pytest.mark.parametrize("per_gateway", [False, True], ids=["simulator-account", "per-gateway"])
def test_the_simulators_readings_flow_end_to_end(
    settings: Settings, gateway_broker: GatewayBroker, unique: str, per_gateway: bool
) -> None:
    """The simulator, logged in as the settings say (the simulator account on the test
    environment's broker, as in the demo; or each gateway as itself on a broker that has
    the gateways), through the broker and the bridge into Kafka: every reading and
    status message, none refused."""
    on = gateway_broker.settings if per_gateway else settings
    gateways = gateway_broker.gateways if per_gateway else [f"gw-{unique}-{k}" for k in range(3)]
    fleet = fleet_of(gateways, unique)
    specs = [
        sensor(d, gateway_id=g)
        for d, g in zip(fleet.device_id.tolist(), fleet.gateway_id.tolist(), strict=True)
    ]
    app = city_with(on, specs)
    running = bridge(on, app, f"b-{unique}")
    params = MqttParams.from_settings(on)
    try:
        assert running.wait_connected(15)
        simulator = GatewaySimulator(fleet, Baseline(seed=3), params, rate=500.0)
        logins = {p.username for p in simulator.connection_params}
        assert logins == (set(gateways) if per_gateway else {on.sim_mqtt_username})
        stats = simulator.run(max_messages=3 * len(fleet))
        assert stats.published == stats.acked == 3 * len(fleet)
        assert stats.rejected == 0
        names = topics.Topics.of(on)
        expected = stats.published + 2 * len(fleet)  # readings, then online and offline
        records = [orjson.loads(r.value) for r in read_topic(on, names.telemetry, expected)]
        kinds = Counter(r["kind"] for r in records)
        assert kinds == {"readings": stats.published, "status": 2 * len(fleet)}
        assert {(r["device_id"], r["gateway_id"]) for r in records} == {
            (s.device_id, s.gateway_id) for s in specs
        }
        assert topic_size(on, names.deadletter) == 0
    finally:
        running.stop()
        app.close()


# -- what is logged ---------------------------------------------------------------------------


def test_a_refused_bridge_says_why_and_logs_no_password(
    settings: Settings, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = f"not-the-password-{unique}"
    refused = settings.model_copy(update={"mqtt_password": wrong})
    caplog.set_level(logging.DEBUG)
    running = MqttBridge(refused, _NoProducer(), lambda _d: None, client_id=f"b-{unique}")
    running.start()
    try:
        wait_until(lambda: "not authorized" in caplog.text, 15, "the refusal logged")
        assert not running.connected
    finally:
        running.stop()
    assert f"as '{BRIDGE_USER}'" in caplog.text
    assert wrong not in caplog.text
    assert settings.mqtt_password not in caplog.text
    assert settings.mqtt_password not in repr(settings)


class _NoProducer:
    """The bridge never gets a message here: nothing to produce."""

    def send(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("a refused bridge forwarded something")

    def flush(self, timeout: float | None = None) -> None:
        return None
