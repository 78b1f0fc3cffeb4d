"""A device says where it is over MQTT, in GCJ-02 or BD-09 as Chinese phones and maps
give it: published with Mosquitto's own ``mosquitto_pub`` to real Mosquitto, bridged to
Kafka in WGS-84, and the sensor monitor moves the device on the map (``Relocated``,
placed on the grid again); the fix's own scatter, an older fix and a bad one change
nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from cityops.bootstrap import projections, seed
from cityops.services import TEST_PASSWORD_ENV, TEST_USER, mosquitto_clients_env
from core.sensor import SensorSpec
from gis.china import from_wgs84
from gis.crs import distance_m
from gis.locator import CityLocator
from infra import kafka as topics
from infra.settings import Settings
from projections.runner import ProjectionWorker
from tests.helpers.brokers import bridge, read_topic
from tests.helpers.builders import offset
from tests.helpers.city import city_layers, city_with, places
from tests.helpers.db import rows
from tests.helpers.waiting import wait_until
from tests.helpers.workers import in_threads

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed"
    ),
]


def mosquitto_pub(settings: Settings, topic: str, body: dict[str, Any]) -> None:
    """Publish ``body`` at QoS 1 with Mosquitto's client (its password in an option file)."""
    with tempfile.TemporaryDirectory(prefix="location-pub-") as config:
        env = mosquitto_clients_env(TEST_USER, os.environ[TEST_PASSWORD_ENV], Path(config))
        command = ["mosquitto_pub", "-h", settings.mqtt_host, "-p", str(settings.mqtt_port)]
        command += ["-V", "mqttv5", "-q", "1", "-t", topic, "-m", orjson.dumps(body).decode()]
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=30)


def test_a_device_reporting_a_far_position_in_gcj02_is_moved_on_the_map(
    settings: Settings, unique: str
) -> None:
    seed(settings)
    (lon0, lat0, _), (lon1, lat1, _), (lon2, lat2, _) = places(settings, 3)
    device = f"wl-{unique}"
    app = city_with(
        settings, [SensorSpec(device, "water_level", "gw-t", lon0, lat0, None, None, None)]
    )
    locator = CityLocator(city_layers(settings))
    topic = f"cityops/gw-t/{device}/location"
    running = bridge(settings, app, f"b-{unique}")
    now = time.time()
    try:
        assert running.wait_connected(15)
        with in_threads(settings, "telemetry"):
            gcj = from_wgs84(lon1, lat1, "gcj02")
            fix = {"lon": gcj[0], "lat": gcj[1], "coord_system": "GCJ-02", "ts": now - 60}
            mosquitto_pub(settings, topic, fix)
            wait_until(
                lambda: app.get_sensor(device).located_at is not None, timeout=30, what="a move"
            )
            moved = app.get_sensor(device)
            # Stored in WGS-84, within a metre of where the device is (the conversion's
            # round trip is within micrometres).
            assert distance_m(moved.lon, moved.lat, lon1, lat1) < 1.0
            place = locator.place(lon1, lat1)
            assert place is not None
            assert (moved.grid_code, moved.district_code) == (place.grid_code, place.district_code)
            assert moved.department_code == locator.department_for(lon1, lat1, "water")
            assert moved.department_code is not None

            # None of these is a move: the same spot again, 4 m off (in BD-09), an older
            # fix far away, a system nobody knows. Then a far BD-09 fix that is one.
            bd_near = from_wgs84(*offset(lon1, lat1, 4, 0), "bd09")
            far_old = from_wgs84(lon2, lat2, "gcj02")
            bd_far = from_wgs84(lon2, lat2, "bd09")
            for body in (
                {"lon": gcj[0], "lat": gcj[1], "coord_system": "gcj02", "ts": now - 50},
                {"lon": bd_near[0], "lat": bd_near[1], "coord_system": "bd09", "ts": now - 40},
                {"lon": far_old[0], "lat": far_old[1], "coord_system": "gcj02", "ts": now - 90},
                {"lon": lon2, "lat": lat2, "coord_system": "mars", "ts": now - 30},
                {"lon": bd_far[0], "lat": bd_far[1], "coord_system": "bd09", "ts": now - 20},
            ):
                mosquitto_pub(settings, topic, body)
            wait_until(
                lambda: app.get_sensor(device).located_at == pytest.approx(now - 20, abs=0.001),
                timeout=30,
                what="the far BD-09 fix",
            )
        events = list(app.events.get(moved.id))
        assert [type(e).__name__ for e in events] == ["Registered", "Relocated", "Relocated"]
        first, second = events[1:]
        assert (first.coord_system, second.coord_system) == ("gcj02", "bd09")  # type: ignore[attr-defined]
        assert first.moved_m == pytest.approx(distance_m(lon0, lat0, lon1, lat1), abs=1.5)  # type: ignore[attr-defined]
        assert distance_m(second.lon, second.lat, lon2, lat2) < 1.0  # type: ignore[attr-defined]
        letters = read_topic(settings, topics.Topics.of(settings).deadletter, 1)
        assert [orjson.loads(r.value)["reason"] for r in letters] == ["unknown_coord_system"]

        # The live map's row follows the device (and so do its tiles and OGC features).
        worker = ProjectionWorker(app, settings.database_url, projections())
        try:
            worker.catch_up()
        finally:
            worker.close()
        place2 = locator.place(lon2, lat2)
        assert place2 is not None
        ((lon, lat, grid),) = rows(
            settings,
            "SELECT lon, lat, grid_code FROM map_sensors WHERE device_id = %s",
            device,
        )
        assert distance_m(lon, lat, lon2, lat2) < 1.0
        assert grid == place2.grid_code
    finally:
        running.stop()
        app.close()
