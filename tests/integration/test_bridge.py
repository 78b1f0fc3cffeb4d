"""The MQTT bridge on real Mosquitto and Kafka: bad input, sharing, no loss."""

from __future__ import annotations

import threading
import time
from collections import Counter

import orjson
import paho.mqtt.client as mqtt
import pytest
from kafka import KafkaConsumer
from paho.mqtt.enums import CallbackAPIVersion

from cityops.bootstrap import DeviceRegistry, city_app, run_in_thread, run_writer
from infra import kafka as topics
from infra.settings import Settings
from sensors.bridge import MqttBridge
from tests.builders import prepare, sensor
from tests.integration.test_pipeline_kafka import count, wait_until

pytestmark = pytest.mark.integration


def publisher(settings: Settings) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(500)
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.loop_start()
    return client


def read_topic(settings: Settings, topic: str, expect: int, timeout: float = 30) -> list:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=300).values():
            out.extend(records)
    # Anything beyond what was expected would be a duplicate: look a little longer.
    for records in consumer.poll(timeout_ms=1_000).values():
        out.extend(records)
    consumer.close()
    return out


def senml(device: str, v: float) -> bytes:
    return orjson.dumps(
        [{"bn": f"{device}:", "bt": time.time(), "n": "water_level", "u": "cm", "v": v}]
    )


def test_bad_input_goes_to_dead_letter_and_ingestion_carries_on(
    settings: Settings, unique: str
) -> None:
    good = f"wl-{unique}"
    app = city_app(settings, pool_size=2, create_tables=True)
    prepare(settings, app, [sensor(good)])
    bridge = MqttBridge(
        settings, topics.make_producer(settings), DeviceRegistry(app), client_id=f"b-{unique}"
    )
    bridge.start()
    assert bridge.wait_connected(15)
    pub = publisher(settings)
    future = time.time() + 86_400
    bad = {
        "not_json": (f"cityops/gw-t/{good}/telemetry", b"{not json"),
        "non_finite": (
            f"cityops/gw-t/{good}/telemetry",
            b'[{"bn":"' + good.encode() + b':","n":"water_level","v":NaN}]',
        ),
        "wrong_type": (
            f"cityops/gw-t/{good}/telemetry",
            orjson.dumps([{"bn": f"{good}:", "n": "water_level", "v": "high"}]),
        ),
        "unknown_device": ("cityops/gw-t/wl-nobody/telemetry", senml("wl-nobody", 3.0)),
        # A registered device, but under another gateway's topic.
        "foreign_device": (f"cityops/gw-other/{good}/telemetry", senml(good, 5.0)),
        "future_timestamp": (
            f"cityops/gw-t/{good}/telemetry",
            orjson.dumps([{"bn": f"{good}:", "bt": future, "n": "water_level", "v": 1.0}]),
        ),
        "oversized": (f"cityops/gw-t/{good}/telemetry", b"[" + b" " * 20_000 + b"]"),
        "topic_shape": ("cityops/gw-t/telemetry", senml(good, 1.0)),
    }
    try:
        # Good, each bad one, good again: the bad ones must not stop the stream.
        pub.publish(f"cityops/gw-t/{good}/telemetry", senml(good, 10.0), qos=1).wait_for_publish(5)
        for t, payload in bad.values():
            pub.publish(t, payload, qos=1).wait_for_publish(5)
        pub.publish(f"cityops/gw-t/{good}/telemetry", senml(good, 11.0), qos=1).wait_for_publish(5)
        letters = read_topic(settings, topics.Topics.of(settings).deadletter, len(bad))
        reasons = Counter(orjson.loads(r.value)["reason"] for r in letters)
        assert reasons == Counter(bad.keys())
        for r in letters:
            body = orjson.loads(r.value)
            assert body["detail"], body
            assert body["source"] == "mqtt"
        forwarded = read_topic(settings, topics.Topics.of(settings).telemetry, 2)
        values = [orjson.loads(r.value)["readings"][0]["value"] for r in forwarded]
        assert values == [10.0, 11.0]
        stats = bridge.metrics_dict()
        assert stats["rejected_total"] == len(bad)
    finally:
        pub.loop_stop()
        bridge.stop()
        app.close()


