"""The spine end to end on the real services: MQTT -> Kafka -> stores -> API.

A SenML message published by an MQTT client reaches Kafka, the readings table and,
above threshold, an incident in the API with the right grid cell and department.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cityops.bootstrap import city_layers, seed
from core.sensor.rules import DEPARTMENT_TYPE
from gis.assign import Jurisdictions
from infra import kafka as topics
from infra.settings import Settings
from tests.helpers.brokers import publish, read_topic
from tests.helpers.builders import senml
from tests.helpers.db import count
from tests.helpers.waiting import wait_until
from tests.helpers.web import served
from tests.helpers.workers import in_threads

pytestmark = pytest.mark.e2e

# With the water level, what the sensor's pack also carries.
BATTERY_AND_TEMPERATURE = (
    {"n": "battery", "u": "%EL", "v": 88},
    {"n": "temperature", "u": "Cel", "v": 19.5},
)


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[Settings]:
    seed(settings)
    with in_threads(settings, "bridge", "writer", "monitor", "projector", join_s=20):
        time.sleep(3)  # consumer groups join; the bridge subscribes
        yield settings


def test_senml_over_mqtt_becomes_incident_on_the_map(pipeline: Settings) -> None:
    settings = pipeline
    layers = city_layers(settings)
    row = layers.sensors[layers.sensors.sensor_type == "water_level"].iloc[0]
    device, gateway = str(row.device_id), str(row.gateway_id)
    department = Jurisdictions(layers.jurisdictions).department_for(
        row.geometry.x, row.geometry.y, DEPARTMENT_TYPE["water_level"]
    )
    topic = f"cityops/{gateway}/{device}/telemetry"
    for level in (30.0, 62.0, 64.0):
        publish(settings, topic, senml(device, level, *BATTERY_AND_TEMPERATURE))

    # Kafka holds the normalised batch, keyed by device.
    keys = [m.key for m in read_topic(settings, topics.Topics.of(settings).telemetry, 3)]
    assert keys.count(device.encode()) == 3

    wait_until(
        lambda: count(settings, "SELECT count(*) FROM readings WHERE device_id=%s", device) == 9,
        what="9 readings",
    )

    with served(settings, as_role="operator", raise_errors=True) as http:

        def incident() -> dict | None:
            found = http.get("/api/v1/incidents", params={"status": "open"}).json()["features"]
            mine = [f for f in found if f["properties"]["device_id"] == device]
            return mine[0] if mine else None

        wait_until(lambda: incident() is not None, what="incident in the API")
        feature = incident()
        assert feature is not None
        props = feature["properties"]
        assert props["grid_code"] == row.grid_code
        assert props["department_code"] == department
        assert props["severity"] == "major"
        assert props["alarm_status"] == "active"
        assert feature["geometry"]["coordinates"] == pytest.approx([row.geometry.x, row.geometry.y])
        sensor = http.get(f"/api/v1/sensors/{device}").json()
        assert sensor["properties"]["state"] == "alarm"
        layer = http.get("/api/v1/map/layers/incidents").json()
        assert any(f["id"] == feature["id"] for f in layer["features"])

        # Return to normal clears the alarm; acknowledging then closes the incident.
        publish(settings, topic, senml(device, 20.0, *BATTERY_AND_TEMPERATURE))
        wait_until(
            lambda: (
                http.get(f"/api/v1/incidents/{feature['id']}").json()["properties"]["alarm_status"]
                == "cleared"
            ),
            what="alarm cleared",
        )
        ack = http.post(
            f"/api/v1/incidents/{feature['id']}/acknowledge",
            json={"actor": "op1", "reason": "water pumped"},
        )
        assert ack.status_code == 200, ack.text
        assert ack.json()["status"] == "closed"
        again = http.post(
            f"/api/v1/incidents/{feature['id']}/acknowledge",
            json={"actor": "op1", "reason": "twice"},
        )
        assert again.status_code == 409
        assert "closed" in again.json()["detail"]
