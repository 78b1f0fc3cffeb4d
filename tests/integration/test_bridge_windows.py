"""The windowed bridge on real brokers: SIGKILL with windows in flight, MQTT 3.1.1 (amqtt)."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from cityops.services import start_amqtt
from infra import kafka as topics
from infra.settings import Settings
from tests.helpers.brokers import bridge, publisher, read_topic, topic_size
from tests.helpers.builders import senml, sensor
from tests.helpers.city import city_with
from tests.helpers.db import count, wait_for_readings
from tests.helpers.waiting import wait_until
from tests.helpers.workers import in_threads, sigkill, start_worker, stop_all

pytestmark = pytest.mark.integration


def reading(device: str, ts: float, value: float) -> bytes:
    return senml(device, value, ts=ts, unit=None)


def kafka_head(settings: Settings) -> int:
    """Records on the telemetry topic now (all partitions)."""
    return topic_size(settings, topics.Topics.of(settings).telemetry)


def test_bridge_sigkilled_with_windows_in_flight_loses_and_duplicates_nothing(
    settings: Settings, unique: str
) -> None:
    devices = [f"wl-{unique}-{i}" for i in range(40)]
    app = city_with(settings, [sensor(d) for d in devices])
    client_id = f"bridge-{unique}"
    bridges = [start_worker(settings, "bridge", "--client-id", client_id)]
    pub = publisher(settings)
    n = 12_000
    base = time.time() - 3_600
    kills = 0
    try:
        with in_threads(settings, "writer"):
            wait_until(
                lambda: bridges[-1].poll() is None and kafka_head(settings) >= 0, 15, "bridge"
            )
            time.sleep(3)  # subscribed
            infos = []
            for i in range(n):
                d = devices[i % len(devices)]
                topic = f"cityops/gw-t/{d}/telemetry"
                infos.append(pub.publish(topic, reading(d, base + i * 0.01, float(i)), qos=1))
                if i in (3_000, 7_000):
                    # Kill only once the bridge is mid-stream: some forwarded, more arriving.
                    # A first bridge on busy shared cores once took over 30 s to forward 500.
                    wait_until(lambda: kafka_head(settings) > 500, 90, "the bridge forwarding")
                    sigkill(bridges[-1])
                    kills += 1
                    bridges.append(start_worker(settings, "bridge", "--client-id", client_id))
            for info in infos:
                info.wait_for_publish(60)
            wait_for_readings(settings, n, timeout=120)
            time.sleep(2)
            assert kills == 2
            assert count(settings, "SELECT count(*) FROM readings") == n
            assert count(settings, "SELECT count(DISTINCT value) FROM readings") == n
            # Every message reached Kafka at least once (a window killed after its flush and
            # before its acks is forwarded again), and the writer stored each one once.
            forwarded = read_topic(settings, topics.Topics.of(settings).telemetry, n, timeout=60)
            assert len(forwarded) >= n
    finally:
        pub.loop_stop()
        stop_all(bridges)
        app.close()


def test_bridge_on_mqtt_311_with_the_pure_python_broker(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    """The demo's fallback broker (amqtt, MQTT 3.1.1 only): the same session, protocol 4."""
    broker = start_amqtt(tmp_path)
    port = int(broker.env["CITYOPS_MQTT_PORT"])
    settings = settings.model_copy(update={"mqtt_port": port, "mqtt_protocol": 3})
    device = f"wl-{unique}"
    app = city_with(settings, [sensor(device)])
    running = bridge(settings, app, f"b-{unique}")
    pub = None
    try:
        assert running.wait_connected(20)
        pub = publisher(settings)
        base = time.time() - 60
        for i in range(300):
            topic = f"cityops/gw-t/{device}/telemetry"
            pub.publish(topic, reading(device, base + i * 0.01, float(i)), qos=1).wait_for_publish(
                5
            )
        got = read_topic(settings, topics.Topics.of(settings).telemetry, 300)
        values = sorted(orjson.loads(r.value)["readings"][0]["value"] for r in got)
        assert values == [float(i) for i in range(300)]
        assert running.metrics_dict()["forwarded"] == 300
    finally:
        if pub is not None:
            pub.loop_stop()
        running.stop()
        app.close()
        broker.stop()
