"""The bridge under a batch of hostile MQTT payloads, on real Mosquitto, Kafka and
PostgreSQL: each is dead-lettered with its reason, and the good readings around them
reach the readings table.

``test_bridge.py`` has one payload per reason code; these are the shapes fuzzing the
decoder turned up (``tests/unit/test_senml_fuzz.py``), among them values nested past the
interpreter's recursion limit, which the bridge once left neither forwarded, nor
dead-lettered, nor acknowledged.
"""

from __future__ import annotations

import time
from collections import Counter

import orjson
import pytest

from infra import kafka as topics
from infra.settings import Settings
from tests.helpers.brokers import bridge, publisher, read_topic
from tests.helpers.builders import senml, sensor
from tests.helpers.city import city_with
from tests.helpers.db import rows, wait_for_readings
from tests.helpers.workers import in_threads

pytestmark = pytest.mark.integration

DEEP = b"[" * 1_020 + b"]" * 1_020  # within orjson's 1,024 levels, past repr's limit


def hostile(device: str) -> list[tuple[str, str, bytes]]:
    """(reason, channel, payload) of each hostile message for ``device``."""
    name = f"{device}:".encode()
    many = b"[" + b",".join([b'{"n":"' + name + b'nonsense","v":1}'] * 200) + b"]"
    return [
        (
            "wrong_type",
            "telemetry",
            b'[{"bn":"' + name + b'","n":"water_level","v":' + DEEP + b"}]",
        ),
        ("wrong_type", "telemetry", b'{"metrics":{"water_level":' + DEEP + b"}}"),
        ("bad_status", "status", b'{"status":' + DEEP + b"}"),
        ("not_json", "telemetry", b"[" * 5_000),
        (
            "not_utf8",
            "telemetry",
            '[{"n":"water_level","v":1,"x":"\ud800"}]'.encode("utf-8", "surrogatepass"),
        ),
        ("not_json", "telemetry", b'[{"n":"water_level","v":1,"x":"\\ud800"}]'),
        ("bad_senml", "telemetry", b'[{"n":"water_level\\u0000","v":1}]'),
        ("bad_senml", "telemetry", '[{"n":"ẅater_level","v":1}]'.encode()),
        ("non_finite", "telemetry", b'[{"n":"water_level","v":' + b"9" * 5_000 + b"}]"),
        ("non_finite", "telemetry", b'{"metrics":{"water_level":-Infinity}}'),
        ("unknown_metric", "telemetry", many),
        ("bad_senml", "telemetry", b"[null]"),
        ("not_json", "telemetry", bytes(range(1, 32))),
        ("not_utf8", "telemetry", bytes(range(128, 256))),
    ]


def test_hostile_payloads_are_dead_lettered_and_the_stream_goes_on(
    settings: Settings, unique: str
) -> None:
    device = f"wl-{unique}"
    app = city_with(settings, [sensor(device)])
    running = bridge(settings, app, f"b-{unique}")
    assert running.wait_connected(15)
    pub = publisher(settings)
    bad = hostile(device)
    now = time.time()
    try:
        with in_threads(settings, "writer"):
            # Good, the hostile batch, good again.
            for t, payload in [
                ("telemetry", senml(device, 10.0, ts=now - 2)),
                *((channel, payload) for _, channel, payload in bad),
                ("telemetry", senml(device, 11.0, ts=now - 1)),
                ("telemetry", senml(device, 12.0, ts=now)),
            ]:
                topic = f"cityops/gw-t/{device}/{t}"
                pub.publish(topic, payload, qos=1).wait_for_publish(5)
            letters = read_topic(settings, topics.Topics.of(settings).deadletter, len(bad))
            assert Counter(orjson.loads(r.value)["reason"] for r in letters) == Counter(
                reason for reason, _, _ in bad
            )
            wait_for_readings(settings, 3, timeout=30)
            stored = rows(
                settings, "SELECT value FROM readings WHERE device_id = %s ORDER BY ts", device
            )
            assert [v for (v,) in stored] == [10.0, 11.0, 12.0]
        stats = running.metrics_dict()
        assert stats["rejected_total"] == len(bad)
        assert stats["forwarded"] == 3
    finally:
        pub.loop_stop()
        running.stop()
        app.close()
