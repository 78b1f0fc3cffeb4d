"""SIGKILL the telemetry writer and the sensor monitor mid-stream: nothing lost or doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cityops.bootstrap import city_app
from infra import kafka as topics
from infra.settings import Settings
from tests.builders import prepare, readings_message, send, sensor
from tests.integration.test_pipeline_kafka import count, wait_until

pytestmark = pytest.mark.integration


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CITYOPS_DATABASE_URL=settings.database_url,
        CITYOPS_KAFKA_TOPIC_PREFIX=settings.kafka_topic_prefix,
        CITYOPS_DATA_DIR=str(settings.data_dir),
        CITYOPS_LOG_LEVEL="WARNING",
    )
    return env


def start(name: str, settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cityops", name, *args], env=worker_env(settings)
    )


def test_sigkill_loses_and_duplicates_nothing(settings: Settings, unique: str) -> None:
    devices = [f"wl-{unique}-{i}" for i in range(20)]
    app = city_app(settings, pool_size=2, create_tables=True)
    prepare(settings, app, [sensor(d) for d in devices])
    producer = topics.make_producer(settings)
    rounds = 300

    # Every device breaches once (rounds 100-119) and clears after: one incident each.
    def level(r: int) -> float:
        return 65.0 if 100 <= r < 120 else 20.0

    procs = {"writer": start("writer", settings), "monitor": start("monitor", settings)}
    try:
        for r in range(rounds):
            send(
                settings,
                producer,
                [readings_message(d, {"water_level": level(r), "battery": 80.0}) for d in devices],
            )
            if r in (60, 110, 200):
                # Kill both in the middle of the stream, while they are busy.
                for name in procs:
                    procs[name].send_signal(signal.SIGKILL)
                    procs[name].wait(10)
                    procs[name] = start(name, settings)
        expected = rounds * len(devices) * 2
        wait_until(
            lambda: count(settings, "SELECT count(*) FROM readings") >= expected,
            timeout=120,
            what=f"{expected} readings",
        )
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
        for p in procs.values():
            p.terminate()
            p.wait(15)
        producer.close()
        app.close()
