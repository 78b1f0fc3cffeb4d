"""The spine end to end on the real services: MQTT -> Kafka -> stores -> API.

A SenML message published by an MQTT client reaches Kafka, the readings table and,
above threshold, an incident in the API with the right grid cell and department.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer
from paho.mqtt.enums import CallbackAPIVersion

from cityops.bootstrap import (
    api_app,
    city_layers,
    run_bridge,
    run_in_thread,
    run_monitor,
    run_projector,
    run_writer,
    seed,
)
from core.sensor.rules import DEPARTMENT_TYPE
from gis.assign import Jurisdictions
from infra import kafka as topics
from infra.settings import Settings
from tests.conftest import bearer
from tests.integration.test_pipeline_kafka import count, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[Settings]:
    seed(settings)
    workers = [
        run_in_thread(lambda s: run_bridge(settings, s), "bridge"),
        run_in_thread(lambda s: run_writer(settings, s), "writer"),
        run_in_thread(lambda s: run_monitor(settings, s), "monitor"),
        run_in_thread(lambda s: run_projector(settings, s), "projector"),
    ]
    time.sleep(3)  # consumer groups join; the bridge subscribes
    yield settings
    for _, stop in workers:
        stop.set()
    for thread, _ in workers:
        thread.join(20)


def publish(settings: Settings, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.loop_start()
    info = client.publish(topic, payload, qos=1)
    info.wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def senml(device_id: str, level: float) -> bytes:
    return orjson.dumps(
        [
            {"bn": f"{device_id}:", "bt": time.time(), "n": "water_level", "u": "cm", "v": level},
            {"n": "battery", "u": "%EL", "v": 88},
            {"n": "temperature", "u": "Cel", "v": 19.5},
        ]
    )


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
        publish(settings, topic, senml(device, level))

    # Kafka holds the normalised batch, keyed by device.
    consumer = KafkaConsumer(
        topics.Topics.of(settings).telemetry,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=5_000,
    )
    keys = [m.key for m in consumer]
    consumer.close()
    assert keys.count(device.encode()) == 3

    wait_until(
        lambda: count(settings, "SELECT count(*) FROM readings WHERE device_id=%s", device) == 9,
        what="9 readings",
    )

    with TestClient(api_app(settings)) as http:
        http.headers.update(bearer(settings, "operator"))

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
        publish(settings, topic, senml(device, 20.0))
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
