"""``cityops telemetry`` takes over from a writer or a monitor that ran alone: each role
starts at its own stored position, so the role that is ahead repeats nothing and the
one behind catches up."""

from __future__ import annotations

import time

import pytest

from infra import kafka as topics
from infra.settings import Settings
from tests.helpers.builders import readings_message, send, sensor
from tests.helpers.city import city_with
from tests.helpers.db import count
from tests.helpers.faults import workers
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.integration

ROUNDS = 60


def level(r: int) -> float:
    """Each device breaches for rounds 20-39 and clears after: one alarm per pass."""
    return 65.0 if 20 <= r < 40 else 20.0


def raised(settings: Settings) -> int:
    """Alarms raised, over all the devices."""
    return count(
        settings, "SELECT count(*) FROM city_events WHERE topic LIKE %s", "%Sensor.AlarmRaised"
    )


def readings(settings: Settings) -> int:
    return count(settings, "SELECT count(*) FROM readings")


def doubled(settings: Settings) -> int:
    return count(
        settings,
        "SELECT count(*) FROM (SELECT device_id, metric, ts FROM readings"
        " GROUP BY 1, 2, 3 HAVING count(*) > 1) d",
    )


def monitored(settings: Settings) -> int:
    """Records the sensor monitor has recorded positions past, over all partitions."""
    return count(
        settings,
        "SELECT coalesce(sum(p), 0) FROM (SELECT max(notification_id) AS p FROM city_tracking"
        " WHERE application_name LIKE %s GROUP BY application_name) t",
        f"sensor-monitor|{topics.Topics.of(settings).telemetry}|%",
    )


def test_the_combined_consumer_takes_over_from_either_role(settings: Settings, unique: str) -> None:
    devices = [f"wl-{unique}-{i}" for i in range(5)]
    app = city_with(settings, [sensor(d) for d in devices])
    producer = topics.make_producer(settings)
    per_pass = ROUNDS * len(devices)

    def one_pass() -> None:
        for r in range(ROUNDS):
            send(
                settings,
                producer,
                [readings_message(d, {"water_level": level(r), "battery": 80.0}) for d in devices],
            )

    try:
        # The monitor alone sees the first pass: an alarm per device, no readings.
        one_pass()
        with workers(settings, "monitor"):
            wait_until(lambda: monitored(settings) == per_pass, 60, "the monitor alone")
            wait_until(lambda: raised(settings) == len(devices), 30, "the first alarms")
        assert readings(settings) == 0

        # The combined consumer: the writer catches up from the start, the monitor
        # repeats none of the first pass (a second alarm each if it did).
        with workers(settings, "telemetry") as running:
            wait_until(lambda: readings(settings) == per_pass * 2, 60, "the writer catching up")
            time.sleep(2)
            assert running.dead() == []
        assert raised(settings) == len(devices)
        assert monitored(settings) == per_pass

        # The writer alone takes a second pass; then the combined consumer: the monitor
        # catches up (a second alarm each), the writer writes nothing twice.
        one_pass()
        with workers(settings, "writer"):
            wait_until(lambda: readings(settings) == per_pass * 4, 60, "the writer alone")
        with workers(settings, "telemetry") as running:
            wait_until(lambda: monitored(settings) == 2 * per_pass, 60, "the monitor catching up")
            wait_until(lambda: raised(settings) == 2 * len(devices), 30, "the second alarms")
            time.sleep(2)
            assert running.dead() == []
        assert readings(settings) == per_pass * 4
        assert doubled(settings) == 0
        assert raised(settings) == 2 * len(devices)
    finally:
        producer.close()
        app.close()
