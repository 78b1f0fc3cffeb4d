"""SIGKILL the telemetry writer and the sensor monitor mid-stream, alone or in one
``cityops telemetry`` process, and switch between the two layouts: nothing lost or
doubled."""

from __future__ import annotations

import time
from functools import partial

import pytest

from infra import kafka as topics
from infra.settings import Settings
from tests.helpers.builders import readings_message, send, sensor
from tests.helpers.city import city_with
from tests.helpers.db import count, wait_for_readings
from tests.helpers.waiting import wait_until
from tests.helpers.workers import sigkill, start_worker, stop_all

pytestmark = pytest.mark.integration


SEPARATE = ("writer", "monitor")
COMBINED = ("telemetry",)


@pytest.mark.parametrize(
    "layouts",
    [
        pytest.param([SEPARATE] * 4, id="writer-and-monitor"),
        pytest.param([COMBINED] * 4, id="telemetry"),
        # After each kill the other layout takes over from the positions left behind.
        pytest.param([COMBINED, SEPARATE, COMBINED, SEPARATE], id="switching"),
    ],
)
def test_sigkill_loses_and_duplicates_nothing(
    settings: Settings, unique: str, layouts: list[tuple[str, ...]]
) -> None:
    devices = [f"wl-{unique}-{i}" for i in range(20)]
    app = city_with(settings, [sensor(d) for d in devices])
    producer = topics.make_producer(settings)
    rounds = 300

    # Every device breaches once (rounds 100-119) and clears after: one incident each.
    def level(r: int) -> float:
        return 65.0 if 100 <= r < 120 else 20.0

    kills = (60, 110, 200)
    procs = {name: start_worker(settings, name) for name in layouts[0]}
    try:
        for r in range(rounds):
            send(
                settings,
                producer,
                [readings_message(d, {"water_level": level(r), "battery": 80.0}) for d in devices],
            )
            if r in kills:
                # Kill them in the middle of the stream, while they are busy: once both
                # the writer and the monitor are within 10 rounds of what was sent.
                wait_until(
                    partial(both_past, settings, (r - 10) * len(devices)),
                    timeout=60,
                    what=f"writer and monitor busy at round {r}",
                )
                for proc in procs.values():
                    sigkill(proc)
                following = layouts[kills.index(r) + 1]
                procs = {name: start_worker(settings, name) for name in following}
        expected = rounds * len(devices) * 2
        wait_for_readings(settings, expected, timeout=120)
        time.sleep(2)  # would a duplicate still arrive?
        assert count(settings, "SELECT count(*) FROM readings") == expected
        assert (
            count(
                settings,
                "SELECT count(*) FROM (SELECT device_id, metric, ts FROM readings"
                " GROUP BY 1, 2, 3 HAVING count(*) > 1) d",
            )
            == 0
        )

        def all_cleared() -> bool:
            return all(
                not app.get_sensor(d).alarms
                and app.get_sensor(d).incident_seq.get("water_level_high") == 1
                for d in devices
            )

        wait_until(all_cleared, timeout=120, what="every alarm raised once and cleared")
        opened = count(
            settings,
            "SELECT count(*) FROM city_events WHERE topic LIKE %s",
            "%Incident.Opened",
        )
        assert opened == len(devices)
        raised = count(
            settings,
            "SELECT count(*) FROM city_events WHERE topic LIKE %s",
            "%Sensor.AlarmRaised",
        )
        assert raised == len(devices)
    finally:
        stop_all(list(procs.values()))
        producer.close()
        app.close()


def both_past(settings: Settings, messages: int) -> bool:
    return min(written(settings), monitored(settings, "sensor-monitor")) >= messages


def written(settings: Settings) -> int:
    """Messages the writer has stored: two readings each."""
    return count(settings, "SELECT count(*) FROM readings") // 2


def monitored(settings: Settings, group: str) -> int:
    """Records the monitor has recorded positions past, over the telemetry partitions."""
    return count(
        settings,
        "SELECT coalesce(sum(p), 0) FROM (SELECT max(notification_id) AS p FROM city_tracking"
        " WHERE application_name LIKE %s GROUP BY application_name) t",
        f"{group}|{topics.Topics.of(settings).telemetry}|%",
    )
