"""The windowed bridge on real brokers: SIGKILL with windows in flight, MQTT 3.1.1 (amqtt)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cityops.bootstrap import DeviceRegistry, city_app, run_in_thread, run_writer
from cityops.services import start_amqtt
from infra import kafka as topics
from infra.settings import Settings
from sensors.bridge import MqttBridge
from tests.builders import prepare, sensor
from tests.integration.test_bridge import publisher, read_topic
from tests.integration.test_crash import start
from tests.integration.test_pipeline_kafka import count, wait_until

pytestmark = pytest.mark.integration


def reading(device: str, ts: float, value: float) -> bytes:
    return orjson.dumps([{"bn": f"{device}:", "bt": ts, "n": "water_level", "v": value}])


def kafka_head(settings: Settings) -> int:
    """Records on the telemetry topic now (all partitions)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        topic = topics.Topics.of(settings).telemetry
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()


def test_bridge_sigkilled_with_windows_in_flight_loses_and_duplicates_nothing(
    settings: Settings, unique: str
) -> None:
    devices = [f"wl-{unique}-{i}" for i in range(40)]
    app = city_app(settings, pool_size=2, create_tables=True)
    prepare(settings, app, [sensor(d) for d in devices])
    client_id = f"bridge-{unique}"
    bridge = start("bridge", settings, "--client-id", client_id)
    writer, stop_writer = run_in_thread(lambda s: run_writer(settings, s), "writer")
    pub = publisher(settings)
    n = 12_000
    base = time.time() - 3_600
    kills = 0
    try:
        wait_until(lambda: bridge.poll() is None and kafka_head(settings) >= 0, 15, "bridge")
        time.sleep(3)  # subscribed
        infos = []
        for i in range(n):
            d = devices[i % len(devices)]
            topic = f"cityops/gw-t/{d}/telemetry"
            infos.append(pub.publish(topic, reading(d, base + i * 0.01, float(i)), qos=1))
            if i in (3_000, 7_000):
                # Kill only once the bridge is mid-stream: some forwarded, more arriving.
                wait_until(lambda: kafka_head(settings) > 500, 30, "the bridge forwarding")
                bridge.send_signal(signal.SIGKILL)
                bridge.wait(10)
                kills += 1
                bridge = start("bridge", settings, "--client-id", client_id)
        for info in infos:
            info.wait_for_publish(60)
        wait_until(
            lambda: count(settings, "SELECT count(*) FROM readings") >= n,
            timeout=120,
            what=f"{n} readings",
        )
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
        bridge.terminate()
        bridge.wait(15)
        stop_writer.set()
        writer.join(15)
        app.close()


def test_bridge_on_mqtt_311_with_the_pure_python_broker(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    """The demo's fallback broker (amqtt, MQTT 3.1.1 only): the same session, protocol 4."""
    broker = start_amqtt(tmp_path)
    port = int(broker.env["CITYOPS_MQTT_PORT"])
    settings = settings.model_copy(update={"mqtt_port": port, "mqtt_protocol": 3})
    device = f"wl-{unique}"
    app = city_app(settings, pool_size=2, create_tables=True)
    prepare(settings, app, [sensor(device)])
    bridge = MqttBridge(
        settings, topics.make_producer(settings), DeviceRegistry(app), client_id=f"b-{unique}"
    )
    bridge.start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    try:
        assert bridge.wait_connected(20)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        base = time.time() - 60
        for i in range(300):
            topic = f"cityops/gw-t/{device}/telemetry"
            pub.publish(topic, reading(device, base + i * 0.01, float(i)), qos=1).wait_for_publish(
                5
            )
        got = read_topic(settings, topics.Topics.of(settings).telemetry, 300)
        values = sorted(orjson.loads(r.value)["readings"][0]["value"] for r in got)
        assert values == [float(i) for i in range(300)]
        assert bridge.metrics_dict()["forwarded"] == 300
    finally:
        pub.loop_stop()
        bridge.stop()
        app.close()
        broker.stop()
