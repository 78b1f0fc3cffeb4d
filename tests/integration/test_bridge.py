"""The MQTT bridge on real Mosquitto and Kafka: bad input, sharing, no loss."""

from __future__ import annotations

import time
from collections import Counter
from importlib import resources

import orjson
import pytest

from infra import kafka as topics
from infra.settings import Settings
from tests.helpers.brokers import bridge, publisher, read_topic
from tests.helpers.builders import readings_message, send, senml, sensor
from tests.helpers.city import city_with
from tests.helpers.db import count, wait_for_readings
from tests.helpers.waiting import wait_until
from tests.helpers.workers import in_threads

pytestmark = pytest.mark.integration


def test_bad_input_goes_to_dead_letter_and_ingestion_carries_on(
    settings: Settings, unique: str
) -> None:
    good = f"wl-{unique}"
    app = city_with(settings, [sensor(good)])
    running = bridge(settings, app, f"b-{unique}")
    assert running.wait_connected(15)
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
        stats = running.metrics_dict()
        assert stats["rejected_total"] == len(bad)
    finally:
        pub.loop_stop()
        running.stop()
        app.close()


def test_two_bridges_and_two_writers_share_without_loss_or_duplicates(
    settings: Settings, unique: str
) -> None:
    devices = [f"wl-{unique}-{i}" for i in range(50)]
    app = city_with(settings, [sensor(d) for d in devices])
    bridges = [bridge(settings, app, f"b{i}-{unique}") for i in range(2)]
    for b in bridges:
        assert b.wait_connected(15)
    pub = publisher(settings)
    n = 4_000
    try:
        with in_threads(settings, "writer", "writer"):
            time.sleep(3)  # both writers in the group
            infos = []
            base = time.time() - 3_600
            for i in range(n):
                d = devices[i % len(devices)]
                payload = senml(d, float(i), ts=base + i * 0.01)
                infos.append(pub.publish(f"cityops/gw-t/{d}/telemetry", payload, qos=1))
            for info in infos:
                info.wait_for_publish(30)
            wait_for_readings(settings, n, timeout=90)
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
                count(settings, "SELECT count(*) FROM telemetry_positions")
                == settings.kafka_partitions
            )
    finally:
        pub.loop_stop()
        for b in bridges:
            b.stop()
        app.close()


def test_bridge_crash_redelivers_unacknowledged(settings: Settings, unique: str) -> None:
    """A bridge that dies is replaced by one with the same client id: nothing is lost."""
    device = f"wl-{unique}"
    app = city_with(settings, [sensor(device)])
    first = bridge(settings, app, f"b-{unique}")
    assert first.wait_connected(15)
    first.stop()  # session kept: messages published now queue in the broker
    pub = publisher(settings)
    base = time.time() - 3_600
    for i in range(500):
        payload = senml(device, float(i), ts=base + i * 0.01, unit=None)
        pub.publish(f"cityops/gw-t/{device}/telemetry", payload, qos=1).wait_for_publish(5)
    second = bridge(settings, app, f"b-{unique}")
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
    dev = f"mh-{unique}"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    rules = settings.data_dir / "rules.yaml"
    text = resources.files("core.sensor").joinpath("rules.yaml").read_text()
    rules.write_text(text.replace("manhole_tilt: 120", "manhole_tilt: 2"))
    settings = settings.model_copy(update={"rules_file": rules})
    app = city_with(settings, [sensor(dev, "manhole_tilt")])
    producer = topics.make_producer(settings)
    try:
        with in_threads(settings, "monitor"):
            send(settings, producer, [readings_message(dev, {"tilt": 1.0})])
            wait_until(lambda: app.get_sensor(dev).silent, timeout=30, what="silence after 2 s")
            events = [type(e).__name__ for e in app.events.get(app.get_sensor(dev).id)]
            assert events == ["Registered", "WentSilent"]
    finally:
        producer.close()
        app.close()
