"""Kafka -> telemetry writer and sensor monitor -> PostgreSQL, on the real services: each
alone, and both on one consumer (``cityops telemetry``)."""

from __future__ import annotations

from contextlib import closing
from uuid import UUID

import orjson
import pytest

from cityops.bootstrap import city_app
from core.app import CityApp
from infra import kafka as topics
from infra.settings import Settings
from tests.helpers.brokers import read_topic
from tests.helpers.builders import prepare, readings_message, send, sensor, status_message
from tests.helpers.db import count
from tests.helpers.waiting import wait_until
from tests.helpers.workers import in_threads

pytestmark = pytest.mark.integration

# The two ways to run the writer and the monitor.
LAYOUTS = pytest.mark.parametrize(
    "layout", [("writer", "monitor"), ("telemetry",)], ids=["writer-and-monitor", "telemetry"]
)


@pytest.fixture
def app(settings: Settings):
    app = city_app(settings, pool_size=2, create_tables=True)
    yield app
    app.close()


@LAYOUTS
def test_readings_and_alarm_lifecycle(
    settings: Settings, app: CityApp, unique: str, layout: tuple[str, ...]
) -> None:
    wl = f"wl-{unique}"
    prepare(settings, app, [sensor(wl)])
    producer = topics.make_producer(settings)
    with closing(producer), in_threads(settings, *layout):
        levels = [20.0, 55.0, 56.0, 85.0, 60.0, 35.0]
        send(
            settings,
            producer,
            [readings_message(wl, {"water_level": v, "battery": 90.0}) for v in levels],
        )
        wait_until(
            lambda: count(settings, "SELECT count(*) FROM readings WHERE device_id=%s", wl) == 12,
            what="12 readings",
        )
        wait_until(
            lambda: (
                "water_level_high" not in app.get_sensor(wl).alarms
                and app.get_sensor(wl).incident_seq.get("water_level_high") == 1
            ),
            what="alarm raised then cleared",
        )
        s = app.get_sensor(wl)
        incident = app.get_incident(UUID(s.open_incidents["water_level_high"]))
        assert incident.alarm_status == "cleared"
        severities = [getattr(e, "severity", None) for e in app.events.get(incident.id)]
        # Raised at 55/56 cm, escalated at 85, stepped down at 60 (< 70), cleared at 35.
        assert severities[:3] == ["major", "critical", "major"]
        assert incident.grid_code == "310101001001001"
        assert incident.department_code == "310101-water"
        assert incident.status == "open"  # not yet acknowledged
        app.acknowledge_incident(incident.id, actor="user:op", reason="seen", correlation_id="t")
        assert app.get_incident(incident.id).status == "closed"
        # A new breach after closure opens a second incident, not a re-trigger of the first.
        send(settings, producer, [readings_message(wl, {"water_level": v}) for v in (70.0, 71.0)])
        wait_until(
            lambda: app.get_sensor(wl).incident_seq.get("water_level_high") == 2,
            what="second incident",
        )


@pytest.mark.parametrize("layout", [("monitor",), ("telemetry",)], ids=["monitor", "telemetry"])
def test_offline_status_opens_silent_incident(
    settings: Settings, app: CityApp, unique: str, layout: tuple[str, ...]
) -> None:
    dev = f"pm-{unique}"
    prepare(settings, app, [sensor(dev, "pm25")])
    producer = topics.make_producer(settings)
    with closing(producer), in_threads(settings, *layout):
        send(
            settings,
            producer,
            [readings_message(dev, {"pm25": 30.0}), status_message(dev, "offline")],
        )
        wait_until(lambda: app.get_sensor(dev).silent, what="silent sensor")
        inc = app.get_incident(UUID(app.get_sensor(dev).open_incidents["device_silent"]))
        assert inc.kind == "device_silent"
        assert inc.alarm_status == "active"
        send(settings, producer, [readings_message(dev, {"pm25": 31.0})])
        wait_until(lambda: not app.get_sensor(dev).silent, what="sensor back")
        assert app.get_incident(inc.id).alarm_status == "cleared"


@LAYOUTS
def test_corrupt_kafka_record_goes_to_dead_letter_and_the_stream_goes_on(
    settings: Settings, app: CityApp, unique: str, layout: tuple[str, ...]
) -> None:
    wl = f"wl-{unique}"
    prepare(settings, app, [sensor(wl)])
    names = topics.Topics.of(settings)
    producer = topics.make_producer(settings)
    producer.send(names.telemetry, key=wl.encode(), value=b'{"kind": "nonsense"}')
    send(settings, producer, [readings_message(wl, {"water_level": 12.0})])
    with closing(producer), in_threads(settings, *layout):
        wait_until(
            lambda: count(settings, "SELECT count(*) FROM readings WHERE device_id=%s", wl) == 1,
            what="the good reading",
        )
        letters = [orjson.loads(r.value) for r in read_topic(settings, names.deadletter, 2)]
        assert sorted(x["source"] for x in letters) == ["sensor-monitor", "telemetry-writer"]
        assert all(x["reason"].startswith("bad_message") for x in letters)
