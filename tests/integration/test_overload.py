"""An overloaded pipeline on real Mosquitto, Kafka and PostgreSQL: held back, never dropped.

The bridge is throttled (its Kafka flushes are slowed) while a publisher sends far more
than it can take. The broker must hold what the bridge has not acknowledged: the bridge
never has more than its receive maximum in hand (plus one socket read), every publish is
acknowledged by the broker, and once the load stops every reading is stored exactly once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from infra import kafka as topics
from infra.settings import Settings
from sensors.mqtt_session import READ_BYTES
from tests.helpers.brokers import bridge, publisher
from tests.helpers.builders import senml, sensor
from tests.helpers.city import city_with
from tests.helpers.db import count, wait_for_readings
from tests.helpers.workers import in_threads

pytestmark = pytest.mark.integration

RECEIVE_MAXIMUM = 300
# A PUBLISH of this test is longer than this (topic and SenML body alone are).
PACKET_BYTES_AT_LEAST = 100


class SlowProducer:
    """A real producer whose every flush takes at least ``delay_s``: a slow Kafka."""

    def __init__(self, producer: Any, delay_s: float) -> None:
        self.producer = producer
        self.delay_s = delay_s

    def send(self, *args: Any, **kwargs: Any) -> Any:
        return self.producer.send(*args, **kwargs)

    def flush(self, timeout: float | None = None) -> None:
        time.sleep(self.delay_s)
        self.producer.flush(timeout=timeout)


def test_a_throttled_bridge_is_held_back_by_the_broker_and_loses_nothing(
    settings: Settings, unique: str
) -> None:
    devices = [f"wl-{unique}-{i}" for i in range(30)]
    app = city_with(settings, [sensor(d) for d in devices])
    producer = topics.make_producer(settings)
    # About 100 windows of 50 per second at most: ~5,000 msg/s is far above that.
    throttled = bridge(
        settings,
        app,
        f"b-{unique}",
        producer=SlowProducer(producer, 0.05),
        receive_maximum=RECEIVE_MAXIMUM,
        window_max=50,
    )
    assert throttled.wait_connected(15)
    pub = publisher(settings)
    n = 6_000
    held: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            held.append(throttled.pending_acks)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    base = time.time() - 3_600
    try:
        with in_threads(settings, "writer"):
            infos = []
            for i in range(n):
                d = devices[i % len(devices)]
                body = senml(d, float(i), ts=base + i * 0.01, unit=None)
                infos.append(pub.publish(f"cityops/gw-t/{d}/telemetry", body, qos=1))
            for info in infos:
                info.wait_for_publish(60)
            assert all(info.rc == 0 and info.is_published() for info in infos)
            published_at = time.monotonic()
            # The broker took everything while the bridge had forwarded only part of it.
            forwarded_then = throttled.metrics_dict()["forwarded"]
            assert forwarded_then < n
            wait_for_readings(settings, n, timeout=120)
            drained_s = time.monotonic() - published_at
            time.sleep(1)
            sampling.set()
            sampler.join(5)
            assert count(settings, "SELECT count(*) FROM readings") == n
            assert count(settings, "SELECT count(DISTINCT value) FROM readings") == n
            # Never more in hand than the broker may send unacknowledged, plus one read.
            assert max(held) <= RECEIVE_MAXIMUM + READ_BYTES // PACKET_BYTES_AT_LEAST
            assert max(held) >= RECEIVE_MAXIMUM // 2, "the bridge was never loaded"
            assert drained_s > 1.0, "the backlog should have taken the throttled bridge a while"
    finally:
        sampling.set()
        pub.loop_stop()
        throttled.stop()
        producer.close()
        app.close()