def test_two_bridges_and_two_writers_share_without_loss_or_duplicates(
    settings: Settings, unique: str
) -> None:
    devices = [f"wl-{unique}-{i}" for i in range(50)]
    app = city_app(settings, pool_size=2, create_tables=True)
    prepare(settings, app, [sensor(d) for d in devices])
    bridges = [
        MqttBridge(
            settings,
            topics.make_producer(settings),
            DeviceRegistry(app),
            client_id=f"b{i}-{unique}",
        )
        for i in range(2)
    ]
    for b in bridges:
        b.start()
    for b in bridges:
        assert b.wait_connected(15)
    writers = [run_in_thread(lambda s: run_writer(settings, s), f"writer{i}") for i in range(2)]
    pub = publisher(settings)
    n = 4_000
    try:
        time.sleep(3)  # both writers in the group
        infos = []
        base = time.time() - 3_600
        for i in range(n):
            d = devices[i % len(devices)]
            payload = orjson.dumps(
                [
                    {
                        "bn": f"{d}:",
                        "bt": base + i * 0.01,
                        "n": "water_level",
                        "u": "cm",
                        "v": float(i),
                    }
                ]
            )
            infos.append(pub.publish(f"cityops/gw-t/{d}/telemetry", payload, qos=1))
        for info in infos:
            info.wait_for_publish(30)
        wait_until(
            lambda: count(settings, "SELECT count(*) FROM readings") >= n,
            timeout=90,
            what=f"{n} readings",
        )
        time.sleep(2)
        assert count(settings, "SELECT count(*) FROM readings") == n
        assert count(settings, "SELECT count(DISTINCT value) FROM readings") == n
        # Both bridges took part (shared subscription) and both writers own partitions.
        shares = [b.metrics_dict()["forwarded"] for b in bridges]
        assert all(s > 0 for s in shares), shares
        assert sum(shares) >= n
        owners = count(settings, "SELECT count(DISTINCT consumer) FROM telemetry_positions")
        assert owners == 1  # one consumer group...
        assert (
            count(settings, "SELECT count(*) FROM telemetry_positions") == settings.kafka_partitions
        )
    finally:
        pub.loop_stop()
        for b in bridges:
            b.stop()
        for _, stop in writers:
            stop.set()
        for t, _ in writers:
            t.join(15)
        app.close()


def test_bridge_crash_redelivers_unacknowledged(settings: Settings, unique: str) -> None:
    """A bridge that dies is replaced by one with the same client id: nothing is lost."""
    device = f"wl-{unique}"
    app = city_app(settings, pool_size=2, create_tables=True)
    prepare(settings, app, [sensor(device)])
    first = MqttBridge(
        settings, topics.make_producer(settings), DeviceRegistry(app), client_id=f"b-{unique}"
    )
    first.start()
    assert first.wait_connected(15)
    first.stop()  # session kept: messages published now queue in the broker
    pub = publisher(settings)
    base = time.time() - 3_600
    for i in range(500):
        payload = orjson.dumps(
            [{"bn": f"{device}:", "bt": base + i * 0.01, "n": "water_level", "v": float(i)}]
        )
        pub.publish(f"cityops/gw-t/{device}/telemetry", payload, qos=1).wait_for_publish(5)
    second = MqttBridge(
        settings, topics.make_producer(settings), DeviceRegistry(app), client_id=f"b-{unique}"
    )
    second.start()
    try:
        assert second.wait_connected(15)
        got = read_topic(settings, topics.Topics.of(settings).telemetry, 500)
        values = {orjson.loads(r.value)["readings"][0]["value"] for r in got}
        assert values == {float(i) for i in range(500)}
    finally:
        pub.loop_stop()
        second.stop()
        app.close()


def test_silence_without_data_opens_incident(settings: Settings, unique: str) -> None:
    from cityops.bootstrap import run_monitor
    from tests.builders import readings_message, send

    dev = f"mh-{unique}"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    rules = settings.data_dir / "rules.yaml"
    from importlib import resources

    text = resources.files("core.sensor").joinpath("rules.yaml").read_text()
    rules.write_text(text.replace("manhole_tilt: 120", "manhole_tilt: 2"))
    settings = settings.model_copy(update={"rules_file": rules})
    app = city_app(settings, pool_size=2, create_tables=True)
    prepare(settings, app, [sensor(dev, "manhole_tilt")])
    producer = topics.make_producer(settings)
    stop_flag = threading.Event()
    m, stop_m = run_in_thread(lambda s: run_monitor(settings, s), "monitor")
    try:
        send(settings, producer, [readings_message(dev, {"tilt": 1.0})])
        wait_until(lambda: app.get_sensor(dev).silent, timeout=30, what="silence after 2 s")
        events = [type(e).__name__ for e in app.events.get(app.get_sensor(dev).id)]
        assert events == ["Registered", "WentSilent"]
    finally:
        stop_flag.set()
        stop_m.set()
        m.join(15)
        producer.close()
        app.close()
